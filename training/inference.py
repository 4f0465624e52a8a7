"""Benchmark inference as the zero-shot protocol does it (TCL's mmsegmentation settings).

One image: resize keeping the aspect ratio (short side 448), slide a 448x448 window with stride 224 and
average the logits of overlapping windows, resize the averaged logits to the label resolution, then
label = argmax over categories, with a constant background score where the dataset has a background.
The model is any callable mapping normalised windows (B, 3, h, w) to logits (B, K, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from synseg_model import image_to_tensor

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, 3, h, w) normalised float windows -> (B, K, h, w) logits."""


@dataclass(frozen=True)
class SlideSettings:
    """Resize and sliding-window settings (defaults in ``training/datasets/protocol.yaml``).

    Attributes:
        short_side: the image is rescaled so that its short side is this ...
        max_long_side: ... unless its long side would then exceed this (mmseg ``img_scale=(2048, 448)``).
        crop_size: square window side; an image smaller than this takes one window of its own size.
        stride: window step.
        window_batch: windows per model call (speed only; the protocol runs batch 1).
    """

    short_side: int
    max_long_side: int
    crop_size: int
    stride: int
    window_batch: int = 1

    def __post_init__(self) -> None:
        for name in ("short_side", "max_long_side", "crop_size", "stride", "window_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def rescale_keep_ratio(image: np.ndarray, short_side: int, max_long_side: int) -> np.ndarray:
    """Resize an image bilinearly, keeping its aspect ratio, as mmcv's ``imrescale`` does.

    The scale is ``min(short_side / min(h, w), max_long_side / max(h, w))``; new sizes round half up.

    Args:
        image: (H, W, 3) uint8.
    Returns:
        (H', W', 3) uint8.
    """
    height, width = image.shape[:2]
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    new_width, new_height = int(width * scale + 0.5), int(height * scale + 0.5)
    if (new_width, new_height) == (width, height):
        return image
    return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def window_boxes(height: int, width: int, crop_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding-window boxes ``(y1, y2, x1, x2)`` covering an image, mmseg's ``slide_inference`` rule.

    Windows start every ``stride`` pixels; the last one in each direction is shifted back to end at the
    image border. Every window is ``min(crop, H) x min(crop, W)``: an image smaller than the crop along a
    side takes a single window spanning that side.
    """
    rows = max(height - crop_size + stride - 1, 0) // stride + 1
    cols = max(width - crop_size + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride + crop_size, height)
            x2 = min(col * stride + crop_size, width)
            boxes.append((max(y2 - crop_size, 0), y2, max(x2 - crop_size, 0), x2))
    return boxes


def slide_logits(logits_fn: LogitsFn, image: torch.Tensor, crop_size: int, stride: int,
                 window_batch: int = 1) -> torch.Tensor:
    """Average the logits of sliding windows over one image.

    Args:
        logits_fn: (B, 3, h, w) -> (B, K, h, w).
        image: (1, 3, H, W) normalised float.
    Returns:
        (1, K, H, W) float32: per pixel, the mean of the logits of the windows covering it.
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image of shape (1, 3, H, W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    boxes = window_boxes(height, width, crop_size, stride)
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=image.device)
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start:start + window_batch]
        windows = torch.cat([image[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = logits_fn(windows).float()
        if logits.shape[0] != len(chunk) or logits.shape[-2:] != windows.shape[-2:]:
            raise ValueError(f"logits_fn returned {tuple(logits.shape)} for windows {tuple(windows.shape)}")
        if total is None:
            total = torch.zeros(1, logits.shape[1], height, width, device=image.device)
        for (y1, y2, x1, x2), window_logits in zip(chunk, logits):
            total[0, :, y1:y2, x1:x2] += window_logits
            count[0, :, y1:y2, x1:x2] += 1
    return total / count


def labels_from_logits(logits: torch.Tensor, bg_thresh: float | None) -> torch.Tensor:
    """Per-pixel class index: argmax of sigmoid scores, a constant background score prepended if given.

    Equivalent to ``argmax([bg_thresh, sigmoid(l_1), ..., sigmoid(l_K)])`` where ties go to the first
    maximum: a pixel is background unless some category's probability is strictly above ``bg_thresh``.

    Args:
        logits: (K, H, W).
        bg_thresh: background score, or None for datasets without background.
    Returns:
        (H, W) int64: in ``[0, K)`` without background, in ``[0, K]`` (0 = background) with it.
    """
    best, index = logits.max(dim=0)
    if bg_thresh is None:
        return index
    return torch.where(torch.sigmoid(best) > bg_thresh, index + 1, torch.zeros_like(index))


class ProtocolPredictor:
    """Image in, logits at the label resolution out, following the benchmark protocol.

    Args:
        logits_fn: the model on normalised windows, (B, 3, h, w) -> (B, K, h, w).
        settings: resize and sliding-window settings.
        mean, std: per-channel normalisation on the 0-1 scale (RGB).
        device: where the image tensors go.
    """

    def __init__(self, logits_fn: LogitsFn, settings: SlideSettings, mean: Sequence[float],
                 std: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.logits_fn = logits_fn
        self.settings = settings
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def logits(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Protocol logits of one image.

        Args:
            image: (H, W, 3) uint8 RGB.
            out_size: (H_out, W_out) of the label map; default the image size.
        Returns:
            (K, H_out, W_out) float32 averaged window logits, bilinearly resized.
        """
        s = self.settings
        resized = image_to_tensor(rescale_keep_ratio(image, s.short_side, s.max_long_side), self.mean, self.std,
                                  device=self.device)
        logits = slide_logits(self.logits_fn, resized, s.crop_size, s.stride, s.window_batch)
        size = tuple(out_size) if out_size is not None else tuple(image.shape[:2])
        if tuple(logits.shape[-2:]) != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits[0]


class SynSegLogits:
    """A SynSeg model as a window logits function, for one fixed set of category embeddings.

    The CLIP image encoder runs once per window batch; the categories are decoded in chunks of
    ``class_chunk`` over those cached activations, which bounds memory for 171 classes without changing
    the result.

    Args:
        model: a ``synseg_model.SynSeg`` (``encode_image``, ``decode``), in eval mode.
        text: (K, D) category embeddings from ``model.encode_text``.
        class_chunk: categories per decoder pass (0: all at once).
    """

    def __init__(self, model: torch.nn.Module, text: torch.Tensor, class_chunk: int = 0) -> None:
        self.model = model
        self.text = text
        self.class_chunk = class_chunk if class_chunk > 0 else text.shape[0]

    @torch.no_grad()
    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        size = tuple(windows.shape[-2:])
        activations = self.model.encode_image(windows)
        chunks = [self.model.decode(activations, text, size) for text in self.text.split(self.class_chunk)]
        return torch.cat(chunks, dim=1)
