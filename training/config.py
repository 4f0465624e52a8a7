"""Training configuration: dataclasses loaded from YAML, with `key=value` overrides on dotted keys.

Every value the training run uses lives here with one default. `load_config` checks types and values and
raises `ConfigError` (a `ValueError`) naming the file and the key before any work starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from synseg_model.losses import MCCL_TERMS
from synseg_model.options import PRECISIONS as MODEL_PRECISIONS
from training.files import read_text

TASKS = ("mccl", "dense_bce")
PRECISIONS = ("auto", *MODEL_PRECISIONS)
PROJECTOR_INPUTS = ("conditional", "visual")
ADDED_TERMS = ("area", "peak", "peak_relative", "anchor", "absent", "outside")  # LossConfig's sections besides mccl


class ConfigError(ValueError):
    """A training config problem, found before any work starts; the message names the file and key."""


@dataclass
class DataConfig:
    """Where the shards and labels are and how samples become batches."""

    shards: str = ""  # brace range, glob, or `pipe:` URL; several patterns joined with "::"
    labels_dir: str | None = None  # sidecars from `training.prepare_labels` (task mccl)
    image_size: int = 224  # training images are resized to this square side
    max_labels: int = 8  # labels per image kept [project default]
    classes: list[str] | None = None  # when set, only these labels are used (a disjoint part of a world)
    dense_negatives: int = 0  # dense_bce: absent classes added per image as all-negative referring masks
    shuffle_buffer: int = 1000  # samples held by each worker's shuffle buffer
    workers: int = 4  # dataloader worker processes per rank
    prefetch_factor: int = 2  # batches each worker prepares ahead


@dataclass
class MCCLLoss:
    """The paper's four losses, L_align, L_cont, L_back and L_sep (paper section 4.2, eq. 3-6:
    `synseg_model.losses.mccl_loss`), with their weights lambda1..lambda4 of eq. (7). A weight of 0 drops its
    loss (the paper's Table 3)."""

    align: float = 1.0
    cont: float = 1.0
    back: float = 1.0
    sep: float = 1.0
    # The range the cosines are clipped to before the logs. Paper: [0.005, 0.995]. A higher upper bound is a
    # deviation: with 0.995, L_cont has no gradient while fg and bg are nearly parallel, as at the start.
    sim_clip: list[float] = field(default_factory=lambda: [0.005, 0.995])
    # What the FSS projector reads (`SynSeg.decode`): "conditional", FiLM's output, as the paper has it (section
    # 4.3), or "visual", the decoder's label-free tokens (a deviation: from the conditional vectors the
    # projector can read the label off FiLM's shift and meet L_align with any map).
    projector_input: str = "conditional"


@dataclass
class AreaLoss:
    """L_area, the maps' mean activation (`synseg_model.losses.area_loss`; a deviation)."""

    weight: float


@dataclass
class PeakLoss:
    """L_peak (`synseg_model.losses.peak_loss`; a deviation): a label the caption names is somewhere in the
    image, so its map is pulled above the threshold on `fraction` of the pixels: its highest ones (`loss.peak`)
    or those where it most exceeds the image's other labels' maps (`loss.peak_relative`)."""

    weight: float
    fraction: float = 0.02  # below the smallest object's share of the image (shapes world: about 2-5%)


@dataclass
class AnchorLoss:
    """L_anchor (`synseg_model.losses.anchor_loss`; a deviation): per-pixel BCE of each label's map against a
    frozen copy of the starting model's, for the labels that model recognises in the image."""

    weight: float
    min_peak: float = 0.5  # recognised: the starting model's map peaks above this in the image (0: every label)


@dataclass
class AbsentLoss:
    """L_absent (`synseg_model.losses.absent_loss`; a deviation): labels that other captions of the batch name
    and this image's does not are taken as absent, and the top `fraction` of their maps is pushed below the
    threshold."""

    weight: float
    labels: int = 2  # labels taken as absent per image, at most
    max_cosine: float = 0.9  # text cosine above which a label is a near-synonym of one of the image's: never absent
    fraction: float = 0.02
    min_peak: float = 0.5  # a label the starting model's map peaks above this in the image is never absent


@dataclass
class OutsideLoss:
    """L_outside (a deviation): what is surely not in an image gets no mask (`training.outside`). The equation
    is L_absent's (`synseg_model.losses.absent_loss`) over sure negatives, none protected by the starting model:
    `labels` words per image drawn from `words` (nouns no training caption names), and `frames` frames per batch
    that hold nothing of the world (flat colours, noise, gradients), each with up to `frame_labels` of the
    batch's labels and its words."""

    weight: float
    words: str | None = None  # file, one noun per line (null: no words; frames then take the batch's labels only)
    labels: int = 2  # words per image
    frames: int = 2  # frames per batch
    frame_labels: int = 8  # batch labels per frame, at most
    fraction: float = 0.02


@dataclass
class LossConfig:
    """The terms of the objective. A term is on when its section is set (null: off); the default is the
    paper's, MCCL's four losses and nothing else. The trainer minimises the weighted sum of the terms that are
    on (`training.tasks.MCCLTask`)."""

    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # prompts for t_c
    mccl: MCCLLoss | None = field(default_factory=MCCLLoss)
    area: AreaLoss | None = None
    peak: PeakLoss | None = None
    peak_relative: PeakLoss | None = None
    anchor: AnchorLoss | None = None
    absent: AbsentLoss | None = None
    outside: OutsideLoss | None = None

    def terms(self) -> dict[str, float]:
        """The weight of every term that is on, by name, in the order the trainer sums them."""
        weights = {}
        if self.mccl is not None:
            weights.update({name: getattr(self.mccl, name) for name in MCCL_TERMS if getattr(self.mccl, name)})
        for name in ADDED_TERMS:
            section = getattr(self, name)
            if section is not None:
                weights[name] = section.weight
        return weights


@dataclass
class ProjectorWarmup:
    """The first `steps` steps train the FSS projector alone (the decoder's lr is 0) at `lr_mult` times the lr,
    after the linear warm-up; the usual schedule then runs over the remaining steps for every parameter. Neither
    CLIPSeg nor a dense stage trains the projector, so MCCL's first gradients would otherwise reach the decoder
    through a random one. A schedule choice: the paper states none."""

    steps: int
    lr_mult: float = 1.0


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up then a cosine decay [project defaults: the paper states none]. Biases and
    norms (1-D parameters) get no weight decay."""

    lr: float = 2e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    projector_warmup: ProjectorWarmup | None = None


@dataclass
class RunConfig:
    """Length, batch, precision, logging and checkpointing of the run."""

    steps: int = 100_000
    batch_size: int = 64  # per process; the global batch is batch_size x world size
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 with a scaler; fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000
    keep_checkpoints: int = 3  # older step checkpoints are deleted
    out_dir: str = "runs/train"
    max_nonfinite: int = 10  # consecutive NaN/inf losses tolerated before the run stops
    text_cache_size: int = 100_000  # label text embeddings kept on the device
    record_keys: bool = False  # write the sample keys each rank trained on to out_dir (audit)
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default


@dataclass
class ValConfig:
    """Periodic validation through `training.evaluate.evaluate_model` (off while `every` is 0)."""

    dataset: str | None = None  # a built-in evaluation dataset name or a dataset spec YAML
    data_root: str | None = None
    every: int = 0  # steps between validations
    limit: int = 20  # images scored per validation
    options: dict | None = None  # extra keyword arguments of evaluate_model (e.g. short_side, crop_size)


@dataclass
class TrainingConfig:
    """The whole training run (`config/train_*.yaml`)."""

    task: str = "mccl"  # mccl | dense_bce
    model: Union[str, dict, None] = None  # synseg_model config name, YAML path, or SynSegConfig fields
    init_checkpoint: str | None = None  # name (list_pretrained(), hf-hub:ORG/REPO) or foundation-format file
    init_decoder: str | None = None  # decoder weights for `model`: CLIPSeg rd64-*.pth or a .safetensors
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    val: ValConfig = field(default_factory=ValConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the resolved config (what the run used) as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotation `kind`, converting YAML strings where that is unambiguous."""
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"config key {key!r}: {value!r} fits none of "
                         f"{[o.__name__ for o in options]}")
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r}: expected a mapping, got {value!r}")
        if kind is dict:
            return value
        _, item = typing.get_args(kind)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"config key {key!r}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"config key {key!r}: expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {kind!r} for {key!r}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and mistyped values."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, "
                         f"got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r} (known in this section: "
                         f"{', '.join(sorted(names))})")
    missing = [f.name for f in fields if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"config key {prefix + missing[0]!r} is required")
    return cls(**{name: _coerce(value, hints[name], prefix + name) for name, value in values.items()})


def build_config(cls: type, values: dict, source: str) -> Any:
    """Instantiate the config dataclass `cls` from a nested mapping (as `load_config` does for training).

    Raises:
        ConfigError: an unknown key or a mistyped value, naming `source` and the dotted key.
    """
    try:
        return _build(cls, values, "")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def set_value(tree: dict, key: str, value: Any) -> None:
    """Set the dotted `key` of a nested dict to `value`, making the sections on the way (a null one included).

    Raises:
        ValueError: an empty key part, or a part that is a value, not a section.
    """
    parts = key.split(".")
    if any(not part for part in parts):
        raise ValueError(f"{key!r} is not a dotted key (e.g. optim.lr)")
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:  # a section switched off (null) is switched on by setting one of its keys
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"{key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def apply_override(tree: dict, override: str) -> None:
    """Apply one `dotted.key=value` override to a nested dict; the value is parsed as YAML.

    Raises:
        ValueError: when the override has no `=`, an empty key, or reaches into a value.
    """
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {override!r} must look like key=value "
                         "(dotted keys reach into sections, e.g. optim.lr=1e-4)")
    try:
        set_value(tree, key, yaml.safe_load(raw) if raw.strip() else None)
    except ValueError as exc:
        raise ValueError(f"override {override!r}: {exc}") from None


def need(ok: bool, key: str, why: str) -> None:
    """The one consistency check of every config: raise naming the dotted key and the reason."""
    if not ok:
        raise ValueError(f"config key {key!r}: {why}")


def _check_data(cfg: TrainingConfig) -> None:
    data, mccl = cfg.data, cfg.task == "mccl"
    need(bool(data.shards), "data.shards", "is required (a shard pattern)")
    need(not mccl or bool(data.labels_dir), "data.labels_dir",
         "task mccl needs the label sidecars of training.prepare_labels")
    need(mccl or data.labels_dir is None, "data.labels_dir",
         "task dense_bce reads its labels from the shards' seg.png: set it to null")
    need(data.image_size > 0, "data.image_size", "must be positive")
    need(data.max_labels >= 1, "data.max_labels", "must be at least 1")
    need(data.classes is None or len(data.classes) > 0, "data.classes", "must not be empty")
    need(data.dense_negatives >= 0, "data.dense_negatives", "must be >= 0")
    need(not mccl or data.dense_negatives == 0, "data.dense_negatives",
         "adds all-negative masks for task dense_bce; task mccl has none")
    need(data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be at least 1")
    need(data.workers >= 0, "data.workers", "must be >= 0")
    need(data.prefetch_factor >= 1, "data.prefetch_factor", "must be at least 1")


def _check_loss(cfg: TrainingConfig) -> None:
    """Each term's options, and no term that is on but can never be anything but 0."""
    loss = cfg.loss
    need(bool(loss.templates) and all("{}" in t for t in loss.templates), "loss.templates",
         "needs at least one template, each with a '{}' placeholder")
    if cfg.task != "mccl":
        default = LossConfig()
        unused = [f"loss.{name}" for name in ("mccl", *ADDED_TERMS) if getattr(loss, name) != getattr(default, name)]
        need(not unused, unused[0] if unused else "loss", "task dense_bce trains on its per-pixel BCE alone")
        return
    if loss.mccl is not None:
        weights = [getattr(loss.mccl, name) for name in MCCL_TERMS]
        need(all(w >= 0 for w in weights) and any(w > 0 for w in weights), "loss.mccl",
             "the four weights must be >= 0 and not all 0 (loss.mccl: null trains without MCCL)")
        clip = loss.mccl.sim_clip
        need(len(clip) == 2 and 0 < clip[0] < clip[1] < 1, "loss.mccl.sim_clip", "needs two values 0 < low < high < 1")
        need(loss.mccl.projector_input in PROJECTOR_INPUTS, "loss.mccl.projector_input",
             f"must be one of {PROJECTOR_INPUTS}")
    need(bool(loss.terms()), "loss", "no term is on (loss.mccl or one of loss." + ", loss.".join(ADDED_TERMS) + ")")
    for name in ADDED_TERMS:
        section = getattr(loss, name)
        if section is None:
            continue
        need(section.weight > 0, f"loss.{name}.weight", f"must be > 0 (loss.{name}: null turns the term off)")
        if hasattr(section, "fraction"):
            need(0 < section.fraction <= 1, f"loss.{name}.fraction", "must be in (0, 1]")
    if loss.anchor is not None:
        # At 1 or above no map of the starting model peaks higher: no label is anchored.
        need(0 <= loss.anchor.min_peak < 1, "loss.anchor.min_peak", "must be in [0, 1) (0: every label)")
    if loss.absent is not None:
        absent = loss.absent
        need(absent.labels >= 1, "loss.absent.labels", "must be at least 1")
        # At -1 every pair of labels counts as near-synonyms, at 0 every label as recognised by the starting
        # model: either way no label is ever taken as absent and the term is always 0.
        need(-1 < absent.max_cosine <= 1, "loss.absent.max_cosine",
             "must be in (-1, 1]: at -1 every label is a near-synonym and none is ever absent")
        need(0 < absent.min_peak <= 1, "loss.absent.min_peak",
             "must be in (0, 1]: at 0 the starting model recognises every label and none is ever absent")
    if loss.outside is not None:
        outside = loss.outside
        need(outside.labels >= 0 and outside.frames >= 0 and outside.frame_labels >= 0, "loss.outside",
             "labels, frames and frame_labels must be >= 0")
        words = outside.words is not None and outside.labels > 0
        need(words or (outside.frames > 0 and outside.frame_labels > 0), "loss.outside",
             "takes nothing as absent: give words and labels >= 1, or frames >= 1 and frame_labels >= 1")
        if outside.words is not None:
            need(Path(outside.words).is_file(), "loss.outside.words", f"{outside.words}: file not found")


def _check_optim(cfg: TrainingConfig) -> None:
    optim = cfg.optim
    need(optim.lr > 0, "optim.lr", "must be positive")
    need(optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), "optim.betas", "needs two values in [0, 1)")
    need(optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables)")
    warmup = optim.projector_warmup
    if warmup is not None:
        need(cfg.task == "mccl", "optim.projector_warmup",
             "task dense_bce never trains the projector: the warm-up would only hold the decoder still")
        need(1 <= warmup.steps < cfg.train.steps, "optim.projector_warmup.steps",
             "must be at least 1 and below train.steps (optim.projector_warmup: null turns it off)")
        need(warmup.lr_mult > 0, "optim.projector_warmup.lr_mult", "must be positive")


def _check_run(cfg: TrainingConfig) -> None:
    run = cfg.train
    need(run.steps >= 1, "train.steps", "must be at least 1")
    need(run.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(run.precision in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}")
    need(run.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
    need(run.log_every >= 1, "train.log_every", "must be at least 1")
    need(run.ckpt_every >= 1, "train.ckpt_every", "must be at least 1")
    need(run.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1")
    need(bool(run.out_dir), "train.out_dir", "is required")
    need(run.max_nonfinite >= 1, "train.max_nonfinite", "must be at least 1")
    need(run.text_cache_size >= 1, "train.text_cache_size", "must be at least 1")
    need(run.threads >= 0, "train.threads", "must be >= 0")
    need(cfg.val.every >= 0, "val.every", "must be >= 0 (0 disables validation)")
    need(cfg.val.limit >= 1, "val.limit", "must be at least 1")
    if cfg.val.every:
        need(bool(cfg.val.dataset), "val.dataset", "is required when val.every > 0")
        need(bool(cfg.val.data_root), "val.data_root", "is required when val.every > 0")


def _check_values(cfg: TrainingConfig) -> None:
    """Range and consistency checks that types alone cannot express."""
    need(cfg.task in TASKS, "task", f"must be one of {TASKS}, got {cfg.task!r}")
    need((cfg.model is None) != (cfg.init_checkpoint is None), "model",
         "give either a model (name, YAML path or fields) or an init_checkpoint (which has its own)")
    need(cfg.init_decoder is None or cfg.model is not None, "init_decoder",
         "loads into `model`; an init_checkpoint already holds its decoder")
    _check_data(cfg)
    _check_loss(cfg)
    _check_run(cfg)
    _check_optim(cfg)


def config_from_dict(values: dict, source: str = "<dict>") -> TrainingConfig:
    """Build and check a `TrainingConfig`; errors name `source` and the offending key."""
    try:
        cfg = _build(TrainingConfig, values, "")
        _check_values(cfg)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


class _MappingLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class names that error
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line and column, and PyYAML's problem (its own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {' '.join(str(exc).split())}"
    problem = getattr(exc, "problem", None) or "invalid"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        problem += f" ({context} started on line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    return f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {problem}"


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping (an empty file reads as {}).

    Raises:
        ConfigError: one line naming the file (and the line, for a syntax error or a key given twice): the file
            is missing, not UTF-8, not valid YAML, or holds something else at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.load(read_text(path), Loader=_MappingLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(path, exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A training config file as a nested dict. A file may name another as its `base` (a path relative to the
    file): the base is read first and this file's keys are set on top of it (mappings merge key by key, any
    other value replaces the base's).

    Raises:
        ConfigError: an unreadable file, a `base` that is not a path, or files that name each other as base.
    """
    path = Path(path)
    tree = read_yaml_mapping(path)
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base!r}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: the files' 'base' keys form a loop")
    return _merged(read_config_tree(path.parent / base, (*_seen, path.resolve())), tree)


def _merged(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both else value
    return merged


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingConfig:
    """Load a training config from YAML (None: defaults; `read_config_tree`) and apply `key=value` overrides.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value, naming file and key.
    """
    tree = {} if path is None else read_config_tree(path)
    source = "<defaults>" if path is None else str(path)
    for override in overrides:
        try:
            apply_override(tree, override)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if overrides:
        source += " + overrides"
    return config_from_dict(tree, source)
