"""From activation maps to what a robot acts on: presence before pixels.

The benchmark's argmax always picks some class; a robot receives each label's ``activation > threshold`` mask
and acts on any mask that is there. So a label first has to be *present*: its presence score is the mean of the
top ``presence_fraction`` of its activation map (a soft maximum: one hot pixel does not make an object, a
small object still counts), and a label below ``presence_threshold`` gets an empty mask, whatever its pixels.
A deviation from the paper, which thresholds pixels only: MCCL (Sec. 4.2) trains each map with the categories
present in the image, and nothing at inference says that a category is absent.

A model's card may carry the rule it was calibrated with (``mask_rule``, chosen on the dev split from the seen
classes' masks and the labels read from captions only); a model without one gets the plain rule (0.5, no
presence test), as before.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import torch

CARD_KEY = "mask_rule"


@dataclass(frozen=True)
class MaskRule:
    """A label's mask is ``activation > threshold`` where its presence score is at least ``presence_threshold``,
    and empty elsewhere.

    Attributes:
        threshold: activation above which a pixel is in a present label's mask.
        presence_threshold: the presence score a label needs to get a mask at all (0: every label is present).
        presence_fraction: the share of a map's pixels, the highest, whose mean is the presence score.
    """

    threshold: float = 0.5
    presence_threshold: float = 0.0
    presence_fraction: float = 0.01

    def __post_init__(self) -> None:
        for name in ("threshold", "presence_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.presence_fraction <= 1.0:
            raise ValueError(f"presence_fraction must be in (0, 1], got {self.presence_fraction}")

    def presence(self, probabilities: torch.Tensor) -> torch.Tensor:
        """(..., H, W) activation maps -> (...) presence scores: the mean of each map's top fraction."""
        flat = probabilities.flatten(-2)
        top = max(1, math.ceil(self.presence_fraction * flat.shape[-1]))
        return flat.topk(top, dim=-1).values.mean(-1)

    def present(self, scores: torch.Tensor) -> torch.Tensor:
        """Presence scores -> bool: which labels get a mask."""
        return scores >= self.presence_threshold

    def with_overrides(self, threshold: float | None = None, presence_threshold: float | None = None) -> MaskRule:
        """This rule with the values that are given (None keeps this rule's)."""
        return MaskRule(self.threshold if threshold is None else float(threshold),
                        self.presence_threshold if presence_threshold is None else float(presence_threshold),
                        self.presence_fraction)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> MaskRule:
        """The rule a model card carries under ``mask_rule``; the plain rule when it has none."""
        values = card.get(CARD_KEY) or {}
        unknown = set(values) - {"threshold", "presence_threshold", "presence_fraction"}
        if unknown:
            raise ValueError(f"model card: unknown {CARD_KEY} keys {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in values.items()})

    def to_card(self) -> dict[str, float]:
        """The ``mask_rule`` entry of a model card."""
        return asdict(self)
