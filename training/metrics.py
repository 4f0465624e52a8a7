"""Semantic segmentation metrics from one confusion matrix accumulated over a whole split.

mIoU follows mmsegmentation (the protocol of TCL / SynSeg): per-class TP / (TP + FP + FN) over the
summed confusion matrix, not averaged per image; classes absent from both ground truth and predictions
have no IoU (NaN) and are left out of the mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = 255
"""Label value of pixels that belong to no class and are not scored: VOC boundaries, unlabeled COCO /
Cityscapes pixels, the shapes world's and the training shards' ``seg.png`` ignore pixels."""


@dataclass(frozen=True)
class SegmentationScores:
    """Scores of a confusion matrix. IoUs and accuracies are fractions in [0, 1].

    Attributes:
        iou: (K,) float64 per-class IoU, NaN for a class absent from ground truth and predictions.
        acc: (K,) float64 per-class accuracy (recall), NaN for a class absent from the ground truth.
        miou: mean of the non-NaN IoUs.
        aacc: correctly predicted scored pixels / all scored pixels.
        num_pixels: number of scored pixels.
    """

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    aacc: float
    num_pixels: int


class ConfusionMatrix:
    """Accumulates a (K, K+1) confusion matrix: rows ground truth, columns prediction.

    The extra last column counts pixels whose prediction is no class at all (value IGNORE_INDEX, e.g. a
    method that abstains): they are misses of their ground-truth class. Ground-truth pixels equal to
    ``ignore_index`` are not counted.

    Args:
        num_classes: K.
        ignore_index: ground-truth value that is skipped.
        device: where the matrix lives (keep it with the predictions to avoid copies).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index (K={num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the matrix."""
        self.matrix.zero_()

    def update(self, target: torch.Tensor | np.ndarray, prediction: torch.Tensor | np.ndarray) -> None:
        """Add one batch of pixels.

        Args:
            target: (...) integer ground truth in ``[0, K)`` or ``ignore_index``.
            prediction: same shape, integer in ``[0, K)`` or ``ignore_index`` (no class).
        Raises:
            ValueError: shapes differ, or a value is neither a class nor ``ignore_index``.
        """
        target = torch.as_tensor(target, device=self.matrix.device).long().flatten()
        prediction = torch.as_tensor(prediction, device=self.matrix.device).long().flatten()
        if target.shape != prediction.shape:
            raise ValueError(f"target and prediction differ in size: {target.numel()} vs {prediction.numel()}")
        k = self.num_classes
        scored = target != self.ignore_index
        target, prediction = target[scored], prediction[scored]
        abstain = prediction == self.ignore_index
        for name, values, valid in (("target", target, None), ("prediction", prediction, abstain)):
            bad = (values < 0) | (values >= k)
            if valid is not None:
                bad &= ~valid
            if bad.any():
                raise ValueError(f"{name} value {int(values[bad][0])} is neither a class in [0, {k}) "
                                 f"nor the ignore index {self.ignore_index}")
        prediction = torch.where(abstain, torch.full_like(prediction, k), prediction)
        counts = torch.bincount(target * (k + 1) + prediction, minlength=k * (k + 1))
        self.matrix += counts.reshape(k, k + 1)

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks in place (call on every rank; no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> SegmentationScores:
        """Per-class IoU and accuracy, mIoU and aAcc of the accumulated matrix."""
        matrix = self.matrix.double().cpu()
        true_positive = matrix.diagonal()
        gt_pixels = matrix.sum(dim=1)
        predicted = matrix[:, : self.num_classes].sum(dim=0)
        union = gt_pixels + predicted - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)
        acc = torch.where(gt_pixels > 0, true_positive / gt_pixels.clamp(min=1), torch.nan)
        total = gt_pixels.sum()
        miou = float(torch.nanmean(iou)) if bool((union > 0).any()) else float("nan")
        aacc = float(true_positive.sum() / total) if total > 0 else float("nan")
        return SegmentationScores(iou=iou.numpy(), acc=acc.numpy(), miou=miou, aacc=aacc,
                                  num_pixels=int(total))
