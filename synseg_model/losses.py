"""Multi-Category Contrastive Learning (MCCL): the four losses of method.md section 3, equations (3)-(7)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

SIM_CLIP = (0.005, 0.995)


def clipped_cosine(x: torch.Tensor, y: torch.Tensor, clip: tuple[float, float] = SIM_CLIP) -> torch.Tensor:
    """Cosine similarity along the last dim, clipped to ``clip`` (so the logs below stay finite)."""
    return F.cosine_similarity(x, y, dim=-1).clamp(*clip)


def mccl_loss(fg: torch.Tensor, bg: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None,
              weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
              clip: tuple[float, float] = SIM_CLIP) -> dict[str, torch.Tensor]:
    """The MCCL losses of a batch.

    For an image with N real labels (sim = clipped cosine):
      align = -(1/N)  sum_c log sim(f_c, t_c)                        (3)
      cont  = -(1/N)  sum_c log(1 - sim(f_c, fbar_c))                (4)
      back  = -(1/N^2) sum_{j != k} log sim(fbar_j, fbar_k)          (5)
      sep   = -(1/N^2) sum_{j != k} log(1 - sim(f_j, f_k))           (6)
      total = w1 align + w2 cont + w3 back + w4 sep                  (7)
    The j = k terms of (5) and (6) are constants once clipped and carry no gradient, so only pairs j != k are
    summed, still divided by N^2; an image with N = 1 contributes 0 to them. Padding slots never count. The
    batch loss is the mean over images with at least one label.

    Args:
        fg, bg: (B, K, D) foreground / background synergy features.
        text: (B, K, D) text embeddings of the labels.
        mask: (B, K) bool, True for real labels; None means all are real.
        weights: (lambda1..lambda4).
        clip: the similarity clipping range.
    Returns:
        dict with scalar tensors ``total``, ``align``, ``cont``, ``back``, ``sep``.
    """
    if not (fg.shape == bg.shape == text.shape) or fg.dim() != 3:
        raise ValueError(f"fg, bg and text must share one (B, K, D) shape, got {tuple(fg.shape)}, "
                         f"{tuple(bg.shape)}, {tuple(text.shape)}")
    b, k, _ = fg.shape
    if mask is None:
        mask = torch.ones(b, k, dtype=torch.bool, device=fg.device)
    if mask.shape != (b, k):
        raise ValueError(f"mask must be ({b}, {k}), got {tuple(mask.shape)}")
    if len(weights) != 4:
        raise ValueError(f"weights needs 4 values (align, cont, back, sep), got {len(weights)}")
    m = mask.to(fg.dtype)
    n = m.sum(dim=1)                                                     # (B,)
    valid = n > 0
    n_safe = n.clamp(min=1)

    align = -(torch.log(clipped_cosine(fg, text, clip)) * m).sum(1) / n_safe
    cont = -(torch.log(1 - clipped_cosine(fg, bg, clip)) * m).sum(1) / n_safe

    pair = m[:, :, None] * m[:, None, :] * (1 - torch.eye(k, dtype=fg.dtype, device=fg.device))   # j != k
    bg_sim = clipped_cosine(bg[:, :, None], bg[:, None, :], clip)                                 # (B, K, K)
    fg_sim = clipped_cosine(fg[:, :, None], fg[:, None, :], clip)
    back = -(torch.log(bg_sim) * pair).sum((1, 2)) / n_safe ** 2
    sep = -(torch.log(1 - fg_sim) * pair).sum((1, 2)) / n_safe ** 2

    def batch_mean(per_image: torch.Tensor) -> torch.Tensor:
        return (per_image * valid).sum() / valid.sum().clamp(min=1)

    out = {"align": batch_mean(align), "cont": batch_mean(cont), "back": batch_mean(back), "sep": batch_mean(sep)}
    out["total"] = sum(w * out[name] for w, name in zip(weights, ("align", "cont", "back", "sep")))
    return out
