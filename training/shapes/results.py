"""The pipeline's rows scored: every run on the test and dev splits, each row's mean and spread over its seeds,
and the run the pipeline ships."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from synseg_model import load_checkpoint
from training.shapes.calibrate import calibrate, robot_dev
from training.shapes.config import ShipSection
from training.shapes.robot import compute_maps, load_probes, robot_figures
from training.shapes.score import score_split
from training.shapes.variants import Run

# What a robot receives under the run's own mask rule (training.shapes.robot), flattened as robot_<figure>.
ROBOT_METRICS = ("iou_seen", "iou_unseen", "precision_seen", "precision_unseen", "recall_seen", "recall_unseen",
                 "area_ratio_seen", "area_ratio_unseen", "worst_absent_rate_seen", "worst_absent_rate_unseen",
                 "caption_recall", "word_rate", "worst_word_rate", "frame_largest", "presence_auc")
SUMMARY_METRICS = ("miou", "miou_seen", "miou_unseen", "aacc", "act_on", "act_off", "mask_miou", "mask_miou_seen",
                   "mask_miou_unseen", *(f"robot_{name}" for name in ROBOT_METRICS), "robot_dev")


def evaluate_run(run: Run, test: Path, dev: Path, seen: list[str]) -> dict[str, Any]:
    """Test and dev results of one run: the benchmark's figures (``training.shapes.score.score_split``; seen /
    unseen by ``seen``) and what a robot receives (``training.shapes.robot``) under the mask rule chosen for the
    run on dev with the dev probes (``training.shapes.calibrate``), scored on test with the test probes."""
    model = load_checkpoint(run.checkpoint)
    choice = calibrate(compute_maps(model, dev, load_probes("dev"), set(seen)))
    robot = {"dev": choice["figures"],
             "test": robot_figures(compute_maps(model, test, load_probes("test"), set(seen)), choice["rule"])}
    results = {"checkpoint": str(run.checkpoint), "selected_step": run.step, "model_card": model.model_card,
               "mask_rule": choice["rule"].to_card(), "unmet_bounds": choice["unmet"]}
    for split, root in (("test", test), ("dev", dev)):
        results[split] = {**score_split(model, root, seen), "robot": robot[split],
                          **{f"robot_{name}": robot[split][name] for name in ROBOT_METRICS}}
    results["dev"]["robot_dev"] = robot_dev(choice["figures"])
    return results


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row: its runs by seed and, per metric, the mean and standard deviation over the seeds (test split),
    plus the dev mIoU's mean."""
    summary = {}
    for split in ("test", "dev"):
        for metric in SUMMARY_METRICS:
            values = [run[split][metric] for run in runs.values() if run[split].get(metric) is not None]
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
