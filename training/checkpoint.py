"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a `torch.save` dict of plain types and tensors (loaded with `weights_only=True`):
trainable weights (never the frozen CLIP), optimizer, scheduler, grad scaler, step, every rank's RNG
states and data position, run counters and the resolved config. Files are
`<out_dir>/checkpoints/step_<step>.pt`, written to a temporary name then renamed, so a crash mid-write
never leaves a half file under a checkpoint name. Loading the latest falls back to older ones, with a
warning, when the newest is unreadable (e.g. truncated by a full disk).

The finished model is exported separately in the foundation's format (`synseg_model.save_checkpoint`).
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synseg_model import SynSeg

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def trainable_state(model: SynSeg) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model.trainable_state_dict()`` (load it back with
    ``model.load_trainable_state_dict``)."""
    return {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as plain types and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out_dir: str | Path) -> Path:
    """`<out_dir>/checkpoints`."""
    return Path(out_dir) / CHECKPOINT_DIR


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Step checkpoints in `out_dir`, oldest first."""
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_training_checkpoint(state: dict[str, Any], out_dir: str | Path, keep: int) -> Path:
    """Write `state` as `step_<state["step"]>.pt` atomically and keep only the newest `keep` files.

    Returns:
        the checkpoint's path.
    """
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{int(state['step']):08d}.pt"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:  # the data must be on disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink(missing_ok=True)
    logger.info("checkpoint written: %s", path)
    return path


def load_latest_checkpoint(out_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint in `out_dir` (None when there is none).

    An unreadable newest file (truncated, corrupt) is reported with a warning and the previous one is
    tried, down to the oldest.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a training checkpoint (no 'step')")
        except Exception as exc:  # torch raises several types for truncated zip archives
            logger.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                           path, type(exc).__name__, exc)
            continue
        return state, path
    return None
