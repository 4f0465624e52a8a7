"""Label images and coloured overlays from per-label activation maps (no ROS)."""
from __future__ import annotations

import colorsys
import hashlib
from typing import Sequence

import cv2
import numpy as np

# Overlay text, relative to the image's shorter side, so labels stay legible from 64 px to 4K.
_TEXT_SCALE_PER_PIXEL = 1.0 / 600.0
_MIN_TEXT_SCALE = 0.3
# Where to write a label is searched on a copy of the label map at most this many pixels wide: finding
# connected regions at full resolution costs more than the rest of the overlay.
_REGION_SEARCH_SIDE = 128


def label_image(probabilities: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """One label per pixel: 0 where no mask holds it, else 1 + the index of the most activated label.

    Args:
        probabilities: (K, H, W) float activation maps in [0, 1].
        masks: K (H, W) masks of the maps above a threshold >= 0 (K <= 255), bool or uint8 (0 or 255).

    Returns:
        (H, W) uint8.
    """
    height, width = probabilities.shape[1:]
    out = np.zeros((height, width), np.uint8)
    # Inside its mask an activation is above the threshold, so > 0; outside it counts as 0. (A uint8 mask
    # scales every map by the same 255, which leaves the comparison as it is.)
    best = np.zeros((height, width), np.float32)
    for k in range(probabilities.shape[0]):
        if not masks[k].any():          # most labels are absent from most frames: they win no pixel
            continue
        masked = np.multiply(probabilities[k], masks[k], dtype=np.float32)
        out[cv2.compare(masked, best, cv2.CMP_GT) > 0] = k + 1
        cv2.max(best, masked, dst=best)
    return out


def label_color(label: str) -> tuple[int, int, int]:
    """A bright RGB colour fixed by the label's text, so a label keeps its colour across vocabularies."""
    hue = int.from_bytes(hashlib.sha1(label.encode("utf-8")).digest()[:2], "big") / 65535.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(rgb: np.ndarray, labels: list[str], label_map: np.ndarray, alpha: float) -> np.ndarray:
    """The image with each label's pixels tinted in its colour and its name written on its largest region.

    Args:
        rgb: (H, W, 3) uint8 source image.
        labels: the K labels; ``label_map`` value i + 1 is ``labels[i]``.
        label_map: (H, W) uint8 from ``label_image``.
        alpha: opacity of the tint in [0, 1].

    Returns:
        (H, W, 3) uint8 RGB.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        palette[i + 1] = label_color(label)
    blended = cv2.addWeighted(rgb, 1.0 - alpha, palette[label_map], alpha, 0.0)
    out = np.where((label_map > 0)[..., None], blended, rgb)
    scale = max(_MIN_TEXT_SCALE, min(rgb.shape[:2]) * _TEXT_SCALE_PER_PIXEL)
    thickness = max(1, round(scale * 2))
    factor = max(1.0, max(label_map.shape) / _REGION_SEARCH_SIDE)
    small = cv2.resize(label_map, (round(label_map.shape[1] / factor), round(label_map.shape[0] / factor)),
                       interpolation=cv2.INTER_NEAREST)
    for i, label in enumerate(labels):
        anchor = _largest_region_center(small == i + 1)
        if anchor is not None:
            center = (int(anchor[0] * factor), int(anchor[1] * factor))
            _put_label(out, label, center, scale, thickness, label_color(label))
    return out


def _largest_region_center(mask: np.ndarray) -> tuple[float, float] | None:
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return float(centroids[biggest][0]), float(centroids[biggest][1])


def _put_label(image: np.ndarray, text: str, center: tuple[int, int], scale: float, thickness: int,
               color: tuple[int, int, int]) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), _ = cv2.getTextSize(text, font, scale, thickness)
    x = min(max(center[0] - w // 2, 0), max(image.shape[1] - w, 0))
    y = min(max(center[1] + h // 2, h), image.shape[0] - 1)
    # A dark outline keeps the coloured text readable on any background.
    cv2.putText(image, text, (x, y), font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), font, scale, color, thickness, cv2.LINE_AA)
