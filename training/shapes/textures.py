"""Procedural "stuff" textures. Each takes (rng, size, params) and returns a (size, size, 3) float image.

Parameters come from the world YAML; colours are 0-255 RGB, lengths are fractions of the image side.
"""

from __future__ import annotations

from typing import Any, Callable

import cv2
import numpy as np

Texture = Callable[[np.random.Generator, int, dict[str, Any]], np.ndarray]


def _noisy(rng: np.random.Generator, size: int, base: np.ndarray, noise: float) -> np.ndarray:
    return base[None, None, :] + rng.normal(0.0, noise, (size, size, 1)) + rng.normal(0.0, noise / 3, (size, size, 3))


def grass(rng: np.random.Generator, size: int, p: dict[str, Any]) -> np.ndarray:
    """Green noise with short, near-vertical blade strokes."""
    img = _noisy(rng, size, np.asarray(p["base"], np.float32), p["noise"])
    n_strokes = int(p["stroke_density"] * size * size)
    colors = np.asarray(p["stroke_colors"], np.float64)
    lo, hi = p["stroke_length"]
    for _ in range(n_strokes):
        x, y = rng.integers(0, size, 2)
        length = rng.integers(lo, hi + 1)
        dx = int(rng.integers(-1, 2))
        color = colors[rng.integers(len(colors))] + rng.normal(0, 8, 3)
        cv2.line(img, (int(x), int(y)), (int(x) + dx, int(y) - int(length)), color.tolist(), 1)
    return img


def waves(rng: np.random.Generator, size: int, p: dict[str, Any]) -> np.ndarray:
    """Horizontal bands of light and dark blue that wobble sideways, like ripples."""
    period = rng.uniform(*p["period"]) * size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 2)
    wobble = p["wobble"] * np.sin(2 * np.pi * x / (2.5 * period) + phase[0])
    t = 0.5 + 0.5 * np.sin(2 * np.pi * (y / period + wobble) + phase[1])
    t = t ** 3  # thin bright crests
    base, light = np.asarray(p["base"], np.float32), np.asarray(p["light"], np.float32)
    img = base + t[..., None] * (light - base)
    return img + rng.normal(0.0, p["noise"], (size, size, 1))


def speckle(rng: np.random.Generator, size: int, p: dict[str, Any]) -> np.ndarray:
    """Fine grain noise with scattered darker dots."""
    img = _noisy(rng, size, np.asarray(p["base"], np.float32), p["noise"])
    dots = rng.random((size, size)) < p["dot_density"]
    img[dots] = np.asarray(p["dot_color"], np.float32) + rng.normal(0, 10, (int(dots.sum()), 3))
    return img


def bricks(rng: np.random.Generator, size: int, p: dict[str, Any]) -> np.ndarray:
    """Courses of bricks (each with its own shade) separated by one-pixel mortar lines."""
    row_h = max(3, int(round(p["row_height"] * size)))
    brick_w = 2 * row_h
    img = np.empty((size, size, 3), np.float32)
    img[:] = p["mortar"]
    brick = np.asarray(p["brick"], np.float32)
    y0 = -int(rng.integers(0, row_h))
    row = 0
    while y0 < size:
        x0 = -int(rng.integers(0, brick_w)) - (brick_w // 2 if row % 2 else 0)
        while x0 < size:
            shade = brick + rng.uniform(-p["brick_jitter"], p["brick_jitter"], 3)
            ys, ye = max(y0, 0), min(y0 + row_h - 1, size)
            xs, xe = max(x0, 0), min(x0 + brick_w - 1, size)
            if ye > ys and xe > xs:
                img[ys:ye, xs:xe] = shade
            x0 += brick_w
        y0 += row_h
        row += 1
    return img + rng.normal(0.0, p["noise"], (size, size, 1))


def grain(rng: np.random.Generator, size: int, p: dict[str, Any]) -> np.ndarray:
    """Wood grain: dark wavy stripes along the planks' direction."""
    period = rng.uniform(*p["period"]) * size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < 0.5:
        x, y = y, x
    phase = rng.uniform(0, 2 * np.pi, 2)
    wobble = p["wobble"] * np.sin(2 * np.pi * y / (4 * period) + phase[0])
    t = (0.5 + 0.5 * np.sin(2 * np.pi * (x / period + wobble) + phase[1])) ** 4
    base, dark = np.asarray(p["base"], np.float32), np.asarray(p["dark"], np.float32)
    img = base + t[..., None] * (dark - base)
    return img + rng.normal(0.0, p["noise"], (size, size, 1))


TEXTURES: dict[str, Texture] = {
    "grass": grass,
    "waves": waves,
    "speckle": speckle,
    "bricks": bricks,
    "grain": grain,
}


def render_texture(name: str, rng: np.random.Generator, size: int, params: dict[str, Any]) -> np.ndarray:
    """Render texture ``name`` as a (size, size, 3) float32 image (values roughly 0-255, unclipped).

    Raises:
        ValueError: unknown texture name.
    """
    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; known: {sorted(TEXTURES)}")
    return TEXTURES[name](rng, size, params).astype(np.float32)
