"""The frozen CLIP of SynSeg: building it, loading its weights, and the two encoders SynSeg needs.

The visual side returns the token activations of chosen residual blocks (CLS token included), running only
the blocks up to the deepest one needed; CLIP's ResNet towers are read the same way, stage by stage.
Position embeddings are resized on the fly (bicubic on the 2-D grid, as CLIPSeg does) when the input is not
the size CLIP was trained at.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .config import SynSegConfig
from .state_dicts import CheckpointError, check_state_dict, read_state_dict

log = logging.getLogger(__name__)


def clip_architecture(config: SynSegConfig) -> tuple[str | None, dict[str, Any] | None]:
    """(open_clip name, None) for a registered name, or (None, architecture dict) for inline/JSON configs."""
    if config.clip_config is not None:
        return None, dict(config.clip_config)
    if config.clip_model.endswith(".json"):
        path = Path(config.clip_model)
        try:
            return None, json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read open_clip model config: {exc}") from exc
    if config.clip_model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {config.clip_model!r} (see open_clip.list_models())")
    return config.clip_model, None


def build_clip(config: SynSegConfig) -> nn.Module:
    """Build the open_clip CLIP of ``config``: random init, a pretrained tag, or a local weights file."""
    name, arch = clip_architecture(config)
    source = config.clip_pretrained
    is_file = source is not None and Path(source).suffix in (".pt", ".pth", ".bin", ".safetensors")
    if name is not None:
        tag = None if (source is None or is_file) else source
        # A tag implies its own activation (e.g. QuickGELU for "openai"); open_clip applies it.
        model = open_clip.create_model(name, pretrained=tag)
    else:
        arch = dict(arch)
        quick_gelu = bool(arch.pop("quick_gelu", False))
        arch.pop("custom_text", None)
        if source is not None and not is_file:
            raise ValueError(f"pretrained tag {source!r} needs a registered clip_model, not an inline config")
        model = open_clip.model.CLIP(**arch, quick_gelu=quick_gelu)
    if is_file:
        load_clip_weights(model, Path(source))
    return model


def load_clip_weights(model: nn.Module, path: Path) -> None:
    """Load a full open_clip state dict from ``path`` into ``model``; errors name the file and the key."""
    state = read_state_dict(path)
    pos_key = "visual.positional_embedding"
    if pos_key in state and state[pos_key].shape != model.visual.positional_embedding.shape:
        grid = model.visual.grid_size
        state[pos_key] = resize_pos_embed(state[pos_key], grid)
    check_state_dict(model.state_dict(), state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a (1 + g*g, C) position embedding to (1 + grid[0]*grid[1], C), bicubic on the patch grid."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    old = int(round(patch_pos.shape[0] ** 0.5))
    if (old, old) == tuple(grid):
        return pos
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


def is_resnet(visual: nn.Module) -> bool:
    """Whether ``visual`` is an open_clip ModifiedResNet (CLIP's RN towers) rather than a ViT."""
    return hasattr(visual, "layer1")


def _resnet_stages(visual: nn.Module) -> list[nn.Module]:
    return [visual.layer1, visual.layer2, visual.layer3, visual.layer4]


def visual_depth(visual: nn.Module) -> int:
    """How many layers ``extract_layers`` can index: ViT blocks, or the four ResNet stages."""
    return 4 if is_resnet(visual) else len(visual.transformer.resblocks)


def activation_widths(visual: nn.Module, layers: tuple[int, ...]) -> list[int]:
    """Channel width of each extracted activation, in the order of ``layers``."""
    if is_resnet(visual):
        stages = _resnet_stages(visual)
        return [int(stages[i][-1].conv3.out_channels) for i in layers]
    return [int(visual.conv1.out_channels)] * len(layers)


def token_stride(visual: nn.Module, layers: tuple[int, ...]) -> int:
    """Pixels per token of the activations: the ViT patch, or the stride of the shallowest ResNet stage."""
    if is_resnet(visual):
        return 4 * 2 ** min(layers)  # the stem divides by 4, every later stage by 2
    return int(visual.patch_size[0])


def visual_activations(visual: nn.Module, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Outputs of the residual blocks ``layers`` of an open_clip visual tower, as token sequences.

    Args:
        visual: ``clip.visual`` of an open_clip CLIP (ViT, or ModifiedResNet).
        images: (B, 3, H, W) normalised images.
        layers: 0-based block indices (ResNet: stage indices 0-3).
    Returns:
        One (B, 1 + h*w, width_i) tensor per layer, in the order of ``layers``;
        (h, w) = (H, W) // ``token_stride``.
    """
    if is_resnet(visual):
        return _resnet_activations(visual, images, layers)
    x = visual.conv1(images)                                   # (B, width, h, w)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    if pos.shape[0] != 1 + grid[0] * grid[1]:
        pos = resize_pos_embed(pos, grid)
    x = visual.ln_pre(x + pos.to(x.dtype))
    wanted = set(layers)
    found: dict[int, torch.Tensor] = {}
    for i, block in enumerate(visual.transformer.resblocks[: max(layers) + 1]):
        x = block(x)
        if i in wanted:
            found[i] = x
    return [found[i] for i in layers]


def _resnet_activations(visual: nn.Module, images: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """ResNet stage outputs on one token grid (that of the shallowest stage), each with a leading mean token.

    The decoder was designed for ViT tokens: deeper, coarser stages are resized bilinearly to the common grid,
    and the spatial mean stands in for the CLS token (the decoder attends to it and drops it at the end).
    """
    stride = token_stride(visual, layers)
    grid = (images.shape[-2] // stride, images.shape[-1] // stride)
    x = visual.stem(images)
    found: dict[int, torch.Tensor] = {}
    for i, stage in enumerate(_resnet_stages(visual)[: max(layers) + 1]):
        x = stage(x)
        if i in layers:
            found[i] = x
    out = []
    for i in layers:
        maps = found[i]
        if tuple(maps.shape[-2:]) != grid:
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        tokens = maps.flatten(2).transpose(1, 2)
        out.append(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1))
    return out


@lru_cache(maxsize=8)
def _tokenizer_for(name: str | None, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    if name is not None:
        return open_clip.get_tokenizer(name)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length)


def get_tokenizer(config: SynSegConfig) -> Callable[[list[str]], torch.Tensor]:
    """The open_clip tokenizer that matches the CLIP of ``config``."""
    name, arch = clip_architecture(config)
    if name is not None:
        return _tokenizer_for(name, 0)
    text_cfg = arch.get("text_cfg", {})
    if text_cfg.get("hf_tokenizer_name"):
        raise ValueError("inline CLIP configs with a Hugging Face tokenizer are not supported")
    return _tokenizer_for(None, int(text_cfg.get("context_length", 77)))
