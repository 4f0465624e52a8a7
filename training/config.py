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

from training.files import read_text

TASKS = ("mccl", "dense_bce")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PROJECTOR_INPUTS = ("conditional", "visual")


class ConfigError(ValueError):
    """A training config problem, found before any work starts; the message names the file and key."""


@dataclass
class DataConfig:
    """Where the shards and labels are and how samples become batches."""

    shards: str = ""  # brace range, glob, or `pipe:` URL; several patterns joined with "::"
    labels_dir: str | None = None  # sidecars from `training.prepare_labels` (task mccl)
    image_size: int = 224  # method.md section 4: images resized to 224x224 for training
    max_labels: int = 8  # labels per image kept [project default]
    classes: list[str] | None = None  # when set, only these labels are used (a disjoint part of a world)
    dense_negatives: int = 0  # dense_bce: absent classes added per image as all-negative referring masks
    shuffle_buffer: int = 1000  # samples held by each worker's shuffle buffer
    workers: int = 4  # dataloader worker processes per rank
    prefetch_factor: int = 2  # batches each worker prepares ahead


@dataclass
class LossConfig:
    """Loss weights and options.

    `weights` are lambda1..lambda4 of method.md eq. (7) for mccl (align, cont, back, sep). Stabilisers of
    MCCL are named options added here, each documented as a deviation from the paper and off by default,
    so that the default run is paper-exact.
    """

    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])  # prompts for t_c
    # --- MCCL stabilisers (issue 7, the shapes world). Each is a deviation from the paper; the defaults
    # below are the paper's behaviour.
    # sim_clip: the range cosine similarities are clipped to before the logs (paper: [0.005, 0.995]). With
    #   the paper's 0.995, L_cont has zero gradient while fg and bg are nearly parallel (as at the start);
    #   a higher upper bound (e.g. 0.99999) keeps that gradient and still keeps log(1 - sim) finite.
    sim_clip: list[float] = field(default_factory=lambda: [0.005, 0.995])
    # area_weight: weight of an extra term L_area = mean activation sigmoid(logits) over each real label's
    #   map (mean over labels and images), added to eq. (7). The paper expects L_back to keep foregrounds
    #   from growing; on its own it does not (cosine ignores the scale of (1 - a)^T P), so this term
    #   penalises the area directly. 0 = off (paper).
    area_weight: float = 0.0
    # anchor_weight: weight of an extra term L_anchor = per-pixel BCE of each real label's map against the
    #   map of a frozen copy of the starting model (the stage-2 decoder in the shapes world; CLIPSeg in the
    #   paper's setting), averaged over pixels and labels. It keeps MCCL from undoing what the dense stage got
    #   right while the caption losses move the maps. 0 = off (paper).
    anchor_weight: float = 0.0
    # anchor_min_peak: apply L_anchor only to the labels whose map in the starting model peaks above this
    #   (the labels the dense stage already recognises in the image), leaving the others free to be learnt
    #   from the captions. 0 = every label.
    anchor_min_peak: float = 0.0
    # absent_weight: weight of an extra term L_absent: for each image, up to `absent_labels` labels of the
    #   other images of the batch that its own caption does not name (nor a near-synonym: text cosine above
    #   `absent_max_cosine` with one of its labels) are taken as probably absent, and the top `peak_fraction`
    #   of their maps is pushed below the threshold (BCE towards 0). MCCL only ever sees the labels an image
    #   has, so nothing else tells a label's map to stay off images without it. Captions leave things out,
    #   so a label the starting model recognises in the image (its map peaks above `anchor_min_peak`) is never
    #   taken as absent. 0 = off (paper).
    absent_weight: float = 0.0
    absent_labels: int = 2
    absent_max_cosine: float = 0.9
    # --- MCCL schedule and reading choices (issue 17). The paper states no learning rate, schedule or step
    # count; these are schedule choices, not changes of the losses.
    # projector_warmup_steps: the first N steps train the FSS projector alone (the decoder's learning rate is
    #   0), so that MCCL's first gradients reach the decoder through a fitted projector instead of a random one
    #   (stage 2 / CLIPSeg never train it). 0 = off (paper).
    projector_warmup_steps: int = 0
    # projector_input: what the FSS projector reads. "conditional": the conditional visual vectors (FiLM
    #   output), as the paper says; "visual": the decoder's label-free token features (the sum of the layer
    #   reductions, before FiLM), a deviation: with the conditional input the projector can read the label
    #   from FiLM's shift and meet L_align with any map.
    projector_input: str = "conditional"
    # peak_weight: weight of an extra term L_peak, the mean -log activation over the top `peak_fraction` of
    #   each real label's map: a label the caption names is somewhere in the image, so its map must pass the
    #   threshold somewhere. MCCL's cosines ignore a map's scale, so nothing else lifts the map of a label the
    #   starting model is silent on; a map that already peaks near 1 gets almost no gradient. 0 = off (paper).
    peak_weight: float = 0.0
    peak_fraction: float = 0.02  # below the smallest object's share of the image (shapes world: about 2-5%)
    # peak_relative_weight: weight of L_peak on other pixels (a stabiliser, not in the paper): the
    #   `peak_fraction` where the label's map most exceeds the image's other labels' maps. A new label's own
    #   highest pixels can lie on another label's region (a background's map starts around the objects);
    #   these lie where the label is likeliest to be. 0 = off (paper).
    peak_relative_weight: float = 0.0


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up then a cosine decay (method.md section 4 project defaults)."""

    lr: float = 2e-4
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    decay_norm_and_bias: bool = False  # also apply weight decay to 1-D parameters (biases, norms)
    projector_lr_mult: float = 1.0  # the FSS projector's lr multiplier during loss.projector_warmup_steps


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
        if dataclasses.is_dataclass(item):
            return {str(k): _build(item, v, f"{key}.{k}.") for k, v in value.items()}
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
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r} (known in this section: "
                         f"{', '.join(sorted(names))})")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, kind, prefix + name)
    return cls(**kwargs)


def build_config(cls: type, values: dict, source: str) -> Any:
    """Instantiate the config dataclass `cls` from a nested mapping (as `load_config` does for training).

    Raises:
        ConfigError: an unknown key or a mistyped value, naming `source` and the dotted key.
    """
    try:
        return _build(cls, values, "")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def apply_override(tree: dict, override: str) -> None:
    """Apply one `dotted.key=value` override to a nested dict; the value is parsed as YAML.

    Raises:
        ValueError: when the override has no `=` or an empty key.
    """
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {override!r} must look like key=value "
                         "(dotted keys reach into sections, e.g. optim.lr=1e-4)")
    value = yaml.safe_load(raw) if raw.strip() else None
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _check_values(cfg: TrainingConfig) -> None:
    """Range and consistency checks that types alone cannot express."""
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"config key {key!r}: {why}")

    need(cfg.task in TASKS, "task", f"must be one of {TASKS}, got {cfg.task!r}")
    need((cfg.model is None) != (cfg.init_checkpoint is None), "model",
         "give either a model (name, YAML path or fields) or an init_checkpoint (which has its own)")
    need(cfg.init_decoder is None or cfg.model is not None, "init_decoder",
         "loads into `model`; an init_checkpoint already holds its decoder")
    need(bool(cfg.data.shards), "data.shards", "is required (a shard pattern)")
    need(cfg.task != "mccl" or bool(cfg.data.labels_dir), "data.labels_dir",
         "task mccl needs the label sidecars of training.prepare_labels")
    need(cfg.data.image_size > 0, "data.image_size", "must be positive")
    need(cfg.data.max_labels >= 1, "data.max_labels", "must be at least 1")
    need(cfg.data.classes is None or len(cfg.data.classes) > 0, "data.classes", "must not be empty")
    need(cfg.data.dense_negatives >= 0, "data.dense_negatives", "must be >= 0")
    need(cfg.data.shuffle_buffer >= 1, "data.shuffle_buffer", "must be at least 1")
    need(cfg.data.workers >= 0, "data.workers", "must be >= 0")
    need(cfg.data.prefetch_factor >= 1, "data.prefetch_factor", "must be at least 1")
    need(len(cfg.loss.weights) == 4, "loss.weights", "needs four weights (align, cont, back, sep)")
    extra_terms = (cfg.loss.area_weight, cfg.loss.peak_weight, cfg.loss.peak_relative_weight, cfg.loss.absent_weight,
                   cfg.loss.anchor_weight)
    need(all(w >= 0 for w in cfg.loss.weights) and any(w > 0 for w in (*cfg.loss.weights, *extra_terms)),
         "loss.weights", "must be >= 0, and not all 0 unless another loss term is on")
    need(bool(cfg.loss.templates) and all("{}" in t for t in cfg.loss.templates), "loss.templates",
         "needs at least one template, each with a '{}' placeholder")
    need(len(cfg.loss.sim_clip) == 2 and 0 < cfg.loss.sim_clip[0] < cfg.loss.sim_clip[1] < 1, "loss.sim_clip",
         "needs two values 0 < low < high < 1")
    need(cfg.loss.area_weight >= 0, "loss.area_weight", "must be >= 0 (0 disables)")
    need(cfg.loss.anchor_weight >= 0, "loss.anchor_weight", "must be >= 0 (0 disables)")
    need(0 <= cfg.loss.anchor_min_peak < 1, "loss.anchor_min_peak", "must be in [0, 1)")
    need(cfg.loss.absent_weight >= 0, "loss.absent_weight", "must be >= 0 (0 disables)")
    need(cfg.loss.absent_labels >= 1, "loss.absent_labels", "must be at least 1")
    need(-1 <= cfg.loss.absent_max_cosine <= 1, "loss.absent_max_cosine", "must be in [-1, 1]")
    need(cfg.loss.projector_input in PROJECTOR_INPUTS, "loss.projector_input", f"must be one of {PROJECTOR_INPUTS}")
    need(cfg.optim.projector_lr_mult > 0, "optim.projector_lr_mult", "must be positive")
    need(cfg.loss.peak_weight >= 0, "loss.peak_weight", "must be >= 0 (0 disables)")
    need(cfg.loss.peak_relative_weight >= 0, "loss.peak_relative_weight", "must be >= 0 (0 disables)")
    need(0 < cfg.loss.peak_fraction <= 1, "loss.peak_fraction", "must be in (0, 1]")
    need(cfg.optim.lr > 0, "optim.lr", "must be positive")
    need(cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas",
         "needs two values in [0, 1)")
    need(cfg.optim.eps > 0, "optim.eps", "must be positive")
    need(cfg.optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    need(cfg.optim.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables)")
    run = cfg.train
    need(run.steps >= 1, "train.steps", "must be at least 1")
    need(0 <= cfg.loss.projector_warmup_steps < cfg.train.steps, "loss.projector_warmup_steps",
         "must be >= 0 and below train.steps")
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


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingConfig:
    """Load a training config from YAML (None: defaults) and apply `key=value` overrides.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value, naming file and key.
    """
    tree = {} if path is None else read_yaml_mapping(path)
    source = "<defaults>" if path is None else str(path)
    for override in overrides:
        try:
            apply_override(tree, override)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if overrides:
        source += " + overrides"
    return config_from_dict(tree, source)
