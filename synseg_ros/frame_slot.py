"""A one-frame mailbox between the subscription callback and the inference thread.

The camera writes faster than a slow model reads; keeping only the newest frame bounds latency to about one
inference, instead of letting a queue grow. Frames replaced before they were taken are counted as dropped.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """Holds at most one item; ``put`` replaces, ``take`` waits. Thread-safe."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; returns True when it replaced one nobody took (that one is dropped)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, removing it; None after ``timeout`` seconds or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every waiting ``take``; later ones return None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
