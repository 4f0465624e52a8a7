"""The pipeline's last step (``--install-default``): the shipped run becomes the package's default model, with a
model card that says how it was made and what it scored."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synseg_model import default_checkpoint_path, load_checkpoint, save_checkpoint
from training.shapes.config import PipelineConfig

logger = logging.getLogger(__name__)

CARD_DATA_KEYS = ("seed", "train", "val", "dev", "dev_seed_offset", "gate", "gate_seed_offset")
GATE_KEYS = ("num_images", "auc", "min_auc", "max_text_cosine", "max_text_cosine_pair", "passed")


@dataclass
class Provenance:
    """How the pipeline made a model: what its card records besides the run's figures."""

    pipeline: PipelineConfig
    row: str  # the row's name in the pipeline config (variants) or a base row
    label: str  # the row's label in the results table
    seed: int  # the training seed of the shipped run
    classes: list[str]  # the world's classes
    seen: list[str]  # the classes stage 2 trained densely on
    world: dict[str, Any]  # the world file's mapping
    stage1: dict[str, Any]  # the stage-1 config
    stage2: dict[str, Any]  # the stage-2 training config (resolved)
    stage3_overrides: list[str] | None  # the stage-3 run's overrides; None for a row before stage 3
    gate: dict[str, Any]  # the stage-1 gate's figures


def install_default(run: dict[str, Any], row: dict[str, Any], made: Provenance) -> Path:
    """Write the run's model to ``default_checkpoint_path()`` with its model card.

    Args:
        run: the shipped run's results (``results.evaluate_run``). row: its row (``results.summarise``).
        made: how the pipeline made it.
    """
    cfg = made.pipeline
    test, gate = run["test"], made.gate
    card = {
        "name": "synseg-shapes",
        "description": "SynSeg trained end to end in the synthetic shapes world: a small CLIP "
                       "(open_clip_train), a dense BCE decoder on the seen classes, then "
                       f"{made.label}. Offline default model; it knows only this world.",
        "recipe": made.label,
        "row": made.row,
        "seed": made.seed,
        "classes": made.classes,
        "seen_in_stage2": made.seen,
        "unseen_in_stage2": [c for c in made.classes if c not in made.seen],
        "data": {k: getattr(cfg.data, k) for k in CARD_DATA_KEYS},
        "world": made.world,
        "stage1": made.stage1,
        "stage1_from": cfg.stage1_from,  # set: the CLIP came from this checkpoint, trained earlier
        "stage2": made.stage2,
        # The stage-3 run's resolved config is the training card's `training_config`.
        "stage3_overrides": made.stage3_overrides,
        "training_card": run["model_card"],
        "gate": {k: gate[k] for k in GATE_KEYS},
        "gate_test_split_auc": gate["test"]["auc"],
        "metrics": {"test_miou": test["miou"], "test_miou_seen": test["miou_seen"],
                    "test_miou_unseen": test["miou_unseen"], "test_aacc": test["aacc"],
                    "test_per_class_iou": test["per_class"], "dev_miou": run["dev"]["miou"],
                    "test_mask_miou_seen": test["mask_miou_seen"],
                    "test_mask_miou_unseen": test["mask_miou_unseen"], "dev_mask_miou": run["dev"]["mask_miou"],
                    "num_test_images": test["num_images"], "row_over_seeds": row["summary"]},
        # What the node and Segmenter apply (synseg_model.masks), chosen for this run on dev.
        "mask_rule": run["mask_rule"],
        "mask_rule_choice": {"by": "training.shapes.calibrate on the dev split and dev probes",
                             "unmet_bounds": run["unmet_bounds"], "dev_robot_dev": run["dev"]["robot_dev"]},
        "robot_metrics": {"test": run["test"]["robot"], "dev": run["dev"]["robot"]},
        "evaluation": "one 64-px window per image, sigmoid, argmax over the 11 classes (training.evaluate "
                      "with short_side = crop_size = stride = 64); mask_miou: each class's mask "
                      "activation > 0.5; robot_metrics: the masks the node publishes under mask_rule "
                      "(training.shapes.robot)",
        "chosen_by": f"dev {cfg.ship.metric}",
        # The frozen CLIP travels in float16 (cast back on load) to keep the shipped file small.
        "clip_storage": "float16",
    }
    path = save_checkpoint(load_checkpoint(run["checkpoint"]), default_checkpoint_path(), card=card,
                           clip_dtype=torch.float16)
    logger.info("installed %s seed %d (%s) as the default model: %s (%.1f MB)", made.row, made.seed,
                made.label, path, path.stat().st_size / 2**20)
    return path
