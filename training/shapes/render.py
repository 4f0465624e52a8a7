"""Scene sampling and rendering with exact per-pixel ground truth.

Shapes are rasterised without anti-aliasing and composited in order, so the label map records exactly which
class coloured each pixel (the topmost shape, else the stuff under it).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from training.shapes.textures import render_texture
from training.shapes.world import World

_SUBPIXEL_BITS = 4  # cv2 fixed-point precision for polygon vertices
_SHADE_NOISE = 4.0  # per-pixel colour noise on shapes, so they are not perfectly flat


@dataclasses.dataclass
class ShapeSpec:
    """One drawn shape. center/radius in pixels, angle in degrees, rgb 0-255."""

    name: str
    color: str
    rgb: tuple[float, float, float]
    center: tuple[float, float]
    radius: float
    angle: float


@dataclasses.dataclass
class SceneSpec:
    """Everything needed to re-render a scene: stuff classes, their boundary and the shapes (in draw order)."""

    stuff: list[str]
    split_axis: int  # 0: boundary across rows (top/bottom), 1: across columns (left/right)
    split_at: float  # boundary position in pixels
    split_wave: tuple[float, float, float]  # amplitude (px), period (px), phase
    texture_seed: int
    shapes: list[ShapeSpec]


@dataclasses.dataclass
class Scene:
    """A rendered scene. image (H,W,3) uint8 RGB; labels (H,W) uint8 class indices; visible[i] = pixels of
    spec.shapes[i] left visible after occlusion."""

    spec: SceneSpec
    image: np.ndarray
    labels: np.ndarray
    visible: list[int]


def _polygon(name: str, radius: float, world: World) -> np.ndarray:
    """Unrotated outline of a polygonal shape centred at the origin, (V, 2) float."""
    p = world["shape_params"]
    if name == "square":
        h = radius * 0.8  # equal-ish area with the circle's bounding radius
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if name == "triangle":
        ang = np.deg2rad(-90 + 120 * np.arange(3))
        return radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    if name == "star":
        ang = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, radius, radius * p["star_inner"])
        return np.stack([r * np.cos(ang), r * np.sin(ang)], 1)
    if name == "cross":
        a, w = radius, radius * p["cross_arm"]
        return np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w],
                         [-a, w], [-a, -w], [-w, -w]])
    raise ValueError(f"no outline for shape {name!r}")


def shape_mask(shape: ShapeSpec, size: int, world: World) -> np.ndarray:
    """Boolean (size, size) mask of the pixels a shape covers (before occlusion)."""
    canvas = np.zeros((size, size), np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    cx, cy = shape.center
    center = (int(round(cx * scale)), int(round(cy * scale)))
    if shape.name in ("circle", "ring"):
        cv2.circle(canvas, center, int(round(shape.radius * scale)), 1, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        if shape.name == "ring":
            inner = shape.radius * world["shape_params"]["ring_inner"]
            cv2.circle(canvas, center, int(round(inner * scale)), 0, -1, cv2.LINE_8, _SUBPIXEL_BITS)
        return canvas.astype(bool)
    pts = _polygon(shape.name, shape.radius, world)
    t = np.deg2rad(shape.angle)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = pts @ rot.T + np.array([cx, cy])
    cv2.fillPoly(canvas, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return canvas.astype(bool)


def _stuff_region(spec: SceneSpec, size: int) -> np.ndarray:
    """(size, size) int map: 0 where the first stuff class lies, 1 where the second does."""
    if len(spec.stuff) == 1:
        return np.zeros((size, size), np.int64)
    amp, period, phase = spec.split_wave
    along = np.arange(size, dtype=np.float64)
    boundary = spec.split_at + amp * np.sin(2 * np.pi * along / period + phase)
    coord = np.arange(size, dtype=np.float64)[:, None]
    region = (coord >= boundary[None, :]).astype(np.int64)  # rows vs boundary(column)
    return region if spec.split_axis == 0 else region.T


def render_background(spec: SceneSpec, world: World) -> tuple[np.ndarray, np.ndarray]:
    """Stuff textures of a scene: (image float (S,S,3), labels uint8 (S,S))."""
    size = world.image_size
    rng = np.random.default_rng(spec.texture_seed)
    region = _stuff_region(spec, size)
    image = np.zeros((size, size, 3), np.float32)
    labels = np.zeros((size, size), np.uint8)
    for i, name in enumerate(spec.stuff):
        stuff = world["stuff"][name]
        tex = render_texture(stuff["texture"], rng, size, stuff["params"])
        inside = region == i
        image[inside] = tex[inside]
        labels[inside] = world.class_index(name)
    return image, labels


def render(spec: SceneSpec, world: World) -> Scene:
    """Render a scene spec into an image and its exact label map."""
    size = world.image_size
    image, labels = render_background(spec, world)
    rng = np.random.default_rng(spec.texture_seed + 1)
    owner = np.full((size, size), -1, np.int64)
    for i, shape in enumerate(spec.shapes):
        mask = shape_mask(shape, size, world)
        image[mask] = np.asarray(shape.rgb, np.float32) + rng.normal(0, _SHADE_NOISE, (int(mask.sum()), 1))
        labels[mask] = world.class_index(shape.name)
        owner[mask] = i
    visible = [int((owner == i).sum()) for i in range(len(spec.shapes))]
    return Scene(spec, np.clip(np.round(image), 0, 255).astype(np.uint8), labels, visible)


def _sample_background(rng: np.random.Generator, world: World) -> SceneSpec:
    size = world.image_size
    names = world.stuff_names
    if rng.random() < world["split_background_prob"]:
        stuff = [str(s) for s in rng.choice(names, 2, replace=False)]
    else:
        stuff = [str(rng.choice(names))]
    lo = world["split_min_fraction"] * size
    return SceneSpec(
        stuff=stuff,
        split_axis=int(rng.integers(2)),
        split_at=float(rng.uniform(lo, size - lo)),
        split_wave=(float(rng.uniform(0, 0.06 * size)), float(rng.uniform(0.5, 1.5) * size),
                    float(rng.uniform(0, 2 * np.pi))),
        texture_seed=int(rng.integers(2**31)),
        shapes=[],
    )


def _pick_color(rng: np.random.Generator, world: World, under: np.ndarray) -> tuple[str, tuple]:
    """A colour name and jittered RGB far enough from the mean background colour ``under`` (3,)."""
    colors = world["colors"]
    names = [n for n in colors if np.linalg.norm(np.asarray(colors[n]) - under) >= world["min_color_distance"]]
    name = str(rng.choice(names or list(colors)))
    jitter = world["color_jitter"]
    rgb = np.asarray(colors[name], np.float64) + rng.uniform(-jitter, jitter, 3)
    return name, tuple(float(v) for v in np.clip(rgb, 0, 255))


def _count_weights(world: World) -> tuple[list[int], np.ndarray]:
    table = world["shapes_per_image"]
    counts = [int(k) for k in table]
    probs = np.asarray([float(v) for v in table.values()])
    return counts, probs / probs.sum()


def _visible_ok(spec: SceneSpec, world: World) -> bool:
    size = world.image_size
    owner = np.full((size, size), -1, np.int64)
    areas = []
    for i, shape in enumerate(spec.shapes):
        mask = shape_mask(shape, size, world)
        areas.append(int(mask.sum()))
        owner[mask] = i
    return all(area > 0 and (owner == i).sum() >= world["min_visible_fraction"] * area
               for i, area in enumerate(areas))


def _new_shape(rng: np.random.Generator, world: World, radius: float, center: tuple[float, float],
               bg_image: np.ndarray) -> ShapeSpec:
    shape = ShapeSpec(name=str(rng.choice(world.shape_names)), color="", rgb=(0.0, 0.0, 0.0), center=center,
                      radius=radius, angle=float(rng.uniform(-1, 1) * world["shape_params"]["rotation_deg"]))
    mask = shape_mask(shape, world.image_size, world)
    shape.color, shape.rgb = _pick_color(rng, world, bg_image[mask].mean(0))
    return shape


def sample_scene(rng: np.random.Generator, world: World) -> SceneSpec:
    """Draw a random scene: 1 or 2 stuff classes and 1-N shapes in random classes, colours, sizes, places.

    Shapes may overlap; a shape hidden beyond ``min_visible_fraction`` is placed again (up to
    ``placement_tries`` times, then kept as is). A fraction ``closeup.prob`` of scenes are close-ups, the
    object-centred photos of the web: one large shape near the centre.
    """
    size = world.image_size
    spec = _sample_background(rng, world)
    bg_image, _ = render_background(spec, world)
    closeup = world["closeup"]
    if rng.random() < closeup["prob"]:
        radius = float(rng.uniform(*closeup["radius"]) * size)
        center = tuple(float(c) for c in size / 2 + rng.uniform(-1, 1, 2) * closeup["jitter"] * size)
        spec.shapes.append(_new_shape(rng, world, radius, center, bg_image))
        return spec
    counts, probs = _count_weights(world)
    n = int(rng.choice(counts, p=probs))
    rmin, rmax = world["radius"]
    for _ in range(n):
        for _attempt in range(world["placement_tries"]):
            radius = float(rng.uniform(rmin, rmax) * size)
            margin = 0.7 * radius
            center = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
            spec.shapes.append(_new_shape(rng, world, radius, center, bg_image))
            if _visible_ok(spec, world):
                break
            if _attempt < world["placement_tries"] - 1:
                spec.shapes.pop()
    return spec


def hard_negatives(rng: np.random.Generator, spec: SceneSpec, world: World, count: int) -> list[SceneSpec]:
    """``count`` variants of ``spec`` with the same background, colours, sizes and places but other shapes.

    Every variant differs from the original and from each other in at least one shape's class, so a caption
    can only tell them apart by naming shapes.
    """
    seen = {tuple(s.name for s in spec.shapes)}
    variants = []
    for _ in range(count * world["placement_tries"]):
        if len(variants) == count:
            break
        names = tuple(str(rng.choice([n for n in world.shape_names if n != s.name])) if rng.random() < 0.75
                      else s.name for s in spec.shapes)
        if names in seen:
            continue
        seen.add(names)
        shapes = [dataclasses.replace(s, name=n) for s, n in zip(spec.shapes, names)]
        variants.append(dataclasses.replace(spec, shapes=shapes))
    return variants
