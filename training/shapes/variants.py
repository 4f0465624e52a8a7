"""Stage 3 of the pipeline: the MCCL variants of the results table, each on one or several training seeds.

A variant is a list of training overrides (its ``base`` variant's first), run from stage 2 or another variant;
``select: dev`` keeps the step checkpoint best on the dev split, ``step_of: V`` the step V kept, ``choose``
makes a row of the candidate best on dev, ``dev_curve`` scores every step checkpoint on dev.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from synseg_model import SynSeg, load_checkpoint, save_checkpoint
from training.checkpoint import list_checkpoints, trainable_state
from training.shapes.config import PipelineConfig
from training.shapes.training_runs import TrainingRuns

logger = logging.getLogger(__name__)

DEV_CURVE_METRICS = ("miou", "miou_seen", "miou_unseen", "act_on", "act_off")
# What `select: dev` and `choose` decide by: the seen classes' dev mIoU. The caption-only classes' dense truth
# is for the results table alone, so that no choice behind a zero-shot figure has seen it.
SELECT_METRIC = "miou_seen"


@dataclass
class Run:
    """One trained model of a row: its checkpoint and, when a step was selected, that step and its dev mIoU."""

    checkpoint: Path
    step: int | None = None
    dev_miou: float | None = None  # its dev SELECT_METRIC


class Variants:
    """The stage-3 rows: ``runs`` (row -> training seed -> Run, the rows before stage 3 included) and ``chosen``
    (each ``choose`` row -> the candidate it became)."""

    def __init__(self, cfg: PipelineConfig, training: TrainingRuns, score_dev: Callable[[SynSeg], dict[str, Any]]
                 ) -> None:
        self.cfg, self.training, self.score_dev = cfg, training, score_dev
        self.runs: dict[str, dict[int, Run]] = {}
        self.chosen: dict[str, str] = {}

    def overrides(self, variant: str) -> list[str]:
        """A variant's training overrides: those of its ``base`` variant (if any), then its own."""
        if variant in self.chosen:
            return self.overrides(self.chosen[variant])
        spec = self.cfg.variants[variant]
        return (self.overrides(spec.base) if spec.base else []) + list(spec.overrides)

    def seeds_of(self, variant: str) -> list[int]:
        """The training seeds a variant runs on (a chosen row: those of its candidates)."""
        spec = self.cfg.variants[variant]
        count = min(self.cfg.variants[c].seeds for c in spec.choose) if spec.choose else spec.seeds
        return self.cfg.seeds[:count]

    def run_all(self) -> None:
        """Every variant, in table order, on its seeds, from the stage-2 model (``runs["stage2"]``) or, with
        ``start``, from another variant's model of the same seed."""
        stage2 = next(iter(self.runs["stage2"].values())).checkpoint
        for variant, spec in self.cfg.variants.items():
            if spec.choose:
                self.choose(variant)
                continue
            self.runs[variant] = {seed: self.run(variant, seed, self.runs[spec.start][seed].checkpoint
                                                 if spec.start else stage2)
                                  for seed in self.seeds_of(variant)}

    def run(self, variant: str, seed: int, init: Path) -> Run:
        """One variant on one training seed, from ``init``, with the step its ``select`` or ``step_of`` keeps."""
        spec = self.cfg.variants[variant]
        export = self.training.stage3(variant, self.overrides(variant), seed, init)
        run_dir = export.parent
        if spec.select == "dev":
            return self.select_on_dev(export, init, run_dir)
        if spec.dev_curve:
            self.dev_curve(init, run_dir)
        if spec.step_of and self.runs[spec.step_of][seed].step:
            step = self.runs[spec.step_of][seed].step
            logger.info("%s seed %d: step %d, the step kept for %s", variant, seed, step, spec.step_of)
            return Run(save_selected(init, export, run_dir, step, step_states(run_dir)[step], step_of=spec.step_of),
                       step)
        return Run(export)

    def choose(self, variant: str) -> str:
        """The candidate of ``variant``'s ``choose`` list with the best mean dev ``SELECT_METRIC`` over its seeds.

        Raises:
            ValueError: a candidate has not run yet.
        """
        candidates = self.cfg.variants[variant].choose
        missing = [c for c in candidates if c not in self.runs]
        if missing:
            raise ValueError(f"{variant}: candidates {missing} must run before it")
        dev = {c: statistics.mean(run.dev_miou for run in self.runs[c].values()) for c in candidates}
        name = max(candidates, key=dev.get)
        self.chosen[variant] = name
        self.runs[variant] = self.runs[name]
        logger.info("%s: %s (mean dev %s %s)", variant, name, SELECT_METRIC, {c: round(v, 2) for c, v in dev.items()})
        return name

    def dev_curve(self, init: Path, run_dir: Path) -> tuple[dict[int, dict[str, float]], dict]:
        """Dev figures of the run's start and of each of its step checkpoints (``dev_curve.json``), and the
        trainable weights by step."""
        model = load_checkpoint(init)
        states = {0: trainable_state(model), **step_states(run_dir)}
        curve = {}
        for step, state in sorted(states.items()):
            model.load_trainable_state_dict(state, f"{run_dir} step {step}")
            result = self.score_dev(model)
            curve[step] = {k: result[k] for k in DEV_CURVE_METRICS}
        (run_dir / "dev_curve.json").write_text(json.dumps(curve, indent=1))
        logger.info("%s: dev mIoU by step %s", run_dir, {k: round(c["miou"], 2) for k, c in curve.items()})
        return curve, states

    def select_on_dev(self, export: Path, init: Path, run_dir: Path) -> Run:
        """Among the run's step checkpoints (and its start), the one with the best dev ``SELECT_METRIC``, saved
        in the foundation format (``selected.safetensors``); the dev curve goes to ``dev_curve.json``."""
        curve, states = self.dev_curve(init, run_dir)
        scores = {step: c[SELECT_METRIC] for step, c in curve.items()}
        best = max(scores, key=scores.get)
        logger.info("%s: step %d kept", run_dir, best)
        selected = save_selected(init, export, run_dir, best, states[best], dev_miou_by_step=scores)
        return Run(selected, best, scores[best])


def step_states(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The trainable weights of a run's step checkpoints, by step."""
    states = (torch.load(path, map_location="cpu", weights_only=True) for path in list_checkpoints(run_dir))
    return {int(state["step"]): state["model"] for state in states}


def save_selected(init: Path, export: Path, run_dir: Path, step: int, state: dict[str, torch.Tensor],
                  **card: Any) -> Path:
    """``init`` with a step's trainable weights, as ``run_dir/selected.safetensors`` with the run's card."""
    model = load_checkpoint(init)
    model.load_trainable_state_dict(state, f"{run_dir} step {step}")
    card = dict(load_checkpoint(export).model_card, selected_step=step, **card)
    return save_checkpoint(model, run_dir / "selected.safetensors", card=card)
