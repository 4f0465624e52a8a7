"""Stages 2 and 3 of the pipeline as ``training.train`` runs, in-process, on configs built from the stages' files.

A stage's config is its file (``stage2.config`` / ``stage3.config`` of the pipeline YAML), the section's
overrides, a variant's overrides, then the values only the run knows (paths, seed, threads). With ``--reuse`` a
finished run is kept when the config it resolved to (its ``config.yaml``) equals the one it would run now and it
was trained after what it started from.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from synseg_model import SynSeg, load_checkpoint, save_checkpoint
from training import train as trainer
from training.config import (
    ConfigError,
    TrainingConfig,
    apply_override,
    config_from_dict,
    load_config,
    read_config_tree,
    set_value,
)
from training.shapes.config import PipelineConfig, resolve
from training.shapes.data_stage import DataFolders

logger = logging.getLogger(__name__)

# What the pipeline fills in at run time, for the checks that come before any work.
PLACEHOLDERS = {"data.shards": "<run time>", "data.labels_dir": "<run time>", "init_checkpoint": "<run time>"}


class TrainingRuns:
    """The training runs of stages 2 and 3 under ``out``, and the time each took (``timings``, by run name)."""

    def __init__(self, cfg: PipelineConfig, out: Path, folders: DataFolders, reuse: bool) -> None:
        self.cfg, self.out, self.folders, self.reuse = cfg, out, folders, reuse
        self.timings: dict[str, float] = {}

    def config(self, stage: str, overrides: Sequence[str] = (), values: dict[str, Any] | None = None
               ) -> TrainingConfig:
        """The training config of ``stage`` ("stage2" or "stage3"): its file, the section's overrides, then
        ``overrides`` (``key=value``), then ``values`` (dotted key -> value).

        Raises:
            ConfigError: naming the file and the key.
        """
        section = getattr(self.cfg, stage)
        path = resolve(section.config)
        tree = read_config_tree(path)
        try:
            for override in [*section.overrides, *overrides]:
                apply_override(tree, override)
            for key, value in (values or {}).items():
                set_value(tree, key, value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return config_from_dict(tree, f"{path} + overrides")

    def check(self, variant_overrides: dict[str, list[str]]) -> TrainingConfig:
        """Build stage 2's config and every variant's now, so that a bad key in any of them stops the pipeline
        before any work, not an hour into it.

        Returns:
            stage 2's config, with placeholders for what only the run knows.
        Raises:
            ConfigError: naming the stage or variant, its config file and the key.
        """
        stage2 = self.config("stage2", values={"data.shards": PLACEHOLDERS["data.shards"]})
        for variant, overrides in variant_overrides.items():
            try:
                self.config("stage3", overrides, PLACEHOLDERS)
            except ConfigError as exc:
                raise ConfigError(f"variants.{variant}: {exc}") from None
        return stage2

    def stage2(self, clip_checkpoint: Path, clip_arch: dict[str, Any]) -> tuple[Path, TrainingConfig]:
        """The dense BCE decoder on the seen classes, on the stage-1 CLIP; returns its exported model (CLIP
        included) and its config."""
        cfg = self.config("stage2", values={
            "model.clip_config": clip_arch, "model.clip_pretrained": str(clip_checkpoint),
            "data.shards": self.folders.shard_pattern(), **self.run_values("stage2")})
        return self.train(cfg, "stage2", clip_checkpoint), cfg

    def stage3(self, variant: str, overrides: list[str], seed: int, init: Path) -> Path:
        """One MCCL run of a variant (its overrides) on one training seed, from ``init``; returns its export."""
        return self.train(self.stage3_config(variant, overrides, seed, init), f"stage3/{variant}/seed{seed}", init)

    def stage3_config(self, variant: str, overrides: list[str], seed: int, init: Path) -> TrainingConfig:
        """The training config of a variant's run on one seed (written to ``stage3/<variant>/seed<seed>``)."""
        return self.config("stage3", overrides, {
            "init_checkpoint": str(init), "data.shards": self.folders.shard_pattern(),
            "data.labels_dir": str(self.folders.labels), "train.seed": seed,
            **self.run_values(f"stage3/{variant}/seed{seed}")})

    def run_values(self, name: str) -> dict[str, Any]:
        """Where run ``name`` writes, and its threads."""
        return {"train.out_dir": str(self.out / name), "train.threads": self.cfg.threads}

    def train(self, cfg: TrainingConfig, name: str, started_from: Path) -> Path:
        """Run ``training.train`` in-process on ``cfg`` (or keep a finished run of it); returns the export."""
        run_dir = Path(cfg.train.out_dir)
        export = run_dir / trainer.EXPORT_NAME
        if self.reuse and finished_with(run_dir, cfg, started_from):
            logger.info("%s: reusing %s (same resolved config, trained after its start)", name, export)
            return export
        if run_dir.exists():  # a stale run's step checkpoints would mix with this one's
            shutil.rmtree(run_dir)
        logger.info("%s: training.train on %s", name, run_dir)
        start = time.perf_counter()
        result = trainer.train(cfg)
        self.timings[name] = time.perf_counter() - start
        if result.export_path is None:
            raise RuntimeError(f"training run {name} exported no model (see {run_dir}/train.log)")
        return result.export_path


def finished_with(run_dir: Path, cfg: TrainingConfig, started_from: Path) -> bool:
    """Whether ``run_dir`` holds a finished run of ``cfg`` (the resolved config it wrote equals ``cfg``) that
    is newer than the model it started from.

    The written config is read back through the config code, so options added since compare at their
    defaults; one with keys the code no longer knows is never reused.
    """
    export, written = run_dir / trainer.EXPORT_NAME, run_dir / trainer.RESOLVED_CONFIG_NAME
    if not (export.is_file() and written.is_file()):
        return False
    if started_from.is_file() and export.stat().st_mtime <= started_from.stat().st_mtime:
        return False
    try:
        finished = load_config(written).to_dict()
    except ConfigError as exc:
        logger.warning("%s: not reused, its config no longer loads: %s", run_dir, exc)
        return False
    return finished == cfg.to_dict()


def untrained(stage2_model: Path, seed: int, out: Path) -> Path:
    """Row (a): the stage-2 architecture and CLIP with a freshly initialised decoder and projector."""
    model = load_checkpoint(stage2_model)
    torch.manual_seed(seed)
    fresh = SynSeg(model.config.replace(clip_pretrained=None))
    fresh.clip.load_state_dict(model.clip.state_dict())
    return save_checkpoint(fresh, out / "model.safetensors", card={"row": "untrained decoder", "seed": seed})
