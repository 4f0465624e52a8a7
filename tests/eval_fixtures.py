"""Tiny benchmark splits written in each dataset's exact on-disk layout, for the evaluation tests.

Every fixture has two 6x8 images with hand-made label maps, so expected scores can be worked out by hand.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from training.eval_panels import make_palette

HEIGHT, WIDTH = 6, 8
IGNORE = 255

# Stored label values (before the dataset's reduce_zero_label rule), two images per dataset.
# Row blocks: rows 0-1 value a, rows 2-3 value b, rows 4-5 value c; pixel (0, 0) is 255 (ignored) in image 0.
_BLOCKS = {
    "voc": [(0, 15, 7), (15, 15, 12)],            # background, person, car / person, person, dog
    "voc20": [(0, 15, 7), (15, 15, 12)],
    "context59": [(0, 1, 2), (2, 2, 59)],          # 0 = ignored background in context59
    "context60": [(0, 1, 2), (2, 2, 59)],
    "coco_object": [(0, 1, 80), (1, 1, 3)],
    "coco_stuff": [(0, 1, 170), (1, 1, 3)],
    "cityscapes": [(0, 1, 18), (1, 1, 13)],
}
DATASETS = tuple(_BLOCKS)
DEFAULT_ROOTS = {"voc": "VOCdevkit/VOC2012", "voc20": "VOCdevkit/VOC2012", "context59": "VOCdevkit/VOC2010",
                 "context60": "VOCdevkit/VOC2010", "coco_object": "coco_stuff164k",
                 "coco_stuff": "coco_stuff164k", "cityscapes": "cityscapes"}
STEMS = {
    "voc": ["2007_000033", "2007_000042"], "voc20": ["2007_000033", "2007_000042"],
    "context59": ["2008_000002", "2008_000007"], "context60": ["2008_000002", "2008_000007"],
    "coco_object": ["000000000139", "000000000285"], "coco_stuff": ["000000000139", "000000000285"],
    "cityscapes": ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"],
}
REDUCE_ZERO = {"voc20", "context59"}
UNLABELED_AS_BACKGROUND = {"coco_object"}  # the published protocol: stored 255 scored as background (0)


def stored_labels(dataset: str) -> list[np.ndarray]:
    """The (H, W) uint8 label maps as stored on disk for ``dataset``."""
    maps = []
    for index, (a, b, c) in enumerate(_BLOCKS[dataset]):
        label = np.empty((HEIGHT, WIDTH), dtype=np.uint8)
        label[0:2], label[2:4], label[4:6] = a, b, c
        if index == 0:
            label[0, 0] = IGNORE
        maps.append(label)
    return maps


def class_labels(dataset: str, unlabeled: str | None = None) -> list[np.ndarray]:
    """The label maps as class indices (reduce_zero_label applied), IGNORE where not scored.

    Args:
        unlabeled: ``background`` or ``ignore`` (stored 255 scored as class 0, or not scored); None = the
            dataset's default (background for COCO-Object only).
    """
    if unlabeled is None:
        unlabeled = "background" if dataset in UNLABELED_AS_BACKGROUND else "ignore"
    out = []
    for raw in stored_labels(dataset):
        label = raw.astype(np.int64)
        if dataset in REDUCE_ZERO:
            label = np.where((label == 0) | (label == IGNORE), IGNORE, label - 1)
        if unlabeled == "background":
            label[label == IGNORE] = 0
        out.append(label)
    return out


def _image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_label_png(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """Write an 8-bit label PNG, as a VOC-style palette image when ``palette``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    if palette:  # pixel values are palette indices, exactly as VOC's SegmentationClass PNGs store them
        image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
        image.putpalette(make_palette(256).flatten().tolist())
    else:
        image = Image.fromarray(label)
    image.save(path)


def write_dataset(dataset: str, root: Path, image_size: tuple[int, int] | None = None) -> Path:
    """Write the fixture of ``dataset`` under ``root`` in its real layout; returns ``root``.

    Args:
        image_size: (H, W) of the images and labels (labels nearest-resized); default 6x8.
    """
    labels = stored_labels(dataset)
    if image_size is not None:
        labels = [cv2.resize(label, image_size[::-1], interpolation=cv2.INTER_NEAREST) for label in labels]
    height, width = labels[0].shape
    stems = STEMS[dataset]
    for seed, (stem, label) in enumerate(zip(stems, labels)):
        rgb = _image(seed, height, width)
        if dataset in ("voc", "voc20"):
            write_rgb(root / "JPEGImages" / f"{stem}.jpg", rgb)
            write_label_png(root / "SegmentationClass" / f"{stem}.png", label, palette=True)
        elif dataset in ("context59", "context60"):
            write_rgb(root / "JPEGImages" / f"{stem}.jpg", rgb)
            write_label_png(root / "SegmentationClassContext" / f"{stem}.png", label)
        elif dataset in ("coco_object", "coco_stuff"):
            suffix = "_instanceTrainIds.png" if dataset == "coco_object" else "_labelTrainIds.png"
            write_rgb(root / "images" / "val2017" / f"{stem}.jpg", rgb)
            write_label_png(root / "annotations" / "val2017" / f"{stem}{suffix}", label)
        else:
            write_rgb(root / "leftImg8bit" / "val" / f"{stem}_leftImg8bit.png", rgb)
            write_label_png(root / "gtFine" / "val" / f"{stem}_gtFine_labelTrainIds.png", label)
    split = {"voc": "Segmentation", "voc20": "Segmentation", "context59": "SegmentationContext",
             "context60": "SegmentationContext"}.get(dataset)
    if split is not None:
        split_file = root / "ImageSets" / split / "val.txt"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text("".join(f"{stem}\n" for stem in stems))
    return root


def write_predictions(dataset: str, directory: Path, maps: list[np.ndarray]) -> Path:
    """Write prediction PNGs (class indices) named after the fixture's stems; returns ``directory``."""
    for stem, prediction in zip(STEMS[dataset], maps):
        write_label_png(directory / f"{stem}.png", prediction)
    return directory
