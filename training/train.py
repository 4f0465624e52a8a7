"""Train SynSeg's decoder and projector: `python -m training.train --config config/train_cc12m.yaml`.

One process, N GPUs or several machines, through torchrun:
    torchrun --nproc_per_node 8 -m training.train --config config/train_cc12m.yaml [key=value ...]
Preemption-safe: SIGTERM/SIGINT writes a checkpoint and stops; `--resume` continues from the latest.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synseg_model import (
    SynSeg,
    SynSegConfig,
    create_model,
    get_model_config,
    load_checkpoint,
    read_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

from . import checkpoint as ckpt
from .config import ConfigError, TrainingConfig, load_config
from .data import SKIP_REASONS, DataPosition, ReaderOptions, build_loader, check_sidecars, expand_shards
from .distributed import DistInfo, any_true, barrier, cleanup_distributed, gather_objects, init_distributed
from .tasks import TrainingTask, create_task
from .text_cache import TextEmbeddingCache

logger = logging.getLogger(__name__)

EXPORT_NAME = "model.safetensors"
RESOLVED_CONFIG_NAME = "config.yaml"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class TrainResult:
    """What a run did (returned by `main`)."""

    step: int
    model: SynSeg
    export_path: Path | None
    stopped_by: int | None = None  # the signal number when SIGTERM/SIGINT stopped the run
    skipped: dict[str, int] = field(default_factory=dict)
    nonfinite_steps: int = 0


# --- set-up -----------------------------------------------------------------------------------------

def setup_logging(out_dir: Path, info: DistInfo) -> None:
    """Rank 0 logs INFO to stderr and `<out_dir>/train.log`; other ranks only warnings, prefixed."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_synseg_train", False)]:
        root.removeHandler(handler)
        handler.close()
    prefix = "" if info.is_main else f"[rank {info.rank}] "
    # A caller that runs training in-process (the shapes pipeline) may already log to stderr: not twice.
    to_stderr = any(type(h) is logging.StreamHandler for h in root.handlers)
    handlers: list[logging.Handler] = [] if to_stderr else [logging.StreamHandler()]
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(out_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(prefix + _LOG_FORMAT))
        handler._synseg_train = True
        root.addHandler(handler)
    root.setLevel(logging.INFO if info.is_main else logging.WARNING)


def resolve_model_config(cfg: TrainingConfig) -> SynSegConfig:
    """The architecture the run trains, checked before anything is built.

    Raises:
        ConfigError: unknown model name, bad fields, unknown or unreadable init checkpoint (offline and not
            cached included).
    """
    try:
        if cfg.init_checkpoint:  # a name (downloaded and converted once) or a path
            return read_checkpoint(resolve_checkpoint(cfg.init_checkpoint)[0], tensors=False)[0]
        if isinstance(cfg.model, dict):
            return SynSegConfig.from_dict(cfg.model)
        return get_model_config(cfg.model)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None


def build_model(cfg: TrainingConfig, model_config: SynSegConfig, device: torch.device) -> SynSeg:
    """The model to train: from `init_checkpoint`, or `model` plus optional `init_decoder` weights."""
    if cfg.init_checkpoint:
        return load_checkpoint(cfg.init_checkpoint, device=device)
    return create_model(model_config, weights=cfg.init_decoder or None, device=device)


def check_before_work(cfg: TrainingConfig, world_size: int) -> tuple[SynSegConfig, list[str]]:
    """Every check that can fail on the config, so that errors come before any model or data work."""
    model_config = resolve_model_config(cfg)
    if cfg.init_decoder and not Path(cfg.init_decoder).is_file():
        raise ConfigError(f"init_decoder: file not found: {cfg.init_decoder}")
    if cfg.val.every and not Path(cfg.val.data_root).exists():
        raise ConfigError(f"val.data_root: not found: {cfg.val.data_root}")
    try:
        urls = expand_shards(cfg.data.shards)
        if len(urls) < world_size * max(1, cfg.data.workers):
            raise ValueError(f"{len(urls)} shards cannot feed {world_size} ranks x "
                             f"{max(1, cfg.data.workers)} workers")
        if cfg.task == "mccl":
            check_sidecars(urls, cfg.data.labels_dir)
    except ValueError as exc:
        raise ConfigError(f"data: {exc}") from None
    if cfg.val.every:
        try:
            evaluate = importlib.import_module("training.evaluate")
        except ImportError as exc:
            raise ConfigError(f"val.every > 0 but training.evaluate cannot be imported: {exc}") from None
        if not hasattr(evaluate, "evaluate_model"):
            raise ConfigError("val.every > 0 but training.evaluate has no evaluate_model")
    return model_config, urls


def build_optimizer(cfg: TrainingConfig, params: list[nn.Parameter],
                    projector: list[nn.Parameter] = ()) -> torch.optim.AdamW:
    """AdamW; 1-D parameters (biases, norms) get no weight decay.

    The `projector` parameters get groups of their own (role "projector") so that the projector warm-up can
    give them another learning rate than the decoder's (`build_scheduler`).
    """
    in_projector = {id(p) for p in projector}
    groups = []
    for role in ("decoder", "projector"):
        mine = [p for p in params if (id(p) in in_projector) == (role == "projector")]
        decay = [p for p in mine if p.ndim >= 2]
        no_decay = [p for p in mine if p.ndim < 2]
        groups += [{"params": group, "weight_decay": wd, "role": role}
                   for group, wd in ((decay, cfg.optim.weight_decay), (no_decay, 0.0)) if group]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `optim.warmup_steps`, then a cosine to `lr * optim.min_lr_ratio` at `train.steps`.

    With `optim.projector_warmup` (W steps, multiplier M), the first W steps train only the projector (the
    decoder's factor is 0, so its weights do not move) at M times the lr, after the same linear warm-up; the
    usual schedule (warm-up, cosine) then runs over the remaining steps for every parameter.
    """
    warmup, total, floor = cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio
    projector_warmup = cfg.optim.projector_warmup
    frozen, mult = (projector_warmup.steps, projector_warmup.lr_mult) if projector_warmup else (0, 1.0)

    def schedule(step: int, length: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, length - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def decoder(step: int) -> float:
        return 0.0 if step < frozen else schedule(step - frozen, total - frozen)

    def projector(step: int) -> float:
        return mult * min(1.0, (step + 1) / max(1, warmup)) if step < frozen else decoder(step)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [projector if group.get("role") == "projector" else decoder for group in optimizer.param_groups])


def select_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where the GPU has it, else fp16 (with a grad scaler); None = fp32 (CPU)."""
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            logger.warning("train.precision=%s ignored on %s: training in fp32", requested, device)
        return None
    if requested == "fp32":
        return None
    if requested == "bf16" or (requested == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop checks at the next step; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after this step with a checkpoint",
                       signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "model":
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


# --- the training loop ------------------------------------------------------------------------------

def to_device(batch: dict, device: torch.device) -> dict:
    """Move the batch's tensors to `device` (non-tensor entries stay as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Owns the run state (model, optimiser, counters, data position) and runs the steps."""

    def __init__(self, cfg: TrainingConfig, info: DistInfo, task: TrainingTask, out_dir: Path) -> None:
        self.cfg, self.info, self.task, self.out_dir = cfg, info, task, out_dir
        self.model: SynSeg = task.model
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg, self.params, list(self.model.projector.parameters()))
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.dtype = select_precision(cfg.train.precision, info.device)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=self.dtype == torch.float16)
        self.step = 0
        self.position = DataPosition()
        self.skipped: Counter = Counter()
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.ddp_task: nn.Module = task
        if info.distributed:
            self.ddp_task = nn.parallel.DistributedDataParallel(
                task, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                forward_sync_buffers=False,  # the only buffers belong to the frozen CLIP
                gradient_as_bucket_view=True)

    # checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The training checkpoint (collective: every rank must call it; only rank 0's copy is full)."""
        ranks = gather_objects({"rng": ckpt.capture_rng_state(), "data": self.position.state_dict(),
                                "skipped": dict(self.skipped)}, self.info)
        return {"step": self.step, "model": ckpt.trainable_state(self.model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "ranks": ranks, "world_size": self.info.world_size,
                "workers": self.cfg.data.workers, "nonfinite_total": self.nonfinite_total,
                "config": self.cfg.to_dict()}

    def save(self) -> None:
        state = self.state_dict()
        if self.info.is_main:
            ckpt.save_training_checkpoint(state, self.out_dir, self.cfg.train.keep_checkpoints)
        barrier(self.info)

    def load(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint of `state_dict` (weights, optimiser, RNG, data position...)."""
        changed = _changed_keys(state["config"], self.cfg.to_dict())
        if changed:
            logger.warning("resuming with config changes against %s: %s", source, ", ".join(changed))
        self.model.load_trainable_state_dict(state["model"], source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.nonfinite_total = int(state["step"]), int(state["nonfinite_total"])
        ranks = state["ranks"]
        same_layout = state["world_size"] == self.info.world_size and state["workers"] == self.cfg.data.workers
        mine = ranks[self.info.rank] if same_layout else ranks[0]
        ckpt.restore_rng_state(mine["rng"])
        self.skipped = Counter(mine["skipped"])
        if same_layout:
            self.position = DataPosition.from_state_dict(mine["data"])
        else:
            epoch = 1 + max((c[0] for r in ranks for c in r["data"]["cursors"].values()), default=0)
            self.position = DataPosition({w: (epoch, 0) for w in range(max(1, self.cfg.data.workers))})
            logger.warning("resuming with %d ranks x %d workers (checkpoint: %d x %d): the exact data position "
                           "cannot carry over; data restarts at epoch %d", self.info.world_size,
                           self.cfg.data.workers, state["world_size"], state["workers"], epoch)
        logger.info("resumed from %s at step %d", source, self.step)

    # one step
    def _skip_nonfinite(self, what: str) -> None:
        """Count a skipped step; too many in a row stop the run with a clear message."""
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        logger.warning("non-finite %s at step %d (%d in a row): step skipped", what, self.step, self.nonfinite_run)
        if self.nonfinite_run >= self.cfg.train.max_nonfinite:
            raise RuntimeError(f"{self.nonfinite_run} consecutive non-finite losses or gradients (train."
                               f"max_nonfinite={self.cfg.train.max_nonfinite}) at step {self.step}: lower "
                               f"optim.lr, check the data, or resume from an earlier checkpoint")

    def train_step(self, batch: dict) -> dict[str, float] | None:
        """Forward, backward, update. Returns the loss values, or None when the step was skipped."""
        autocast = torch.autocast(self.info.device.type, dtype=self.dtype, enabled=self.dtype is not None)
        with autocast:
            losses = self.ddp_task(batch)
        total = sum(losses.values())
        # Every rank must take the same branch: a rank skipping backward alone would hang DDP.
        (nonfinite,) = any_true([not bool(torch.isfinite(total))], self.info)
        if nonfinite:
            self._skip_nonfinite("loss")
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip or float("inf"))
        # Gradients are all-reduced, so every rank sees the same norm. With fp16 the scaler skips instead.
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):
            self._skip_nonfinite("gradient")
            return None
        self.nonfinite_run = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        values = {name: float(value.detach()) for name, value in losses.items()}
        values["total"], values["grad_norm"] = float(total.detach()), float(grad_norm)
        return values

    def run(self, loader: torch.utils.data.DataLoader, stop: StopRequest, writer: Any) -> int | None:
        """Train until `train.steps` or a stop signal. Returns the signal number if one stopped the run."""
        from tqdm import tqdm

        cfg = self.cfg.train
        sums: defaultdict[str, float] = defaultdict(float)
        counted, tick, overhead = 0, time.perf_counter(), 0.0
        batches = iter(loader)
        with self._keys_file() as keys_file, tqdm(total=cfg.steps, initial=self.step, dynamic_ncols=True,
                                                  disable=not self.info.is_main, desc="train") as bar:
            while self.step < cfg.steps:
                batch = self._next_batch(batches, stop)
                (stopping,) = any_true([stop.signum is not None], self.info)
                if stopping:
                    self.save()
                    return stop.signum or signal.SIGTERM
                self.skipped.update(batch["skipped"])
                batch = to_device(batch, self.info.device)
                values = self.train_step(batch)
                self.position.advance(batch["position"], self.cfg.data.workers)  # skipped steps consume data too
                if values is None:
                    continue
                if keys_file is not None:
                    keys_file.write("\n".join(batch["keys"]) + "\n")
                for name, value in values.items():
                    sums[name] += value
                counted += 1
                bar.update(1)
                bar.set_postfix(loss=f"{values['total']:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - tick - overhead
                    self._log({k: v / counted for k, v in sums.items()}, batch, counted, elapsed, writer)
                    sums.clear()
                    counted, tick, overhead = 0, time.perf_counter(), 0.0
                started = time.perf_counter()  # validation and checkpoints do not count against images/s
                if self.cfg.val.every and self.step % self.cfg.val.every == 0:
                    self._validate(writer)
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save()
                overhead += time.perf_counter() - started
        return None

    def _next_batch(self, batches: Any, stop: StopRequest) -> dict:
        try:
            return next(batches)
        except Exception:
            # A stop signal sent to the whole process group may kill the loader workers first.
            if stop.signum is None:
                raise
            return {"skipped": {}}

    def _keys_file(self) -> Any:
        """`<out_dir>/keys/rank<r>.txt` (appended) when `train.record_keys`, else a null context."""
        if not self.cfg.train.record_keys:
            return contextlib.nullcontext()
        path = self.out_dir / "keys" / f"rank{self.info.rank}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")

    def _log(self, means: dict[str, float], batch: dict, steps: int, elapsed: float, writer: Any) -> None:
        """Scalars of the last `log_every` steps (rank 0 writes them; the skip counts are all ranks')."""
        skipped = self.skipped_totals()
        if not self.info.is_main:
            return
        images_per_s = steps * self.cfg.train.batch_size * self.info.world_size / max(elapsed, 1e-9)
        scalars = {f"loss/{k}": v for k, v in means.items() if k != "grad_norm"}
        scalars.update({"train/grad_norm": means["grad_norm"], "train/lr": self.scheduler.get_last_lr()[0],
                        "train/images_per_s": images_per_s, "train/nonfinite_steps": self.nonfinite_total,
                        "train/text_cache_hit_rate": self.task.text_cache.hit_rate})
        scalars.update({f"skipped/{reason}": count for reason, count in skipped.items()})
        scalars.update({f"activation/{k}": v for k, v in self.task.activation_stats(batch).items()})
        for name, value in scalars.items():
            writer.add_scalar(name, value, self.step)
        writer.flush()
        shown = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in scalars.items()
                         if k.startswith(("loss/", "activation/")))
        logger.info("step %d/%d %s lr=%.3g %.1f img/s skipped=%s", self.step, self.cfg.train.steps, shown,
                    scalars["train/lr"], images_per_s, dict(skipped))

    def skipped_totals(self) -> dict[str, int]:
        """Skipped samples per reason, summed over ranks (collective)."""
        counts = [dict(c) for c in gather_objects(dict(self.skipped), self.info)]
        return {reason: sum(c.get(reason, 0) for c in counts) for reason in SKIP_REASONS}

    def _validate(self, writer: Any) -> None:
        """Score the model on a few evaluation images (rank 0) and log every numeric result."""
        if self.info.is_main:
            from .evaluate import evaluate_model

            val = self.cfg.val
            metrics = evaluate_model(self.model, val.dataset, Path(val.data_root), limit=val.limit,
                                     device=self.info.device, **(val.options or {}))
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for name, value in numbers.items():
                writer.add_scalar(f"val/{name}", value, self.step)
            logger.info("validation at step %d: %s", self.step, numbers)
        barrier(self.info)


# --- entry point --------------------------------------------------------------------------------------

def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface (reusable, e.g. by wrappers that add flags)."""
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="training config YAML (config/train_*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides on dotted keys, e.g. optim.lr=1e-4 train.steps=500")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest readable checkpoint in train.out_dir (if any)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit without training")
    return parser


def _open_writer(out_dir: Path, info: DistInfo) -> Any:
    if not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _reader_options(cfg: TrainingConfig, model_config: SynSegConfig, urls: list[str]) -> ReaderOptions:
    data = cfg.data
    return ReaderOptions(
        urls=tuple(urls), batch_size=cfg.train.batch_size, image_size=data.image_size,
        mean=tuple(model_config.mean), std=tuple(model_config.std), max_labels=data.max_labels,
        label_source="sidecar" if cfg.task == "mccl" else "seg", labels_dir=data.labels_dir,
        classes=tuple(data.classes) if data.classes else None, dense_negatives=data.dense_negatives,
        shuffle_buffer=data.shuffle_buffer, seed=cfg.train.seed)


def main(argv: list[str] | None = None) -> TrainResult | None:
    """The command line: load the config, then `train` it; returns what the run did (None with --print-config)."""
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return None
    return train(cfg, resume=args.resume)


def train(cfg: TrainingConfig, resume: bool = False) -> TrainResult:
    """Run the training `cfg` describes (a checked config: `training.config.load_config`); with `resume`,
    continue from the newest readable checkpoint in `train.out_dir` (if any).

    Raises:
        ConfigError: a problem the config alone does not show (model, data, init files), before any work.
    """
    info = init_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        model_config, urls = check_before_work(cfg, info.world_size)
        out_dir = Path(cfg.train.out_dir)
        setup_logging(out_dir, info)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = build_model(cfg, model_config, info.device).train()
        cache = TextEmbeddingCache(model, cfg.loss.templates, cfg.train.text_cache_size)
        task = create_task(cfg.task, model, cache, cfg.loss)
        torch.manual_seed(cfg.train.seed + info.rank)  # dropout differs between ranks
        trainer = Trainer(cfg, info, task, out_dir)
        found = ckpt.load_latest_checkpoint(out_dir) if resume else None
        if found is not None:
            trainer.load(*found)
        elif resume:
            logger.warning("--resume: no checkpoint in %s, starting from step 0", ckpt.checkpoint_dir(out_dir))
        if info.is_main:
            cfg.to_yaml(out_dir / RESOLVED_CONFIG_NAME)
            logger.info("training %s for %d steps, %d rank(s) x batch %d on %s, precision %s, out %s",
                        cfg.task, cfg.train.steps, info.world_size, cfg.train.batch_size, info.device,
                        trainer.dtype or torch.float32, out_dir)
        loader = build_loader(_reader_options(cfg, model_config, urls), info.rank, info.world_size,
                              cfg.data.workers, trainer.position, pin_memory=info.device.type == "cuda",
                              prefetch_factor=cfg.data.prefetch_factor)
        writer = _open_writer(out_dir, info)
        with StopRequest() as stop:
            stopped_by = trainer.run(loader, stop, writer)
        export = None
        if stopped_by is None and info.is_main:
            card = {"summary": f"SynSeg trained with {cfg.task} for {trainer.step} steps on {cfg.data.shards}",
                    "task": cfg.task, "steps": trainer.step, "data": cfg.data.shards, "training_config": cfg.to_dict()}
            export = save_checkpoint(model, out_dir / EXPORT_NAME, card=card)
            logger.info("exported the trained model to %s", export)
        if writer is not None:
            writer.close()
        return TrainResult(step=trainer.step, model=model, export_path=export, stopped_by=stopped_by,
                           skipped=trainer.skipped_totals(), nonfinite_steps=trainer.nonfinite_total)
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger process (tests, notebooks)
        cleanup_distributed()


if __name__ == "__main__":
    try:
        result = main()
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
    if result is not None and result.stopped_by is not None:
        sys.exit(128 + result.stopped_by)
