"""The pipeline's rows scored: every run on the test and dev splits, each row's mean and spread over its seeds,
and the run the pipeline ships."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from synseg_model import load_checkpoint
from training.shapes.config import ShipSection
from training.shapes.score import score_split
from training.shapes.variants import Run

SUMMARY_METRICS = ("miou", "miou_seen", "miou_unseen", "aacc", "act_on", "act_off", "mask_miou", "mask_miou_seen",
                   "mask_miou_unseen")


def evaluate_run(run: Run, test: Path, dev: Path, seen: list[str]) -> dict[str, Any]:
    """Test and dev results of one run (``training.shapes.score.score_split``; seen / unseen by ``seen``)."""
    model = load_checkpoint(run.checkpoint)
    return {"checkpoint": str(run.checkpoint), "selected_step": run.step,
            "test": score_split(model, test, seen), "dev": score_split(model, dev, seen),
            "model_card": model.model_card}


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row: its runs by seed and, per metric, the mean and standard deviation over the seeds (test split),
    plus the dev mIoU's mean."""
    summary = {}
    for split in ("test", "dev"):
        for metric in SUMMARY_METRICS:
            values = [run[split][metric] for run in runs.values() if run[split][metric] is not None]
            if values:
                summary[f"{split}_{metric}"] = {"mean": statistics.mean(values),
                                                "sd": statistics.stdev(values) if len(values) > 1 else None}
    return {"runs": runs, "summary": summary}


def choose_default(rows: dict[str, dict[str, Any]], ship: ShipSection) -> tuple[str, int]:
    """The run to ship: among the runs of the rows in ``ship.candidates``, the best on dev by ``ship.metric``."""
    runs = [(name, seed) for name in ship.candidates for seed in rows[name]["runs"]]
    return max(runs, key=lambda r: rows[r[0]]["runs"][r[1]]["dev"][ship.metric])


def first_run(row: dict[str, Any]) -> dict[str, Any]:
    """The run of a row's first seed."""
    return next(iter(row["runs"].values()))
