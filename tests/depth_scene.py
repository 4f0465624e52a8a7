"""A synthetic RGB-D frame of known geometry: a wall (plane) at 2.0 m and a box's front face at 1.0 m before it.

The colours suit the fake segmenter (label i's map is colour channel i % 3): labels ``["box", "wall"]`` give the
box as the red channel's mask and the wall as the green one's. The principal point is off the image centre,
so a back-projection that ignores it misses every centre. Used by the depth and detection tests, the
docs' picture (scripts/render_depth_picture.py) and the latency benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT = 640, 480
FX, FY, CX, CY = 525.0, 525.0, 300.0, 250.0
LABELS = ["box", "wall"]
WALL_Z, BOX_Z = 2.0, 1.0
# The box's pixels: columns and rows, each range centred on the image centre (319.5, 239.5).
BOX_COLUMNS = (215, 425)
BOX_ROWS = (160, 320)


@dataclass(frozen=True)
class Truth:
    """A region's true centre and size in metres (camera optical frame), from the scene's geometry."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]


def camera_matrix() -> list[float]:
    """The row-major K of the scene's camera (sensor_msgs/CameraInfo.k)."""
    return [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]


def colour() -> np.ndarray:
    """(H, W, 3) uint8 RGB: the wall green, the box red."""
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[..., 1] = 255
    rgb[BOX_ROWS[0]:BOX_ROWS[1], BOX_COLUMNS[0]:BOX_COLUMNS[1]] = (255, 0, 0)
    return rgb


def depth_metres() -> np.ndarray:
    """(H, W) float32 depth in metres."""
    z = np.full((HEIGHT, WIDTH), WALL_Z, np.float32)
    z[BOX_ROWS[0]:BOX_ROWS[1], BOX_COLUMNS[0]:BOX_COLUMNS[1]] = BOX_Z
    return z


def depth_fields(encoding: str, z: np.ndarray | None = None) -> dict:
    """sensor_msgs/Image fields of the depth (or of ``z``): 16UC1 in millimetres or 32FC1 in metres; NaN
    becomes 0 in 16UC1 (its "no measurement")."""
    z = depth_metres() if z is None else z
    if encoding == "16UC1":
        values = np.nan_to_num(z * 1000.0, nan=0.0, posinf=65535.0).round().clip(0, 65535).astype("<u2")
    else:
        values = z.astype("<f4")
    height, width = z.shape
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
            "step": width * values.itemsize, "data": values.tobytes()}


def truth() -> dict[str, Truth]:
    """Each label's region: centre = the median of its points (symmetric about the image centre, so the point
    behind the image centre); size = its extent, pixel edge to pixel edge (a flat face has no depth)."""
    u0, v0 = (WIDTH - 1) / 2.0, (HEIGHT - 1) / 2.0

    def centre(z: float) -> tuple[float, float, float]:
        return (u0 - CX) * z / FX, (v0 - CY) * z / FY, z

    box = ((BOX_COLUMNS[1] - BOX_COLUMNS[0]) * BOX_Z / FX, (BOX_ROWS[1] - BOX_ROWS[0]) * BOX_Z / FY, 0.0)
    wall = (WIDTH * WALL_Z / FX, HEIGHT * WALL_Z / FY, 0.0)
    return {"box": Truth(centre(BOX_Z), box), "wall": Truth(centre(WALL_Z), wall)}
