"""Training tasks: the model and its loss in one module, `training_forward(batch) -> named losses`.

The trainer sums the returned losses in one place and backpropagates the sum; each entry is already
weighted, so the logged values add up to what is optimised.
- `mccl`: the paper's Multi-Category Contrastive Learning on caption labels (method.md section 3).
- `dense_bce`: per-pixel BCE on referring masks from label-index maps (the shapes world's stage 2, the
  CLIPSeg-like initialisation).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from synseg_model import mccl_loss

from .config import LossConfig
from .text_cache import TextEmbeddingCache

MCCL_TERMS = ("align", "cont", "back", "sep")


class TrainingTask(nn.Module):
    """A SynSeg model plus its loss. `forward` is `training_forward`, so DDP can wrap the task."""

    def __init__(self, model: nn.Module, text_cache: TextEmbeddingCache) -> None:
        super().__init__()
        self.model = model
        self.text_cache = text_cache

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.training_forward(batch)

    def training_forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named scalar losses of one batch (already weighted; the trainer sums them)."""
        raise NotImplementedError

    def label_embeddings(self, batch: dict) -> torch.Tensor:
        """Text embeddings t_c of the batch's labels, (B, Kmax, D), zeros in padding slots."""
        return self.text_cache.batch_embeddings(batch["labels"], kmax=batch["label_mask"].shape[1])

    @torch.no_grad()
    def activation_stats(self, batch: dict) -> dict[str, float]:
        """Mean activation sigmoid(logits) on and off the ground truth of labels that have one.

        This is how MCCL's collapse shows (method.md section 7): both means drifting towards 1.
        Runs the model in eval mode and gives it back in the mode it was in.

        Returns:
            {"act_on": float, "act_off": float}; {} when the batch has no dense masks.
        """
        if "masks" not in batch:
            return {}
        valid = (batch["mask_valid"] & batch["label_mask"])[:, :, None, None] & batch["pixel_valid"][:, None]
        if not valid.any():
            return {}
        was_training = self.model.training
        self.model.eval()
        try:
            activation = torch.sigmoid(self.model(batch["image"], self.label_embeddings(batch)).float())
        finally:
            self.model.train(was_training)
        on = valid & (batch["masks"] > 0.5)
        off = valid & (batch["masks"] <= 0.5)
        stats = {}
        if on.any():
            stats["act_on"] = activation[on].mean().item()
        if off.any():
            stats["act_off"] = activation[off].mean().item()
        return stats


class MCCLTask(TrainingTask):
    """MCCL (method.md eq. 3-7) on FSS synergy features; paper-exact unless a stabiliser is configured.

    The labels' t_c come from the frozen text encoder with the training template ("a photo of a {}.").
    """

    def __init__(self, model: nn.Module, text_cache: TextEmbeddingCache, loss: LossConfig) -> None:
        super().__init__(model, text_cache)
        self.weights = tuple(loss.weights)
        self.sim_clip = tuple(loss.sim_clip)      # stabiliser (config.LossConfig): paper = (0.005, 0.995)
        self.area_weight = loss.area_weight       # stabiliser (config.LossConfig): paper = 0
        self.anchor_weight = loss.anchor_weight   # stabiliser (config.LossConfig): paper = 0
        self.anchor_min_peak = loss.anchor_min_peak
        self.absent_weight, self.absent_labels = loss.absent_weight, loss.absent_labels  # stabiliser: paper = 0
        self.absent_max_cosine = loss.absent_max_cosine
        self.projector_input = loss.projector_input  # config.LossConfig: paper = "conditional"
        self.peak_weight, self.peak_fraction = loss.peak_weight, loss.peak_fraction  # stabiliser: paper = 0
        self.peak_relative_weight = loss.peak_relative_weight  # stabiliser: paper = 0
        if self.anchor_weight > 0 or self.absent_weight > 0:
            # A frozen copy of the starting decoder and projector; the CLIP is shared, not copied.
            self.anchor = copy.deepcopy(model, memo={id(model.clip): model.clip}).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "MCCLTask":
        super().train(mode)
        if hasattr(self, "anchor"):
            self.anchor.eval()
        return self

    def training_forward(self, batch: dict) -> dict[str, torch.Tensor]:
        text = self.label_embeddings(batch)
        activations = self.model.encode_image(batch["image"])
        size = tuple(batch["image"].shape[-2:])
        out = self.model.decode(activations, text, size, return_synergy=True, synergy_input=self.projector_input)
        # Cosines near the 0.995 clip decide L_cont: compute them in float32 even under autocast.
        parts = mccl_loss(out.fg.float(), out.bg.float(), text, mask=batch["label_mask"],
                          weights=self.weights, clip=self.sim_clip)
        losses = {name: weight * parts[name] for name, weight in zip(MCCL_TERMS, self.weights) if weight > 0}
        if self.area_weight > 0:
            losses["area"] = self.area_weight * self.area_term(out.logits, batch["label_mask"])
        if self.peak_weight > 0:
            losses["peak"] = self.peak_weight * self.peak_term(out.logits, batch["label_mask"], self.peak_fraction)
        if self.peak_relative_weight > 0:
            losses["peak_rel"] = self.peak_relative_weight * self.peak_term(
                out.logits, batch["label_mask"], self.peak_fraction, relative=True)
        if self.anchor_weight > 0:
            with torch.no_grad():
                target = torch.sigmoid(self.anchor.decode(activations, text, size).float())
            anchored = batch["label_mask"] & (target.flatten(2).amax(-1) > self.anchor_min_peak)
            losses["anchor"] = self.anchor_weight * self.anchor_term(out.logits, target, anchored)
        if self.absent_weight > 0:
            absent = self.absent_term(batch, activations, size)
            if absent is not None:
                losses["absent"] = self.absent_weight * absent
        return losses

    def absent_term(self, batch: dict, activations: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor | None:
        """L_absent (a stabiliser, not in the paper; config.LossConfig.absent_weight): BCE towards 0 of the top
        ``peak_fraction`` of the maps of labels taken as absent; None when the batch offers none."""
        names, mask = self.absent_candidates(batch["labels"])
        if not mask.any():
            return None
        text = self.text_cache.batch_embeddings(names)
        logits = self.model.decode(activations, text, size)
        with torch.no_grad():  # what the starting model recognises here is never taken as absent
            known = torch.sigmoid(self.anchor.decode(activations, text, size).float()).flatten(2).amax(-1)
        mask = mask.to(logits.device) & (known <= self.anchor_min_peak)
        flat = logits.float().flatten(2)
        top = flat.topk(_pixel_count(flat, self.peak_fraction), dim=-1).values
        return _mean_over_labels(F.softplus(top).mean(-1), mask)

    def absent_candidates(self, labels: list[list[str]]) -> tuple[list[list[str]], torch.Tensor]:
        """For each image, up to ``absent_labels`` labels of the other images that it does not name, nor a
        near-synonym of its labels (text cosine above ``absent_max_cosine``), drawn at random.

        Returns:
            B lists of labels (padded with the image's first label) and a (B, A) bool mask of the real ones.
        """
        vocabulary = sorted({label for item in labels for label in item})
        unit = F.normalize(self.text_cache.embed(vocabulary).float(), dim=-1)
        similar = (unit @ unit.T > self.absent_max_cosine) | torch.eye(len(vocabulary), dtype=torch.bool)
        index = {label: i for i, label in enumerate(vocabulary)}
        names, mask = [], torch.zeros(len(labels), self.absent_labels, dtype=torch.bool)
        for b, own in enumerate(labels):
            named = similar[[index[label] for label in own]].any(0)
            pool = [vocabulary[i] for i in torch.nonzero(~named).flatten().tolist()]
            chosen = [pool[i] for i in torch.randperm(len(pool))[:self.absent_labels].tolist()]
            mask[b, :len(chosen)] = True
            names.append(chosen + own[:1] * (self.absent_labels - len(chosen)))
        return names, mask

    @staticmethod
    def area_term(logits: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        """L_area (a stabiliser, not in the paper): mean activation of the real labels' maps.

        Args:
            logits: (B, K, H, W). label_mask: (B, K) bool.
        """
        return _mean_over_labels(torch.sigmoid(logits.float()).mean(dim=(2, 3)), label_mask)

    @staticmethod
    def peak_term(logits: torch.Tensor, label_mask: torch.Tensor, fraction: float,
                  relative: bool = False) -> torch.Tensor:
        """L_peak (a stabiliser, not in the paper): the mean -log activation over ``fraction`` of each map's
        pixels, averaged over the real labels (log-sigmoid of the logits, for stability). The pixels are the
        map's highest or, ``relative``, those where it most exceeds the image's other labels' maps.

        Args:
            logits: (B, K, H, W). label_mask: (B, K) bool.
        """
        flat = logits.float().flatten(2)
        score = flat.detach()
        if relative:
            # The largest map of another real label (a slot that never leads pads a lone label): the second
            # largest where this label's map is the largest. Alone in its image, a label's own map decides.
            maps = score.masked_fill(~label_mask[..., None], float("-inf"))
            best, second = torch.cat([maps, torch.full_like(maps[:, :1], float("-inf"))], 1).topk(2, 1).values.unbind(1)
            rival = torch.where(score >= best[:, None], second[:, None], best[:, None]).clamp(min=-1e4)
            score = score - rival
        chosen = score.topk(_pixel_count(flat, fraction), dim=-1).indices
        return _mean_over_labels(-F.logsigmoid(flat.gather(-1, chosen)).mean(-1), label_mask)

    @staticmethod
    def anchor_term(logits: torch.Tensor, target: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
        """L_anchor (a stabiliser, not in the paper): BCE of the maps against the frozen starting model's maps.

        Args:
            logits: (B, K, H, W). target: (B, K, H, W) in [0, 1]. label_mask: (B, K) bool.
        """
        per_map = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(2, 3))
        return _mean_over_labels(per_map, label_mask)


def _pixel_count(flat: torch.Tensor, fraction: float) -> int:
    """How many of a flattened map's pixels ``fraction`` is (at least one)."""
    return max(1, round(fraction * flat.shape[-1]))


def _mean_over_labels(per_map: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, K) per-map values over the real labels (``label_mask``), padding slots left out."""
    m = label_mask.to(per_map.dtype)
    return (per_map * m).sum() / m.sum().clamp(min=1.0)


class DenseBCETask(TrainingTask):
    """Per-pixel binary cross-entropy of each label's logit map against its referring mask.

    Only the decoder (with FiLM) trains: the FSS projector serves MCCL alone, so it is frozen here.
    Ignore pixels (label-index 255) and padding slots do not count.
    """

    def __init__(self, model: nn.Module, text_cache: TextEmbeddingCache) -> None:
        super().__init__(model, text_cache)
        model.projector.requires_grad_(False)

    def training_forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if "masks" not in batch:
            raise ValueError("dense_bce needs batches with referring masks (shards with seg.png)")
        logits = self.model(batch["image"], self.label_embeddings(batch)).float()
        weight = ((batch["mask_valid"] & batch["label_mask"])[:, :, None, None]
                  & batch["pixel_valid"][:, None]).float()
        per_pixel = F.binary_cross_entropy_with_logits(logits, batch["masks"], reduction="none")
        return {"bce": (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)}


def create_task(name: str, model: nn.Module, text_cache: TextEmbeddingCache, loss: LossConfig) -> TrainingTask:
    """The task called `name` ("mccl" or "dense_bce")."""
    if name == "mccl":
        return MCCLTask(model, text_cache, loss)
    if name == "dense_bce":
        return DenseBCETask(model, text_cache)
    raise ValueError(f"unknown task {name!r} (mccl or dense_bce)")
