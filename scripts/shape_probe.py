"""Can a visual tower learn the shapes world at all, and how fast? A supervised presence probe.

Trains an open_clip visual tower (from an architecture JSON) plus a linear head with per-class BCE on "class
present (>= 20 pixels)" labels taken from the shards' ``seg.png`` maps, and prints every 100 steps the
held-out AUC of each class. This is the upper bound that contrastive training (stage 1) approaches from
below; it is how the shapes world's CLIP architecture was chosen (docs/shapes.md).

    python scripts/shape_probe.py --arch config/shapes/clip-shapes.json \\
        --shards "data/shapes/train/{00000..00015}.tar" --val data/shapes/val --steps 1000
"""
from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import open_clip
import torch
import webdataset as wds
from PIL import Image

from synseg_model import image_to_tensor
from synseg_model.config import IMAGENET_MEAN, IMAGENET_STD
from training.shapes.clip_stage import register_model_config
from training.shapes.gate import auc, load_voc_split

CLASSES = 11
MIN_PIXELS = 20


def presence(label_map: np.ndarray) -> np.ndarray:
    return np.bincount(label_map.ravel(), minlength=256)[:CLASSES] >= MIN_PIXELS


def batches(shards: str, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in range(10_000):
        images, targets = [], []
        for sample in wds.WebDataset(shards, shardshuffle=False).shuffle(500, rng=random.Random(epoch)):
            images.append(np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")))
            targets.append(presence(np.asarray(Image.open(io.BytesIO(sample["seg.png"])))))
            if len(images) == batch:
                yield (image_to_tensor(np.stack(images), IMAGENET_MEAN, IMAGENET_STD),
                       torch.from_numpy(np.stack(targets)).float())
                images, targets = [], []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, help="open_clip architecture JSON")
    parser.add_argument("--shards", required=True, help="training shards (brace pattern)")
    parser.add_argument("--val", type=Path, required=True, help="VOC-layout held-out split")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, arch = register_model_config(args.arch)
    tower = open_clip.create_model(name).visual
    head = torch.nn.Linear(arch["embed_dim"], CLASSES)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.1)
    images, labels = load_voc_split(args.val)
    val_x = image_to_tensor(np.stack(images), IMAGENET_MEAN, IMAGENET_STD)
    val_y = np.stack([presence(label) for label in labels])
    start = time.time()
    for step, (x, y) in enumerate(batches(args.shards, args.batch_size)):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(tower(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0:
            with torch.no_grad():  # in training mode: a ResNet's BatchNorm uses the split's own statistics
                scores = head(tower(val_x)).numpy()
            aucs = " ".join(f"{auc(scores[:, k], val_y[:, k]):.2f}" for k in range(CLASSES))
            print(f"{step} {time.time() - start:.0f}s loss {loss.item():.3f} AUC {aucs}", flush=True)
        if step >= args.steps:
            break


if __name__ == "__main__":
    main()
