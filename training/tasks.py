"""Training tasks: the model and its loss in one module, `training_forward(batch) -> named losses`.

The trainer sums the returned losses in one place and backpropagates the sum; each entry is already
weighted, so the logged values add up to what is optimised.
- `mccl`: the paper's Multi-Category Contrastive Learning on caption labels (paper section 4.2), plus the
  terms `training.config.LossConfig` adds.
- `dense_bce`: per-pixel BCE on referring masks from label-index maps (the shapes world's stage 2, the
  CLIPSeg-like initialisation).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from synseg_model import image_to_tensor
from synseg_model.losses import absent_loss, anchor_loss, area_loss, mccl_loss, peak_loss

from .config import LossConfig
from .outside import random_frames, read_words
from .text_cache import TextEmbeddingCache


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

        This is how MCCL's collapse shows: both means drifting towards 0 or 1.
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
    """MCCL (paper section 4.2) on FSS synergy features, plus the added terms `loss` turns on.

    The labels' t_c come from the frozen text encoder with the training templates ("a photo of a {}.").
    """

    def __init__(self, model: nn.Module, text_cache: TextEmbeddingCache, loss: LossConfig) -> None:
        super().__init__(model, text_cache)
        self.loss = loss
        self.weights = loss.terms()
        if loss.anchor is not None or loss.absent is not None:
            # A frozen copy of the starting decoder and projector; the CLIP is shared, not copied.
            self.anchor = copy.deepcopy(model, memo={id(model.clip): model.clip}).requires_grad_(False).eval()
        self.outside_words: list[str] = []
        if loss.outside is not None and loss.outside.words is not None:
            self.outside_words = read_words(loss.outside.words)
            if not self.outside_words:
                raise ValueError(f"loss.outside.words: {loss.outside.words} holds no word")

    def train(self, mode: bool = True) -> "MCCLTask":
        super().train(mode)
        if hasattr(self, "anchor"):
            self.anchor.eval()
        return self

    def training_forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """w_t L_t for every term t that is on (`LossConfig.terms`: weights and order), named by t.

        The trainer sums them: L = sum_t w_t L_t, the paper's eq. (7) over MCCL's four losses
        (`synseg_model.losses.mccl_loss`), extended by the added terms (`synseg_model.losses`). L_absent is left
        out of a batch that offers no label to take as absent.
        """
        loss, mask = self.loss, batch["label_mask"]
        text = self.label_embeddings(batch)
        activations = self.model.encode_image(batch["image"])
        size = tuple(batch["image"].shape[-2:])
        terms = {}
        if loss.mccl is not None:
            out = self.model.decode(activations, text, size, return_synergy=True,
                                    synergy_input=loss.mccl.projector_input)
            logits = out.logits
            # Cosines near the clip's upper bound decide L_cont: float32 even under autocast.
            terms.update(mccl_loss(out.fg.float(), out.bg.float(), text, mask=mask, clip=tuple(loss.mccl.sim_clip)))
        else:
            logits = self.model.decode(activations, text, size)
        if loss.area is not None:
            terms["area"] = area_loss(logits, mask)
        if loss.peak is not None:
            terms["peak"] = peak_loss(logits, mask, loss.peak.fraction)
        if loss.peak_relative is not None:
            terms["peak_relative"] = peak_loss(logits, mask, loss.peak_relative.fraction, relative=True)
        if loss.anchor is not None:
            with torch.no_grad():
                target = torch.sigmoid(self.anchor.decode(activations, text, size).float())
            anchored = mask & (target.flatten(2).amax(-1) > loss.anchor.min_peak)
            terms["anchor"] = anchor_loss(logits, target, anchored)
        if loss.absent is not None:
            absent = self.absent_term(batch, activations, size)
            if absent is not None:
                terms["absent"] = absent
        if loss.outside is not None:
            outside = self.outside_term(batch, activations, size)
            if outside is not None:
                terms["outside"] = outside
        return {name: self.weights[name] * value for name, value in terms.items() if name in self.weights}

    def absent_term(self, batch: dict, activations: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor | None:
        """L_absent (`synseg_model.losses.absent_loss`) on the labels taken as absent; None when the batch
        offers none."""
        options = self.loss.absent
        names, mask = self.absent_candidates(batch["labels"])
        if not mask.any():
            return None
        text = self.text_cache.batch_embeddings(names)
        logits = self.model.decode(activations, text, size)
        with torch.no_grad():  # what the starting model recognises here is never taken as absent
            known = torch.sigmoid(self.anchor.decode(activations, text, size).float()).flatten(2).amax(-1)
        return absent_loss(logits, mask.to(logits.device) & (known <= options.min_peak), options.fraction)

    def absent_candidates(self, labels: list[list[str]]) -> tuple[list[list[str]], torch.Tensor]:
        """For each image, up to ``loss.absent.labels`` labels of the other images that it does not name, nor a
        near-synonym of its labels (text cosine above ``loss.absent.max_cosine``), drawn at random.

        Returns:
            B lists of labels (padded with the image's first label) and a (B, A) bool mask of the real ones.
        """
        count, max_cosine = self.loss.absent.labels, self.loss.absent.max_cosine
        vocabulary = sorted({label for item in labels for label in item})
        unit = F.normalize(self.text_cache.embed(vocabulary).float(), dim=-1)
        similar = (unit @ unit.T > max_cosine) | torch.eye(len(vocabulary), dtype=torch.bool)
        index = {label: i for i, label in enumerate(vocabulary)}
        names, mask = [], torch.zeros(len(labels), count, dtype=torch.bool)
        for b, own in enumerate(labels):
            named = similar[[index[label] for label in own]].any(0)
            pool = [vocabulary[i] for i in torch.nonzero(~named).flatten().tolist()]
            chosen = [pool[i] for i in torch.randperm(len(pool))[:count].tolist()]
            mask[b, :len(chosen)] = True
            names.append(chosen + own[:1] * (count - len(chosen)))
        return names, mask


    def outside_term(self, batch: dict, activations: list[torch.Tensor], size: tuple[int, int]
                     ) -> torch.Tensor | None:
        """L_outside (`training.config.OutsideLoss`): L_absent's equation on sure negatives, the mean of its
        value on the images (their drawn words) and on the drawn frames (batch labels and words); None when
        neither offers a label."""
        options, parts = self.loss.outside, []
        device = batch["image"].device
        if self.outside_words and options.labels:
            names = [self._draw_words(options.labels) for _ in batch["labels"]]
            logits = self.model.decode(activations, self.text_cache.batch_embeddings(names), size)
            parts.append(absent_loss(logits, torch.ones(logits.shape[:2], dtype=torch.bool, device=device),
                                     options.fraction))
        vocabulary = sorted({label for item in batch["labels"] for label in item})
        if options.frames and (vocabulary or self.outside_words) and options.frame_labels:
            cfg = self.model.config
            frames = image_to_tensor(random_frames(options.frames, size[0]).numpy(), cfg.mean, cfg.std,
                                     device=device)
            names = []
            for _ in range(options.frames):
                chosen = [vocabulary[i] for i in torch.randperm(len(vocabulary))[:options.frame_labels].tolist()]
                names.append(chosen + (self._draw_words(options.labels) if self.outside_words else []))
            logits = self.model.decode(self.model.encode_image(frames), self.text_cache.batch_embeddings(names), size)
            real = torch.tensor([[i < len(row) for i in range(logits.shape[1])] for row in names], device=device)
            parts.append(absent_loss(logits, real, options.fraction))
        return torch.stack(parts).mean() if parts else None

    def _draw_words(self, count: int) -> list[str]:
        return [self.outside_words[i] for i in torch.randint(len(self.outside_words), (count,)).tolist()]


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
