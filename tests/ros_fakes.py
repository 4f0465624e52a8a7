"""A synseg node with a fake model, for the ROS tests: ``python -m tests.ros_fakes [--delay S] --ros-args ...``.

The fake's activation for label i is colour channel i % 3 of the image (R, G, B) scaled to [0, 1], so a test
knows exactly which pixels each mask must hold. ``--delay`` makes every frame take that many seconds. A label
"fail" makes its text encoder raise, as a broken model would.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass
class FakeSegmentation:
    labels: list[str]
    probabilities: np.ndarray
    scores: np.ndarray


class FakeSegmenter:
    """Duck-typed stand-in for synseg_model.Segmenter."""

    backend_name = "fake"
    device = "cpu"

    def __init__(self, settings: Mapping[str, Any], delay: float) -> None:
        self.threshold = settings["threshold"]
        self.delay = delay
        self._labels: list[str] = []

    def set_vocabulary(self, labels: list[str], templates: list[str] | None = None) -> None:
        if "fail" in labels:
            raise RuntimeError("the text encoder failed")
        self._labels = list(labels)

    def segment(self, rgb: np.ndarray) -> FakeSegmentation:
        labels = self._labels
        time.sleep(self.delay)
        probs = np.stack([rgb[..., i % 3].astype(np.float32) / 255.0 for i in range(len(labels))])
        return FakeSegmentation(labels=labels, probabilities=probs, scores=probs.reshape(len(labels), -1).max(1))


def main(argv: list[str] | None = None) -> int:
    from synseg_ros.node import main as node_main

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the fake model takes per frame")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return node_main(rest, segmenter_factory=lambda settings: FakeSegmenter(settings, args.delay))


if __name__ == "__main__":
    sys.exit(main())
