"""CLIPSeg's rd64 decoder with FiLM conditioning, and the FSS projector used in training.

Module and parameter names follow the original CLIPSeg files (``film_mul``, ``film_add``, ``reduces``,
``blocks``, ``trans_conv``) so that those files load without renaming.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import SynSegConfig


def _upsampler(kind: str, dim: int, patch: int) -> nn.Module:
    if kind == "uni":
        return nn.ConvTranspose2d(dim, 1, patch, stride=patch)
    # "refined": the two strides multiply to the patch size (4 x 4 for ViT-B/16, as in CLIPSeg).
    first = min(4, patch)
    if patch % first:
        raise ValueError(f"refined upsampler needs a patch size divisible by {first}, got {patch}")
    second = patch // first
    return nn.Sequential(
        nn.Conv2d(dim, dim, kernel_size=3, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(dim, dim // 2, first, stride=first), nn.ReLU(),
        nn.ConvTranspose2d(dim // 2, 1, second, stride=second),
    )


class Decoder(nn.Module):
    """FiLM-conditioned transformer decoder over the CLIP activations (the paper's Sec. 4.1; CLIPSeg's design,
    Sec. 5.1).

    The per-layer reductions run once per image; only what follows FiLM runs once per category.
    """

    def __init__(self, config: SynSegConfig, clip_widths: Sequence[int], text_dim: int, patch_size: int):
        super().__init__()
        dim = config.reduce_dim
        self.film_mul = nn.Linear(text_dim, dim)
        self.film_add = nn.Linear(text_dim, dim)
        # reduces[0] takes the deepest activation (see forward), as in the CLIPSeg files.
        self.reduces = nn.ModuleList(nn.Linear(width, dim) for width in reversed(clip_widths))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, config.decoder_heads, config.decoder_ff_dim, config.decoder_dropout,
                                       activation=config.decoder_activation, batch_first=True)
            for _ in config.extract_layers)
        self.trans_conv = _upsampler(config.upsampler, dim, patch_size)

    def forward(self, activations: list[torch.Tensor], text: torch.Tensor,
                grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one logit map per (image, category).

        Args:
            activations: CLIP block outputs, shallowest first, each (B, 1 + h*w, width).
            text: (B, K, D) conditioning vectors.
            grid: (h, w) token grid.
        Returns:
            logits (B, K, h*patch, w*patch) and the conditional visual vectors (B*K, dim, h, w) (CLS dropped).
        """
        b, k, _ = text.shape
        deepest_first = activations[::-1]
        x = self.reduces[0](deepest_first[0])                                     # (B, N, dim)
        x = self.film_mul(text)[:, :, None] * x[:, None] + self.film_add(text)[:, :, None]   # (B, K, N, dim)
        x = x.flatten(0, 1)                                                       # (B*K, N, dim)
        conditional = x
        x = self.blocks[0](x)
        for act, reduce, block in zip(deepest_first[1:], self.reduces[1:], self.blocks[1:]):
            x = block(reduce(act).repeat_interleave(k, dim=0) + x)
        maps = tokens_to_grid(x, grid)
        out = self.trans_conv(maps)                                               # (B*K, 1, H', W')
        return out.reshape(b, k, *out.shape[-2:]), tokens_to_grid(conditional, grid)


    def visual_tokens(self, activations: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """The label-free token features: the sum of every layer's reduction, (B, dim, h, w) (CLS dropped).

        What the decoder sees of the image before any text conditions it; an alternative input of the FSS
        projector (``SynSeg.decode(synergy_input="visual")``).
        """
        return tokens_to_grid(sum(reduce(act) for act, reduce in zip(activations[::-1], self.reduces)), grid)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, 1 + h*w, C) tokens -> (N, C, h, w) maps, dropping the CLS token."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


class Projector(nn.Module):
    """FSS projector: conditional visual vectors (tokens x dim) -> text-embedding width, on the token grid."""

    def __init__(self, config: SynSegConfig, text_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(config.reduce_dim, config.projector_hidden, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(config.projector_hidden, text_dim, kernel_size=1))

    def forward(self, conditional: torch.Tensor) -> torch.Tensor:
        """(N, dim, h, w) -> (N, D, h, w)."""
        return self.net(conditional)


def synergy_features(projected: torch.Tensor, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background synergy features (the paper's Feature Synergy Structure, Sec. 4.3).

    Args:
        projected: P, (N, D, h, w) projected conditional visual vectors.
        activation: A = sigmoid(logits), (N, H, W) at image resolution.
    Returns:
        f = a^T P and f_bar = (1 - a)^T P, each (N, D), where a is A area-downsampled to (h, w).
    """
    a = nn.functional.adaptive_avg_pool2d(activation[:, None], projected.shape[-2:]).flatten(1)   # (N, h*w)
    p = projected.flatten(2)                                                                      # (N, D, h*w)
    fg = torch.einsum("nt,ndt->nd", a, p)
    bg = torch.einsum("nt,ndt->nd", 1 - a, p)
    return fg, bg
