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

from synseg_model.masks import MaskRule


class Segmentation(Protocol):
    """One segmented frame: ``labels`` (K), ``probabilities`` (K, H, W) float32 in [0, 1], ``scores`` (K,) the
    labels' presence scores, ``present`` (K,) bool the labels that get a mask, and the mask ``threshold``."""

    labels: Sequence[str]
    probabilities: np.ndarray
    scores: np.ndarray
    present: np.ndarray
    threshold: float


class Segmenter(Protocol):
    """A model the node can run: a vocabulary that can change, then RGB frames in, activation maps out."""

    backend_name: str
    device: Any
    mask_rule: MaskRule             # the masks' thresholds now in force
    model_card: Mapping[str, Any]   # a one-line "summary"; "classes": the default vocabulary, when it has them

    def set_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Encode ``labels`` and make them the vocabulary of the next ``segment`` calls (raises if it cannot)."""

    def segment(self, rgb: np.ndarray) -> Segmentation:
        """Segment one (H, W, 3) uint8 RGB frame with the current vocabulary."""

    def set_mask_rule(self, threshold: float | None = None, presence_threshold: float | None = None) -> None:
        """The thresholds of the next frames; None: the model's own (its card's calibrated rule)."""


def mask_rule_values(settings: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(threshold, presence_threshold) from the node's parameters: a negative value means the model's own."""
    values = (settings.get(name, -1.0) for name in ("threshold", "presence_threshold"))
    return tuple(None if value < 0 else float(value) for value in values)  # type: ignore[return-value]


def labels_off_card(labels: Sequence[str], card: Mapping[str, Any]) -> list[str]:
    """The labels a closed-world model does not know: not among the ``classes`` its card lists (a model trained
    in a world of known classes, like the offline default model, lists them; an open-vocabulary one does not)."""
    known = {name.strip().lower() for name in card.get("classes") or ()}
    return [label for label in labels if known and label.strip().lower() not in known]


# Builds a segmenter from the node's parameter values (name -> value).
SegmenterFactory = Callable[[Mapping[str, Any]], Segmenter]


def load_segmenter(settings: Mapping[str, Any]) -> Segmenter:
    """The node's default factory: a ``synseg_model.Segmenter`` configured by the node's parameters."""
    # Imported here so that torch loads only when a real model is used (not for --help or test fakes), and after
    # the model is found: a name that cannot be had (not cached, no network) fails in seconds, not after torch.
    from synseg_model.pretrained import resolve_checkpoint

    resolve_checkpoint(settings["checkpoint"] or None)
    from synseg_model import Segmenter as ModelSegmenter

    threshold, presence_threshold = mask_rule_values(settings)
    kwargs: dict[str, Any] = {"device": settings["device"], "backend": settings["backend"], "threshold": threshold,
                              "presence_threshold": presence_threshold, "max_categories": settings["max_categories"]}
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
    present: np.ndarray
    threshold: float


class FakeSegmenter:
    """Activation of label i = colour channel i % 3 / 255; its presence score is the channel's highest value. A
    label "fail" makes ``set_vocabulary`` raise, as a broken text encoder would; ``delay`` seconds are spent on
    every frame, as a slow model would. Its own rule (a negative parameter) is the plain one: 0.5, no presence test."""

    backend_name = "fake"
    device = "cpu"
    model_card = {"summary": "fake model: the activation of label i is colour channel i % 3"}

    def __init__(self, settings: Mapping[str, Any], delay: float = 0.0) -> None:
        self.set_mask_rule(*mask_rule_values(settings))
        self.delay = delay
        self._labels: list[str] = []
        self._stop = threading.Event()       # never set: an interruptible sleep

    def set_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> None:
        if "fail" in labels:
            raise RuntimeError("the text encoder failed")
        self._labels = list(labels)

    def set_mask_rule(self, threshold: float | None = None, presence_threshold: float | None = None) -> None:
        self.mask_rule = MaskRule().with_overrides(threshold, presence_threshold)

    def segment(self, rgb: np.ndarray) -> FakeSegmentation:
        labels = self._labels
        if self.delay:
            self._stop.wait(self.delay)
        channels = [rgb[..., c] * np.float32(1.0 / 255.0) for c in range(3)]
        probabilities = np.stack([channels[i % 3] for i in range(len(labels))])
        scores = np.array([c.max() for c in channels], np.float32)[np.arange(len(labels)) % 3]
        rule = self.mask_rule
        return FakeSegmentation(labels, probabilities, scores, scores >= rule.presence_threshold, rule.threshold)
