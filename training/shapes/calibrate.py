"""Choose a model's mask rule on the dev split, from what the protocol allows: the seen classes' masks, the
labels read from captions, and the dev probes. The caption-only classes' dense truth plays no part.

Every rule of a grid (threshold x presence threshold x presence fraction) is scored with
``training.shapes.robot.robot_figures`` on the dev maps, computed once. A rule is admissible when it keeps
within ``Bounds`` (false masks of seen classes absent from a scene, masks for words outside the world, the
largest mask on frames outside it); a bound that no rule of the grid meets is reported and set aside, so that the
rest still decide. Among the admissible rules the one with the best ``robot_dev`` wins: the mean of the seen
classes' node-mask IoU and the caption recall (the share of labels a caption names that get a mask), the two
things a rule can lose by being strict.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from synseg_model import MaskRule, default_checkpoint_path
from synseg_model.masks import CARD_KEY
from synseg_model.weights import update_model_card
from training.shapes.robot import (
    RobotMaps,
    add_model_arguments,
    compute_maps,
    load_for_scoring,
    load_probes,
    robot_figures,
    robot_table,
)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRESENCE_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
PRESENCE_FRACTIONS = (0.01, 0.05, 0.2)


@dataclass(frozen=True)
class Bounds:
    """The most a rule may get wrong on dev, in percent (the robot targets of docs/shapes.md)."""

    seen_absent: float = 2.0     # worst seen class: scenes without it where its mask covers > 1% of the frame
    words: float = 2.0           # worst dev word: scenes where its mask covers > 1% of the frame
    frames: float = 1.0          # the largest mask of any world class on a dev frame, % of the frame

    def excess(self, figures: dict[str, Any]) -> dict[str, float]:
        """How far ``figures`` exceed each bound (0 when within it)."""
        found = {"seen_absent": figures["worst_absent_rate_seen"] or 0.0, "words": figures["worst_word_rate"] or 0.0,
                 "frames": figures["frame_largest"] or 0.0}
        return {name: max(0.0, value - getattr(self, name)) for name, value in found.items()}


def robot_dev(figures: dict[str, Any]) -> float:
    """The choice's objective: mean of the seen classes' node-mask IoU and the caption recall."""
    return 0.5 * ((figures["iou_seen"] or 0.0) + (figures["caption_recall"] or 0.0))


def grid(thresholds: Iterable[float] = THRESHOLDS, presence: Iterable[float] = PRESENCE_THRESHOLDS,
         fractions: Iterable[float] = PRESENCE_FRACTIONS) -> list[MaskRule]:
    """Every rule of the grid; a presence threshold of 0 once (its fraction then changes nothing)."""
    rules = {MaskRule(t, p, f if p > 0 else MaskRule.presence_fraction)
             for t, p, f in itertools.product(thresholds, presence, fractions)}
    return sorted(rules, key=lambda r: (r.threshold, r.presence_threshold, r.presence_fraction))


def calibrate(maps: RobotMaps, rules: list[MaskRule] | None = None, bounds: Bounds = Bounds()
              ) -> dict[str, Any]:
    """Score ``rules`` (default: ``grid()``) on the dev maps and choose one.

    Returns:
        ``rule`` (the chosen MaskRule), ``figures`` (its dev figures), ``unmet`` (the bounds no rule met),
        ``admissible`` (how many rules kept within the others) and ``rows`` (rule, robot_dev, excess) of all.
    """
    scored = []
    for rule in rules or grid():
        figures = robot_figures(maps, rule)
        scored.append((rule, figures, bounds.excess(figures)))
    unmet = sorted(name for name in scored[0][2] if all(excess[name] > 0 for _, _, excess in scored))
    admissible = [(rule, figures) for rule, figures, excess in scored
                  if all(value == 0 for name, value in excess.items() if name not in unmet)]
    rule, figures = max(admissible, key=lambda item: robot_dev(item[1]))
    return {"rule": rule, "figures": figures, "unmet": unmet, "admissible": len(admissible),
            "rows": [(r, robot_dev(f), e) for r, f, e in scored]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Choose a model's mask rule on a dev split (seen classes' masks, caption labels, dev probes; "
                    "no caption-only class's dense truth) and print the choice; --write saves a copy of the "
                    "checkpoint whose card carries it (mask_rule), which the node and Segmenter then use.")
    add_model_arguments(parser, "dev")
    parser.add_argument("--write", type=Path, default=None, help="the checkpoint with the chosen rule in its card")
    args = parser.parse_args(argv)
    model, seen = load_for_scoring(args.checkpoint, args.seen)
    choice = calibrate(compute_maps(model, args.split, load_probes(args.probes, args.probes_file), seen))
    rule, figures = choice["rule"], choice["figures"]
    print(robot_table(figures, seen))
    print(f"\nchosen from {len(choice['rows'])} rules, {choice['admissible']} admissible; bounds no rule met: "
          f"{', '.join(choice['unmet']) or 'none'}; robot_dev {robot_dev(figures):.1f}")
    if args.write:
        source = args.checkpoint or default_checkpoint_path()
        update_model_card(source, args.write, {CARD_KEY: rule.to_card(), "mask_rule_choice": {
            "split": str(args.split), "probes": args.probes, "rules": len(choice["rows"]),
            "admissible": choice["admissible"], "unmet_bounds": choice["unmet"], "bounds": asdict(Bounds()),
            "robot_dev": robot_dev(figures)}})
        print(f"wrote {args.write}")
