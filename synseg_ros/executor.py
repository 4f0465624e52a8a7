"""The node's executor: rclpy's MultiThreadedExecutor without its busy loop over callbacks waiting for a thread.

rclpy's MultiThreadedExecutor hands a ready callback (a task) to its thread pool and looks for work again at
once; a task still queued there counts as in progress but not executing, so it is found and handed over again,
and the looking does not wait while such a task exists. Until a pool thread takes the task, the spinning
thread loops in Python holding the GIL (rclpy issue 1452), which keeps the pool's threads from taking it. In
an hour's run of the node (`scripts/soak.py`) that thread took ~80% of a core and, from the first reload on,
70-75% of the camera's frames never reached the node; with this executor 99.7% did. Here each hand-over waits,
briefly, until a thread has taken the task; rclpy's own rules (callback groups, task states) are unchanged.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from rclpy.executors import MultiThreadedExecutor

# How long a hand-over waits for a thread to take the task: all threads busy with long callbacks (a model
# load, a vocabulary encoding) leave it queued, and the executor must go on dispatching the rest meanwhile; at
# worst the task is handed over again this often, not thousands of times a second.
TASK_START_WAIT_S = 0.02


class _PoolWaitingForStart(ThreadPoolExecutor):
    """A thread pool whose ``submit`` returns once a thread has started the call (or after ``TASK_START_WAIT_S``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        started = threading.Event()

        def run() -> Any:
            started.set()
            return fn(*args, **kwargs)

        future = super().submit(run)
        started.wait(TASK_START_WAIT_S)
        return future


class NodeExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` whose hand-over of a task waits for a thread to take it (see the module)."""

    def __init__(self, num_threads: int) -> None:
        super().__init__(num_threads=num_threads)
        # rclpy (Jazzy 7.1, Kilted 9.1) keeps its pool in _executor and hands tasks over with its submit.
        self._executor.shutdown(wait=False)
        self._executor = _PoolWaitingForStart(num_threads)
