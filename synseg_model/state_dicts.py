"""Reading and checking tensor files: the one error type for weights, used by every loader.

A leaf module (torch and safetensors only, imported where a file is read), so that CLIP, the model and the
checkpoint formats can all use it without importing one another, and a name can be refused without torch.
Nothing here unpickles arbitrary objects.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch


class CheckpointError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model; the message names file and key."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pt/.pth/.bin file, never unpickling arbitrary objects.

    Accepts plain state dicts and training checkpoints holding one under ``state_dict`` (DDP ``module.``
    prefixes removed).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad header, pickled objects refused by weights_only
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                     path: str | Path) -> None:
    """Raise CheckpointError naming ``path`` and the first missing, unexpected or mis-shaped key."""
    for key in sorted(given):
        if key not in expected:
            raise CheckpointError(f"{path}: unexpected key {key!r}")
        if tuple(given[key].shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: shape mismatch for {key!r}: file {tuple(given[key].shape)}, "
                                  f"model {tuple(expected[key].shape)}")
    missing = sorted(set(expected) - set(given))
    if missing:
        raise CheckpointError(f"{path}: missing key {missing[0]!r} ({len(missing)} missing)")
