"""Names a caller checks its settings against before, or without, loading a model (torch-free).

The ROS node validates its parameters with these at start-up and on every change, before any model loads
(importing torch takes seconds); the runtime and the training config use the same definitions.
"""
from __future__ import annotations

from typing import Sequence

# The numeric precisions a backend runs at (``Segmenter(precision=...)``, ``build_engines --precision``).
PRECISIONS = ("fp32", "fp16", "bf16")


def duplicate_labels(labels: Sequence[str]) -> tuple[str, str] | None:
    """The first two labels CLIP cannot tell apart, or None.

    open_clip's tokenizer lower-cases a prompt and collapses its whitespace, so "Cup", "cup " and "cup" are
    one text embedding: a vocabulary holding two of them would segment one thing twice.
    """
    seen: dict[str, str] = {}
    for label in labels:
        key = " ".join(label.split()).lower()
        if key in seen:
            return seen[key], label
        seen[key] = label
    return None
