"""The shapes world's configs, typed like the training config: the pipeline's (``config/shapes/pipeline.yaml``)
and stage 1's (``config/shapes/stage1.yaml``), dataclasses built by ``training.config.build_config``, so that an
unknown, missing or mistyped key anywhere (variants and phases included) and a dangling reference between
variants are errors before any work starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import ConfigError, apply_override, build_config, need, read_yaml_mapping

CAPTIONS = ("full", "nouns")
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve(path: str | Path) -> Path:
    """A config path, relative to the repository root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path

# Rows that are not stage-3 variants: references to them are allowed wherever a variant is named.
BASE_ROWS = ("untrained", "stage2")


@dataclass
class DataSection:
    """Generated data: training shards and the held-out test, dev and gate splits."""

    seed: int = 0
    train: int = 20000  # training scenes (WebDataset shards)
    val: int = 500  # held-out test split: the numbers of the results table
    dev: int = 200  # held-out dev split (seed + dev_seed_offset): checkpoint and model choice
    dev_seed_offset: int = 1000
    gate: int = 2000  # the stage-1 gate's own split (seed + gate_seed_offset)
    gate_seed_offset: int = 2000
    shard_size: int = 1000
    workers: int = 2  # processes writing shards
    world: str | None = None  # world YAML; None: config/shapes/world.yaml


@dataclass
class StageSection:
    """A stage's own config file and `key=value` overrides on top of it."""

    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class Variant:
    """A stage-3 row: an MCCL run from the stage-2 model, or the best of other rows (`choose`)."""

    row: str = ""  # its label in the results table
    overrides: list[str] = field(default_factory=list)  # training.train key=value on top of stage3's config
    base: str | None = None  # start from another variant's overrides
    start: str | None = None  # train from that (earlier) variant's model of the same seed instead of stage 2
    select: str | None = None  # "dev": keep the step checkpoint with the best dev seen-class mIoU
    choose: list[str] | None = None  # this row is the listed variant best on dev seen-class mIoU (no run of its own)
    step_of: str | None = None  # keep the step checkpoint at the step that variant kept
    dev_curve: bool = False  # score every step checkpoint on dev (dev_curve.json); the run's end is kept
    seeds: int = 1  # run on the first `seeds` of the pipeline's seeds (rows that make a claim: all)


SHIP_METRICS = ("miou_seen", "robot_dev")  # dev figures that use no caption-only class's dense truth


@dataclass
class ShipSection:
    candidates: list[str] = field(default_factory=list)  # the default model: the run best on dev by `metric`
    # robot_dev: the node's masks under the run's own mask rule, chosen on dev (training.shapes.calibrate);
    # miou_seen: the benchmark's argmax on the seen classes
    metric: str = "robot_dev"


@dataclass
class FigureSection:
    rows: list[str] = field(default_factory=list)  # predictions of these rows; activation maps of the last
    images: int = 6
    activation_maps: int = 3


@dataclass
class PipelineConfig:
    """`python -m training.shapes run`: every setting of the shapes world end to end."""

    data: DataSection = field(default_factory=DataSection)
    threads: int = 2  # torch threads of every stage
    require_gate: bool = True  # stop after stage 1 when the CLIP fails the zero-shot gate
    stage1: StageSection = field(default_factory=StageSection)
    stage1_from: str | None = None  # a SynSeg checkpoint whose frozen CLIP stands in for stage 1 (not trained)
    stage2: StageSection = field(default_factory=StageSection)
    stage3: StageSection = field(default_factory=StageSection)
    seeds: list[int] = field(default_factory=lambda: [0])  # stage-3 training seeds (train.seed)
    untrained_seed: int = 0  # row (a): the seed of the freshly initialised decoder
    variants: dict[str, Variant] = field(default_factory=dict)
    ship: ShipSection = field(default_factory=ShipSection)
    figure: FigureSection = field(default_factory=FigureSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def only_rows(self, rows: list[str]) -> PipelineConfig:
        """This config with the variants ``rows`` and those whose models they need (start, step_of, choose)
        alone, each with its ``base`` chain's overrides written out; the ship candidates and figure rows are cut
        to what is left. The base rows always run."""
        unknown = [row for row in rows if row not in self.variants and row not in BASE_ROWS]
        if unknown:
            raise ConfigError(f"--rows: unknown rows {unknown}; known: {[*BASE_ROWS, *self.variants]}")
        needed, todo = set(), [row for row in rows if row in self.variants]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                v = self.variants[name]
                todo += [ref for ref in (v.start, v.step_of, *(v.choose or [])) if ref]
        kept = set(needed) | set(BASE_ROWS)

        def overrides(name: str) -> list[str]:
            v = self.variants[name]
            return (overrides(v.base) if v.base else []) + list(v.overrides)

        return dataclasses.replace(
            self, variants={name: dataclasses.replace(v, base=None, overrides=overrides(name))
                            for name, v in self.variants.items() if name in needed},
            ship=dataclasses.replace(self.ship, candidates=[c for c in self.ship.candidates if c in kept]),
            figure=dataclasses.replace(self.figure, rows=[r for r in self.figure.rows if r in kept]))


@dataclass
class Phase:
    """One open_clip_train run of stage 1, from the previous phase's weights."""

    name: str  # its folder under the stage's output
    epochs: int
    captions: str = "full"  # full: the shards' captions; nouns: the caption's spaCy labels joined by commas
    args: dict[str, Any] = field(default_factory=dict)  # more open_clip_train flags for this phase


@dataclass
class GateSection:
    """The zero-shot gate a stage-1 CLIP must pass before stage 2 may use it."""

    template: str  # the prompt of each class name
    min_auc: float  # every class: AUC of "contains X" over held-out images
    max_text_cosine: float  # every pair of class-name text embeddings
    min_visible_pixels: int  # a class counts as present in an image from this many pixels


@dataclass
class Stage1Config:
    """Stage 1: the small CLIP trained with open_clip_train (``training.shapes.clip_stage``)."""

    model_config: str  # an open_clip architecture JSON (model name = file stem), relative to the repository
    phases: list[Phase]
    batch_size: int
    sample_shuffle_buffer: int  # open_clip_train's sample shuffle buffer
    seed: int
    workers: int
    open_clip_train: dict[str, Any]  # passed through as --key value (true: a bare flag; a list: several values)
    gate: GateSection

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(cfg: PipelineConfig) -> None:
    """Consistency that types cannot express: references between rows, selections, seed counts."""
    known = set(BASE_ROWS) | set(cfg.variants)
    need(bool(cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds), "seeds", "needs distinct seeds")
    for name, v in cfg.variants.items():
        key = f"variants.{name}"
        need(bool(v.row), f"{key}.row", "is required (the row's label)")
        need(v.select in (None, "dev"), f"{key}.select", "must be dev or absent")
        need(1 <= v.seeds <= len(cfg.seeds), f"{key}.seeds", f"must be between 1 and {len(cfg.seeds)}")
        for ref_key, ref in (("base", v.base), ("step_of", v.step_of), ("start", v.start)):
            need(ref is None or (ref in cfg.variants and ref != name), f"{key}.{ref_key}",
                 f"{ref!r} is not another variant")
        if v.start is not None:
            order = list(cfg.variants)
            need(order.index(v.start) < order.index(name), f"{key}.start", f"{v.start!r} must come before it")
            need(cfg.variants[v.start].choose is None and cfg.variants[v.start].seeds >= v.seeds, f"{key}.start",
                 f"{v.start!r} must be a variant of its own run on at least {v.seeds} seeds")
        if v.choose is not None:
            need(not v.overrides and v.base is None, f"{key}.choose", "a chosen row has no overrides of its own")
            for candidate in v.choose:
                need(candidate in cfg.variants and cfg.variants[candidate].select == "dev", f"{key}.choose",
                     f"{candidate!r} must be a variant with select: dev")
    for key, names in (("ship.candidates", cfg.ship.candidates), ("figure.rows", cfg.figure.rows)):
        unknown = [n for n in names if n not in known]
        need(not unknown, key, f"unknown rows {unknown}")
    need(cfg.ship.metric in SHIP_METRICS, "ship.metric", f"must be one of {SHIP_METRICS}")


def _check_stage1(cfg: Stage1Config) -> None:
    need(bool(cfg.phases), "phases", "must list at least one {name, epochs, captions, args}")
    names = [phase.name for phase in cfg.phases]
    need(len(set(names)) == len(names), "phases", f"each phase needs its own name (its folder), got {names}")
    for i, phase in enumerate(cfg.phases):
        need(phase.captions in CAPTIONS, f"phases[{i}].captions", f"must be one of {CAPTIONS}")
        need(phase.epochs >= 1, f"phases[{i}].epochs", "must be at least 1")
    need(cfg.batch_size >= 1, "batch_size", "must be at least 1")
    need(cfg.sample_shuffle_buffer >= 1, "sample_shuffle_buffer", "must be at least 1")
    need(cfg.workers >= 0, "workers", "must be >= 0")
    need("{}" in cfg.gate.template, "gate.template", "needs a '{}' placeholder for the class name")


def _load(cls: type, check: Any, path: str | Path, overrides: list[str] | tuple[str, ...]) -> Any:
    """Read a YAML file, apply `key=value` overrides (dotted), build `cls` and `check` it; errors name the key."""
    tree = read_yaml_mapping(path)
    for override in overrides:
        try:
            apply_override(tree, override)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    cfg = build_config(cls, tree, str(path))
    try:
        check(cfg)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def load_pipeline_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read the pipeline YAML, apply `key=value` overrides (dotted) and check everything.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or dangling reference, naming the key.
    """
    return _load(PipelineConfig, _check, path, overrides)


def load_stage1_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Stage1Config:
    """Read the stage-1 YAML (``config/shapes/stage1.yaml``), apply `key=value` overrides and check it.

    Raises:
        ConfigError: unreadable file, unknown, missing or mistyped key, naming the key.
    """
    return _load(Stage1Config, _check_stage1, path, overrides)
