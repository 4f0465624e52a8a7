"""The training losses, each written once as an equation in the docstring of the function that computes it.

`mccl_loss` is the paper's Multi-Category Contrastive Learning (section 4.2, eq. 3-6). The others are terms this
project adds to it (deviations from the paper, each a named option of `training.config.LossConfig`, off by
default). The objective is their weighted sum (eq. 7, extended by the added terms), formed once by
`training.tasks.MCCLTask`.

Notation: z_bk (H x W) are the logits of label slot k of image b, sigma the logistic function, R the real
label slots (``label_mask``; padding slots never count), and the mean of a term is over the slots its mask keeps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SIM_CLIP = (0.005, 0.995)
MCCL_TERMS = ("align", "cont", "back", "sep")


def clipped_cosine(x: torch.Tensor, y: torch.Tensor, clip: tuple[float, float] = SIM_CLIP) -> torch.Tensor:
    """Cosine similarity along the last dim, clipped to ``clip`` (so the logs below stay finite)."""
    return F.cosine_similarity(x, y, dim=-1).clamp(*clip)


def mccl_loss(fg: torch.Tensor, bg: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None,
              clip: tuple[float, float] = SIM_CLIP) -> dict[str, torch.Tensor]:
    """The four MCCL losses of a batch (unweighted; ``MCCL_TERMS`` names them).

    For an image with N real labels (sim = clipped cosine):
      align = -(1/N)  sum_c log sim(f_c, t_c)                        (3)
      cont  = -(1/N)  sum_c log(1 - sim(f_c, fbar_c))                (4)
      back  = -(1/N^2) sum_{j != k} log sim(fbar_j, fbar_k)          (5)
      sep   = -(1/N^2) sum_{j != k} log(1 - sim(f_j, f_k))           (6)
    The j = k terms of (5) and (6) are constants once clipped and carry no gradient, so only pairs j != k are
    summed, still divided by N^2; an image with N = 1 contributes 0 to them. Padding slots never count. The
    batch loss is the mean over images with at least one label.

    Args:
        fg, bg: (B, K, D) foreground / background synergy features.
        text: (B, K, D) text embeddings of the labels.
        mask: (B, K) bool, True for real labels; None means all are real.
        clip: the similarity clipping range.
    Returns:
        dict with scalar tensors ``align``, ``cont``, ``back``, ``sep``.
    """
    if not (fg.shape == bg.shape == text.shape) or fg.dim() != 3:
        raise ValueError(f"fg, bg and text must share one (B, K, D) shape, got {tuple(fg.shape)}, "
                         f"{tuple(bg.shape)}, {tuple(text.shape)}")
    b, k, _ = fg.shape
    if mask is None:
        mask = torch.ones(b, k, dtype=torch.bool, device=fg.device)
    if mask.shape != (b, k):
        raise ValueError(f"mask must be ({b}, {k}), got {tuple(mask.shape)}")
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

    return dict(zip(MCCL_TERMS, (batch_mean(term) for term in (align, cont, back, sep))))


def area_loss(logits: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """L_area, the mean activation of the real labels' maps:

      L_area = mean_{(b,k) in R} mean_p sigma(z_bk(p))

    MCCL's cosines ignore the scale of (1 - a)^T P, so L_back alone does not keep foregrounds from growing;
    this term penalises their area directly.

    Args:
        logits: (B, K, H, W). label_mask: (B, K) bool, R.
    """
    return _mean_over_labels(torch.sigmoid(logits.float()).mean(dim=(2, 3)), label_mask)


def peak_loss(logits: torch.Tensor, label_mask: torch.Tensor, fraction: float, relative: bool = False
              ) -> torch.Tensor:
    """L_peak: a label the caption names is somewhere in the image, so its map passes the threshold somewhere.

      L_peak = mean_{(b,k) in R} (1/n) sum_{p in P_bk} -log sigma(z_bk(p)),  n = max(1, round(fraction * H W)),
      P_bk = the n pixels with the highest s_bk(p), where
        s_bk(p) = z_bk(p)                                                         (``relative`` False), or
        s_bk(p) = z_bk(p) - max(-1e4, max_{j in R_b, j != k} z_bj(p))             (``relative`` True),
    R_b being image b's real labels: the relative pixels are those where the label's map most exceeds the
    image's other labels' maps (alone in its image, a label's own map decides). The choice of P_bk carries no
    gradient. MCCL's cosines ignore a map's scale, so nothing else lifts the map of a label the starting model
    is silent on; a map that already peaks near 1 gets almost no gradient. A new label's own highest pixels can
    lie on another label's region (a background's map starts around the objects); the relative pixels lie
    where the label is likeliest to be.

    Args:
        logits: (B, K, H, W). label_mask: (B, K) bool, R. fraction: of the pixels, in (0, 1].
    """
    flat = logits.float().flatten(2)
    score = flat.detach()
    if relative:
        # Per pixel, the largest map of another real label: the second largest where this label's map is the
        # largest, else the largest (an extra slot at -inf stands in for a second label an image lacks).
        maps = score.masked_fill(~label_mask[..., None], float("-inf"))
        best, second = torch.cat([maps, torch.full_like(maps[:, :1], float("-inf"))], 1).topk(2, 1).values.unbind(1)
        rival = torch.where(score >= best[:, None], second[:, None], best[:, None]).clamp(min=-1e4)
        score = score - rival
    chosen = score.topk(_pixel_count(flat, fraction), dim=-1).indices
    return _mean_over_labels(-F.logsigmoid(flat.gather(-1, chosen)).mean(-1), label_mask)


def anchor_loss(logits: torch.Tensor, target: torch.Tensor, anchored: torch.Tensor) -> torch.Tensor:
    """L_anchor: per-pixel BCE of each anchored label's map against a frozen copy of the starting model's map.

      L_anchor = mean_{(b,k) in A} mean_p BCE(z_bk(p), sigma(z0_bk(p))),
      A = {(b,k) in R : max_p sigma(z0_bk(p)) > min_peak},
    z0 being the frozen starting model's logits (the stage-2 decoder in the shapes world, CLIPSeg in the
    paper's setting) and BCE(z, t) = -t log sigma(z) - (1 - t) log(1 - sigma(z)). It keeps MCCL from undoing
    what the dense stage got right in the labels that stage already recognises, leaving the others free to be
    learnt from the captions.

    Args:
        logits: (B, K, H, W). target: (B, K, H, W), sigma(z0). anchored: (B, K) bool, A.
    """
    per_map = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(2, 3))
    return _mean_over_labels(per_map, anchored)


def absent_loss(logits: torch.Tensor, absent: torch.Tensor, fraction: float) -> torch.Tensor:
    """L_absent: labels taken as absent from an image keep the top of their maps below the threshold.

      L_absent = mean_{(b,c) in N} (1/n) sum_{p in top_n(z_bc)} -log(1 - sigma(z_bc(p))),
      n = max(1, round(fraction * H W)), top_n(z) = the n pixels where z is highest,
      N = for each image b, up to ``labels`` labels c drawn at random among those the batch's other captions
          name, with cos(t_c, t_k) <= max_cosine for every label k of b (not b's own labels, nor near-synonyms
          of them: ``training.tasks.MCCLTask.absent_candidates``), kept when max_p sigma(z0_bc(p)) <= min_peak
          (a label the frozen starting model recognises in the image is never taken as absent: captions leave
          things out).
    MCCL only ever sees the labels an image has, so nothing else tells a label's map to stay off images
    without it.

    Args:
        logits: (B, A, H, W) of the candidate labels. absent: (B, A) bool, N. fraction: of the pixels, in (0, 1].
    """
    flat = logits.float().flatten(2)
    top = flat.topk(_pixel_count(flat, fraction), dim=-1).values
    return _mean_over_labels(F.softplus(top).mean(-1), absent)


def _pixel_count(flat: torch.Tensor, fraction: float) -> int:
    """How many of a flattened map's pixels ``fraction`` is (at least one)."""
    return max(1, round(fraction * flat.shape[-1]))


def _mean_over_labels(per_map: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, K) per-map values over the slots ``label_mask`` keeps."""
    m = label_mask.to(per_map.dtype)
    return (per_map * m).sum() / m.sum().clamp(min=1.0)
