"""The stage-1 zero-shot gate: does the small CLIP recognise every class of the world?

On the held-out VOC-layout split, each image is scored for each class X by the image-text cosine of
"a photo of a X." minus the image's mean cosine over all the world's class prompts (zero-shot
classification compares classes within an image in the same way; without it, an image-level offset such as
"few objects look more like any single-object prompt" ranks images instead of classes). The AUC of that
score against "the image contains X" must reach ``min_auc`` for every class, and the class names' text
embeddings must be told apart (every pairwise cosine at most ``max_text_cosine``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from synseg_model import image_to_tensor

logger = logging.getLogger(__name__)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); NaN when one side is empty.

    Args:
        scores: (N,) float.
        positive: (N,) bool.
    """
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def load_voc_split(root: Path, limit: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images (H,W,3) uint8 and label maps (H,W) uint8 of a VOC-layout split (``val.txt``)."""
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    if limit is not None:
        ids = ids[:limit]
    if not ids:
        raise ValueError(f"{root}: empty split")
    images = [np.asarray(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids]
    labels = [np.asarray(Image.open(root / "SegmentationClass" / f"{i}.png")) for i in ids]
    return images, labels


def load_open_clip(model_name: str, checkpoint: str | Path) -> tuple[torch.nn.Module, Any]:
    """An open_clip model (registered name) with the weights of an open_clip_train checkpoint, in eval mode."""
    model = open_clip.create_model(model_name, pretrained=str(checkpoint))
    return model.eval(), open_clip.get_tokenizer(model_name)


@torch.no_grad()
def zero_shot_gate(model: torch.nn.Module, tokenizer: Any, images: list[np.ndarray], labels: list[np.ndarray],
                   class_names: list[str], gate: dict[str, Any], mean: list[float],
                   std: list[float]) -> dict[str, Any]:
    """Measure the gate's figures and whether it passes.

    Returns:
        dict with ``auc`` {class: AUC}, ``text_cosine`` (K,K) list, ``max_text_cosine`` and its pair,
        ``passed`` (bool) and ``failures`` (list of reasons).
    """
    x = image_to_tensor(np.stack(images), mean, std)
    img = torch.nn.functional.normalize(torch.cat([model.encode_image(b) for b in x.split(128)]), dim=-1)
    prompts = [gate["template"].format(c) for c in class_names]
    txt = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    sims = (img @ txt.T).numpy()
    sims = sims - sims.mean(axis=1, keepdims=True)  # per-image centring, see the module docstring
    counts = np.stack([np.bincount(lab.ravel(), minlength=256)[:len(class_names)] for lab in labels])
    present = counts >= gate["min_visible_pixels"]
    aucs = {c: auc(sims[:, k], present[:, k]) for k, c in enumerate(class_names)}
    cos = (txt @ txt.T).numpy()
    off = cos - 2 * np.eye(len(class_names))
    a, b = np.unravel_index(np.argmax(off), off.shape)
    failures = [f"AUC({c}) = {v:.4f} < {gate['min_auc']}" for c, v in aucs.items()
                if not v >= gate["min_auc"]]
    if off.max() > gate["max_text_cosine"]:
        failures.append(f"text cosine({class_names[a]}, {class_names[b]}) = {off.max():.3f} > "
                        f"{gate['max_text_cosine']}")
    return {
        "auc": aucs,
        "min_auc": float(min(aucs.values())),
        "text_cosine": np.round(cos, 4).tolist(),
        "max_text_cosine": float(off.max()),
        "max_text_cosine_pair": [class_names[a], class_names[b]],
        "mean_text_cosine": float(off[off > -1].mean()),
        "num_images": len(images),
        "passed": not failures,
        "failures": failures,
    }
