"""3-D from a depth image registered to the colour image: points, per-region boxes and a labelled cloud (no ROS).

The depth image and its camera info arrive as objects (or dicts) with the fields of sensor_msgs/Image and
sensor_msgs/CameraInfo, so everything here is tested without rclpy. Depth is read on a grid of every
``stride``-th pixel in each direction (the node's ``point_decimation``), which bounds the cost per frame; the
boxes and the cloud are computed from that grid.

Coordinates are the depth image's optical frame (REP-103 camera optical: x right, y down, z forward), in
metres, through the pinhole model of the camera info's K; the image is taken as rectified (registered depth
from RGB-D drivers is), so the distortion coefficients are not applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from synseg_ros.regions import LabelRegions

__all__ = ["DepthError", "PinholeCamera", "PointGrid", "Box3D", "DEPTH_ENCODINGS", "point_grid", "region_boxes",
           "labelled_points", "CLOUD_DTYPE"]

# Millimetres in 16-bit images (REP-118; "mono16" is what some drivers call the same), metres in float ones.
_MILLIMETRE = 0.001
DEPTH_ENCODINGS = {"16UC1": ("u2", _MILLIMETRE), "mono16": ("u2", _MILLIMETRE), "32FC1": ("f4", 1.0)}
# Tukey's fences: a point beyond 1.5 interquartile ranges of the quartiles, on any axis, is an outlier
# (a pixel of the background at the mask's edge, a flying pixel); the extent is that of the other points.
_FENCE = 1.5
# A region's median is exact, yet for a large region not found among all its points (a wall's ~17,000 at the
# default decimation, where a sort, or a selection of the three quartiles, takes ~0.3 ms an axis, and a frame
# can have several walls): a sorted sample of _SAMPLE of them brackets the median's rank, and only the points
# between the bracket's ends (about an eighth) are selected from, or all of them where the sample misses
# (checked, so exact whatever the data). The quartiles, which only set the fences, are the sample's: near a
# fence, a point can count as an outlier where all points' quartiles would keep it, or the other way round.
# Below _SAMPLED_FROM points, where sorting them all is as fast, everything is the points' own. The sample is
# deterministic: the points at a golden-ratio (Weyl) sequence of positions, which spreads over any layout of
# the points (every k-th point aliases with the grid's rows: over rectangles at 2 m, the median of x of such a
# sample was up to 12 cm off that of all points).
_SAMPLE = 1024
_SAMPLED_FROM = 2 * _SAMPLE
_SAMPLE_AT = (np.arange(_SAMPLE) * ((np.sqrt(5.0) - 1.0) / 2.0)) % 1.0          # fractions of a region's points
_BRACKET = 2 * int(np.sqrt(_SAMPLE))     # sample positions each side of the rank's: ~4 standard deviations
# One point of the labelled cloud, as sensor_msgs/PointCloud2 lays it out (little-endian, 16 bytes).
CLOUD_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("label", "<u4")])


class DepthError(ValueError):
    """A depth image or camera info that cannot be used; the message says why."""


def _field(msg: Any, name: str) -> Any:
    return msg[name] if isinstance(msg, dict) else getattr(msg, name)


@dataclass(frozen=True)
class PinholeCamera:
    """The intrinsics of a sensor_msgs/CameraInfo: focal lengths and principal point in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_camera_info(cls, info: Any) -> "PinholeCamera":
        """From a CameraInfo's ``k`` (row-major 3x3); raises ``DepthError`` when it is not a camera matrix."""
        k = np.asarray(_field(info, "k"), dtype=np.float64).ravel()
        if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
            raise DepthError(f"camera info has no usable camera matrix K (fx and fy must be > 0): {k.tolist()}")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]))


@dataclass(frozen=True)
class PointGrid:
    """The back-projected points of every ``stride``-th pixel of a depth image.

    Attributes:
        stride: pixel step in both directions; grid cell (i, j) is the pixel in the middle of the image's cell
            of ``stride`` x ``stride`` pixels, (row, column) = (i, j) * stride + (stride - 1) // 2, so that the
            grid is not shifted towards the image's top left.
        xyz: (3, h, w) float32 metres in the depth image's optical frame (x, y and z planes: each axis
            contiguous, which numpy's sorts and reductions need to be fast), NaN where the depth is invalid.
        valid: (h, w) bool, the depth is valid (finite, > 0 and at most the maximum depth).
    """

    stride: int
    xyz: np.ndarray
    valid: np.ndarray

    def sample(self, image: np.ndarray) -> np.ndarray:
        """The grid's pixels of an image of the depth image's size: (..., H, W) -> a (..., h, w) view."""
        first = (self.stride - 1) // 2
        return image[..., first::self.stride, first::self.stride]


@dataclass(frozen=True)
class Box3D:
    """Where a region of a label's mask is in 3-D.

    Attributes:
        label_index: index of the label in the vocabulary.
        region_id: the region's id in its label's region map.
        center: (3,) metres, the median of the region's valid points on each axis.
        size: (3,) metres, the extent of those points on each axis without their outliers (Tukey's fences; from
            _SAMPLED_FROM points on, with the quartiles of a fixed sample of the points).
        points: how many valid points of the grid the region has.
    """

    label_index: int
    region_id: int
    center: np.ndarray
    size: np.ndarray
    points: int


def point_grid(depth: Any, camera: PinholeCamera, max_depth: float, stride: int,
               expected_size: tuple[int, int] | None = None) -> PointGrid:
    """Back-project every ``stride``-th pixel of a depth image (sensor_msgs/Image fields).

    Args:
        depth: 16UC1 (or mono16) in millimetres, or 32FC1 in metres; 0, NaN, infinities and values beyond
            ``max_depth`` metres are invalid.
        camera: the intrinsics of the depth image.
        max_depth: metres.
        stride: >= 1.
        expected_size: (height, width) the depth image must have (the colour image's), or None.

    Raises:
        DepthError: unsupported encoding, a size other than ``expected_size``, or a data size that does not
            match the declared layout.
    """
    height, width = int(_field(depth, "height")), int(_field(depth, "width"))
    encoding, step = str(_field(depth, "encoding")), int(_field(depth, "step"))
    if encoding not in DEPTH_ENCODINGS:
        raise DepthError(f"unsupported depth encoding {encoding!r} (supported: {', '.join(DEPTH_ENCODINGS)})")
    if expected_size is not None and (height, width) != expected_size:
        raise DepthError(f"depth image is {width}x{height}, the colour image {expected_size[1]}x{expected_size[0]}:"
                         f" the depth must be registered to the colour image (e.g. RealSense's aligned_depth_to_color)")
    kind, scale = DEPTH_ENCODINGS[encoding]
    dtype = np.dtype(kind).newbyteorder(">" if _field(depth, "is_bigendian") else "<")
    data = _field(depth, "data")
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if height <= 0 or width <= 0 or step < width * dtype.itemsize or buffer.size != step * height:
        raise DepthError(f"depth image of {width}x{height} {encoding} with step {step} does not match its "
                         f"{buffer.size} bytes of data")
    first = (stride - 1) // 2            # see PointGrid.stride
    rows = buffer.reshape(height, step)[first::stride, : width * dtype.itemsize]
    raw = np.ascontiguousarray(rows).view(dtype)[:, first::stride]
    z = raw.astype(np.float32) * np.float32(scale)
    with np.errstate(invalid="ignore"):
        valid = (z > 0) & (z <= max_depth)          # False for NaN and infinities too
    z[~valid] = np.nan
    u = np.arange(first, width, stride, dtype=np.float32)
    v = np.arange(first, height, stride, dtype=np.float32)
    xyz = np.empty((3,) + z.shape, np.float32)
    np.multiply(((u - camera.cx) / camera.fx)[None, :], z, out=xyz[0])
    np.multiply(((v - camera.cy) / camera.fy)[:, None], z, out=xyz[1])
    xyz[2] = z
    return PointGrid(stride, xyz, valid)


def region_boxes(grid: PointGrid, labels: Sequence[LabelRegions]) -> list[Box3D]:
    """The centre and robust size of the valid points behind each kept region; regions without any are left out.

    Args:
        grid: from ``point_grid``, of the image the masks were made from.
        labels: from ``regions.find_regions``.
    """
    boxes = []
    for label in labels:
        for region in label.regions:
            inside = label.inside(region.region_id, grid.sample) & grid.valid
            if inside.any():
                points = np.stack([plane[inside] for plane in grid.xyz])
                center, size = _robust_center_size(points)
                boxes.append(Box3D(label.label_index, region.region_id, center, size, points.shape[1]))
    return boxes


def _robust_center_size(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, n) points -> the median on each axis, and the extent of the points inside Tukey's fences."""
    n = rows.shape[1]
    # Axis by axis along contiguous rows: numpy's sorts, selections and reductions there are several times faster
    # than across an (n, 3) array's columns.
    if n < _SAMPLED_FROM:
        ordered = np.sort(rows, axis=1)
        median = ordered[:, n // 2]
    else:
        ordered = np.sort(rows[:, (_SAMPLE_AT * n).astype(np.intp)], axis=1)
        median = np.array([_select(row, n // 2, sample) for row, sample in zip(rows, ordered)])
    q1, q3 = ordered[:, ordered.shape[1] // 4], ordered[:, (3 * ordered.shape[1]) // 4]
    spread = _FENCE * (q3 - q1)
    low, high = q1 - spread, q3 + spread
    least, most = rows.min(axis=1), rows.max(axis=1)
    if np.all(least >= low) and np.all(most <= high):     # no outlier, the usual case: nothing to leave out
        return median.astype(np.float64), (most - least).astype(np.float64)
    inside = ((rows >= low[:, None]) & (rows <= high[:, None])).all(axis=0)
    # Row by row: rows[:, inside] comes out column-major, and reducing it would be as slow again.
    size = [float(values.max() - values.min()) for values in (row[inside] for row in rows)]
    return median.astype(np.float64), np.array(size)


def _select(values: np.ndarray, rank: int, sample: np.ndarray) -> np.float32:
    """The value a sort of ``values`` puts at ``rank``, looked for between two values of ``sample`` (sorted)."""
    at = rank * sample.size // values.size
    low, high = sample[max(at - _BRACKET, 0)], sample[min(at + _BRACKET, sample.size - 1)]
    below = int(np.count_nonzero(values < low))
    if not below <= rank < np.count_nonzero(values <= high):
        return np.partition(values, rank)[rank]         # the sample missed the rank: select from all
    if low == high:                                     # e.g. the depth of a face square to the camera
        return low
    return np.partition(values[(values >= low) & (values <= high)], rank - below)[rank - below]


def labelled_points(grid: PointGrid, label_map: np.ndarray) -> np.ndarray:
    """The valid points of the grid that some mask holds, with the index of their label.

    Args:
        grid: from ``point_grid``.
        label_map: the label image at the grid's pixels ((h, w) uint8: 0 = none, i = label i - 1), i.e.
            ``rendering.label_image`` of the masks and maps sampled by ``grid.sample``.

    Returns:
        (n,) array of ``CLOUD_DTYPE`` in row-major grid order.
    """
    keep = (label_map > 0) & grid.valid
    out = np.empty(int(np.count_nonzero(keep)), CLOUD_DTYPE)
    out["x"], out["y"], out["z"] = (plane[keep] for plane in grid.xyz)
    out["label"] = label_map[keep] - 1
    return out
