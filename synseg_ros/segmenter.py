"""What the node needs of a segmentation model (``Segmenter``), and the fake one that tests and scripts use.

``synseg_model.Segmenter`` satisfies the protocol; so does ``FakeSegmenter``, a model-free stand-in whose
activation for label i is colour channel i % 3 (R, G, B) of the image scaled to [0, 1], so that a test knows
exactly which pixels each mask must hold, and whose cost per frame is that of copying the maps.
``load_segmenter`` builds the real one from the node's parameters. Nothing here imports ROS, nor torch until
a real model is loaded. ``python -m synseg_ros.fake_node`` runs the node on the fake.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


class Segmentation(Protocol):
    """One segmented frame: ``labels`` (K), ``probabilities`` (K, H, W) float32 in [0, 1], ``scores`` (K,)."""

    labels: Sequence[str]
    probabilities: np.ndarray
    scores: np.ndarray


class Segmenter(Protocol):
    """A model the node can run: a vocabulary that can change, then RGB frames in, activation maps out."""

    backend_name: str
    device: Any
    threshold: float
    model_card: Mapping[str, Any]   # a one-line "summary"; "classes": the default vocabulary, when it has them

    def set_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Encode ``labels`` and make them the vocabulary of the next ``segment`` calls (raises if it cannot)."""

    def segment(self, rgb: np.ndarray) -> Segmentation:
        """Segment one (H, W, 3) uint8 RGB frame with the current vocabulary."""


# Builds a segmenter from the node's parameter values (name -> value).
SegmenterFactory = Callable[[Mapping[str, Any]], Segmenter]


def load_segmenter(settings: Mapping[str, Any]) -> Segmenter:
    """The node's default factory: a ``synseg_model.Segmenter`` configured by the node's parameters."""
    # Imported here so that torch loads only when a real model is used (not for --help or test fakes).
    from synseg_model import Segmenter as ModelSegmenter

    kwargs: dict[str, Any] = {"device": settings["device"], "backend": settings["backend"],
                              "threshold": settings["threshold"], "max_categories": settings["max_categories"]}
    if settings["input_size"]:
        kwargs["input_size"] = settings["input_size"]
    if settings["precision"] != "auto":
        kwargs["precision"] = settings["precision"]
    return ModelSegmenter.from_checkpoint(settings["checkpoint"] or None, **kwargs)


@dataclass
class FakeSegmentation:
    labels: list[str]
    probabilities: np.ndarray
    scores: np.ndarray


class FakeSegmenter:
    """Activation of label i = colour channel i % 3 / 255. A label "fail" makes ``set_vocabulary`` raise, as a
    broken text encoder would; ``delay`` seconds are spent on every frame, as a slow model would."""

    backend_name = "fake"
    device = "cpu"
    model_card = {"summary": "fake model: the activation of label i is colour channel i % 3"}

    def __init__(self, settings: Mapping[str, Any], delay: float = 0.0) -> None:
        self.threshold = float(settings["threshold"])
        self.delay = delay
        self._labels: list[str] = []
        self._stop = threading.Event()       # never set: an interruptible sleep

    def set_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> None:
        if "fail" in labels:
            raise RuntimeError("the text encoder failed")
        self._labels = list(labels)

    def segment(self, rgb: np.ndarray) -> FakeSegmentation:
        labels = self._labels
        if self.delay:
            self._stop.wait(self.delay)
        channels = [rgb[..., c] * np.float32(1.0 / 255.0) for c in range(3)]
        probabilities = np.stack([channels[i % 3] for i in range(len(labels))])
        peaks = np.array([c.max() for c in channels], np.float32)
        return FakeSegmentation(labels, probabilities, peaks[np.arange(len(labels)) % 3])
