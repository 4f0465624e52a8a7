"""Qualitative output of an evaluation: image | prediction | ground truth panels as PNG."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from training.metrics import IGNORE_INDEX

IGNORE_COLOUR = (224, 224, 192)
"""RGB of not-scored pixels: the colour VOC's own palette gives to 255."""
_CAPTIONS = ("image", "prediction", "ground truth")
_CAPTION_HEIGHT = 24
_FONT_SCALE = 0.6


def make_palette(num_colours: int) -> np.ndarray:
    """Distinct colours by PASCAL VOC's bit-interleaving rule (index 0 black, then VOC's 20 classes ...).

    Returns:
        (num_colours, 3) uint8 RGB.
    """
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for index in range(num_colours):
        value, colour = index, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[index] = colour
    return palette


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB; IGNORE_INDEX and out-of-palette values get IGNORE_COLOUR."""
    label = np.asarray(label)
    out = np.empty((*label.shape, 3), dtype=np.uint8)
    out[:] = IGNORE_COLOUR
    known = (label != IGNORE_INDEX) & (label >= 0) & (label < len(palette))
    out[known] = palette[label[known]]
    return out


def make_panel(image: np.ndarray, prediction: np.ndarray, target: np.ndarray, palette: np.ndarray,
               max_side: int) -> np.ndarray:
    """Three tiles side by side with captions, each tile scaled so its long side is at most ``max_side``.

    Args:
        image: (H, W, 3) uint8 RGB. prediction, target: (H, W) class indices.
    Returns:
        (h + caption, 3 w, 3) uint8 RGB.
    """
    tiles = [image, colorize(prediction, palette), colorize(target, palette)]
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = [cv2.resize(tiles[0], size, interpolation=cv2.INTER_AREA)]
    resized += [cv2.resize(tile, size, interpolation=cv2.INTER_NEAREST) for tile in tiles[1:]]
    captioned = []
    for tile, caption in zip(resized, _CAPTIONS):
        strip = np.full((_CAPTION_HEIGHT, tile.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(strip, caption, (4, _CAPTION_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX, _FONT_SCALE,
                    (0, 0, 0), 1, cv2.LINE_AA)
        captioned.append(np.concatenate([strip, tile], axis=0))
    return np.concatenate(captioned, axis=1)


def save_panel(path: Path, image: np.ndarray, prediction: np.ndarray, target: np.ndarray,
               palette: np.ndarray, max_side: int) -> None:
    """Write :func:`make_panel` as a PNG (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    panel = make_panel(image, prediction, target, palette, max_side)
    if not cv2.imwrite(str(path), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
