"""Score a model on a shapes-world split in batches: the figures of ``training.evaluate`` plus the mean
activation on and off the ground truth.

The shapes world's held-out images are as small as the model's input (64 px), so the benchmark protocol
(``training.evaluate.evaluate_model`` with ``short_side = crop_size = stride`` = the image size) is one window
per image, no resize: logits, sigmoid, argmax over the classes (no background). This module computes exactly
that over whole batches of images, with the same templates, confusion matrix and percentages (a test checks
the two agree), about ten times faster: the pipeline scores every step checkpoint of every run on dev.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from synseg_model import SynSeg, image_to_tensor
from training.datasets import SegmentationDataset, load_dataset_spec
from training.evaluate import load_templates
from training.metrics import IGNORE_INDEX, ConfusionMatrix


@functools.lru_cache(maxsize=4)
def load_split(root: str, limit: int | None = None) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """A VOC-layout split as (images (N, S, S, 3) uint8, labels (N, S, S) int64, class names), cached: the
    pipeline scores many checkpoints on the same split."""
    spec = load_dataset_spec(Path(root) / "dataset.yaml")
    data = SegmentationDataset(spec, Path(root), limit=limit)
    images, labels = zip(*(data.load(i) for i in range(len(data))))
    if len({image.shape for image in images}) != 1:
        raise ValueError(f"{root}: images of different sizes; use training.evaluate")
    return np.stack(images), torch.from_numpy(np.stack(labels).astype(np.int64)), spec.prompt_names()


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


@torch.no_grad()
def score_split(model: SynSeg, root: Path, seen: Iterable[str] = (), limit: int | None = None,
                batch_size: int = 100, threshold: float = 0.5) -> dict[str, Any]:
    """mIoU, aAcc, per-class IoU (percent), mIoU of the ``seen`` classes and of the others, and the mean
    activation on (``act_on``: inside each present class's pixels) and off (``act_off``: outside them) the
    ground truth, averaged over (image, class) pairs. Collapse shows as both going to 1 (or 0).

    ``mask_miou`` (and its seen and unseen parts) scores what the ROS node publishes instead of the argmax:
    each class's mask ``activation > threshold`` (a pixel may be in several), IoU with the class's pixels
    accumulated over the split, averaged over the classes present."""
    images, labels, names = load_split(str(root), limit)
    was_training = model.training
    model.eval()
    try:
        text = model.encode_text(names, load_templates("simple"))
        matrix = ConfusionMatrix(len(names))
        on, off = [], []
        mask_inter, mask_union = torch.zeros(len(names)), torch.zeros(len(names))
        for start in range(0, len(images), batch_size):
            x = image_to_tensor(images[start:start + batch_size], model.config.mean, model.config.std)
            act = torch.sigmoid(model(x, text).float())
            truth = labels[start:start + batch_size]
            matrix.update(truth, act.argmax(1))
            inside = truth[:, None] == torch.arange(len(names))[None, :, None, None]      # (B, K, H, W)
            masks, valid = act > threshold, (truth != IGNORE_INDEX)[:, None]
            mask_inter += (masks & inside).sum((0, 2, 3)).float()
            mask_union += ((masks & valid) | inside).sum((0, 2, 3)).float()
            pixels_in, pixels_out = inside.sum((2, 3)), (~inside).sum((2, 3))
            on.append(((act * inside).sum((2, 3)) / pixels_in.clamp(min=1))[pixels_in > 0])
            off.append(((act * ~inside).sum((2, 3)) / pixels_out.clamp(min=1))[pixels_out > 0])
    finally:
        model.train(was_training)
    scores = matrix.compute()
    per_class = {name: None if np.isnan(iou) else 100 * float(iou) for name, iou in zip(names, scores.iou)}
    seen = set(seen)
    present = set(labels.unique().tolist())
    mask_iou = {name: 100 * float(mask_inter[k] / mask_union[k]) if k in present else None
                for k, name in enumerate(names)}
    return {"miou": 100 * scores.miou, "aacc": 100 * scores.aacc, "per_class": per_class,
            "miou_seen": _mean(v for c, v in per_class.items() if c in seen),
            "miou_unseen": _mean(v for c, v in per_class.items() if c not in seen),
            "mask_miou": _mean(mask_iou.values()),
            "mask_miou_seen": _mean(v for c, v in mask_iou.items() if c in seen),
            "mask_miou_unseen": _mean(v for c, v in mask_iou.items() if c not in seen),
            "act_on": float(torch.cat(on).mean()), "act_off": float(torch.cat(off).mean()),
            "num_images": len(images)}
