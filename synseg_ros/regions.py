"""Connected regions of a label's mask: what becomes one detection (no ROS).

A label's mask can hold several objects (two chairs); a robot acts on each, so each 8-connected region of a
mask larger than a minimum becomes its own detection with its bounding box.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

__all__ = ["Region", "LabelRegions", "find_regions"]

# 16-bit region ids halve the label map's memory and make OpenCV's labelling faster than 32-bit ones; a mask
# with more regions than 16 bits can count (isolated pixels) takes 32 bits.
_FAST_LABEL_TYPE = cv2.CV_16U
_WIDE_LABEL_TYPE = cv2.CV_32S
_FAST_LABEL_LIMIT = np.iinfo(np.uint16).max          # most regions: their ids 1 .. count
_CONNECTIVITY = 8
# A mask's outer contours come first: findContours traces the 8-connected regions, as the labelling, and takes a
# quarter of its time or less (0.06 against 0.27 ms for a 640x480 mask of one region; in the loop over a frame's
# masks, the labelling's fresh label maps cost it 0.4-0.9 ms a mask). A mask of one region, the common case,
# then needs no labelling at all: its size is the mask's count and its box that of its contour. Only masks of
# several regions are labelled, for the regions' sizes and ids; their boxes still come from the contours (OpenCV's
# labelling with statistics accumulates sums for centroids over every pixel: several times the labelling itself).
_OUTER = -1          # findContours' hierarchy: no parent, i.e. the outer boundary of a region


@dataclass(frozen=True)
class Region:
    """One connected region of a label's mask.

    Attributes:
        label_index: index of the label in the vocabulary (and in the masks).
        region_id: the region's value in ``LabelRegions.region_map`` of its label.
        pixels: number of pixels in the region.
        box: (x, y, width, height) in pixels: columns x .. x + width - 1, rows y .. y + height - 1.
    """

    label_index: int
    region_id: int
    pixels: int
    box: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """The box's centre in pixel coordinates where pixel (u, v) covers [u, u + 1) x [v, v + 1)."""
        x, y, width, height = self.box
        return x + width / 2.0, y + height / 2.0


@dataclass(frozen=True)
class LabelRegions:
    """The kept regions of one label and where each of its mask's regions is.

    Attributes:
        label_index: index of the label.
        regions: regions of at least the minimum size, largest first.
        mask: the label's (H, W) mask as passed to ``find_regions`` (the caller's array, not a copy; a bool mask
            as a uint8 view).
        region_map: (H, W) uint16 or int32: 0 outside the mask, else the id of the pixel's region (kept or not);
            None where the mask is one region (region 1: every non-zero pixel of ``mask``), which is not labelled.
    """

    label_index: int
    regions: list[Region]
    mask: np.ndarray
    region_map: np.ndarray | None

    def inside(self, region_id: int, view: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Bool: where region ``region_id`` is, on ``view`` of an (H, W) image (e.g. ``PointGrid.sample``)."""
        if self.region_map is None:
            return view(self.mask) != 0
        return view(self.region_map) == region_id


def find_regions(masks: Sequence[np.ndarray], min_pixels: int) -> list[LabelRegions]:
    """The 8-connected regions of each mask with at least ``min_pixels`` pixels.

    Args:
        masks: K (H, W) uint8 masks (non-zero = inside) or bool masks.
        min_pixels: smallest region kept (>= 1).

    Returns:
        One ``LabelRegions`` per label that has at least one kept region, in label order.
    """
    out = []
    for index, mask in enumerate(masks):
        mask = mask.view(np.uint8) if mask.dtype == np.bool_ else mask
        pixels = cv2.countNonZero(mask)
        if pixels < min_pixels:         # most labels are absent from most frames: no region can be kept
            continue
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        # One per region; holes have a parent, and a region inside a hole is at the top level again.
        outer = [contours[i] for i in np.flatnonzero(hierarchy[0, :, 3] == _OUTER)]
        if len(outer) == 1:
            out.append(LabelRegions(index, [Region(index, 1, pixels, _box(outer[0]))], mask, None))
            continue
        found = _labelled_regions(index, mask, outer, min_pixels)
        if found.regions:
            out.append(found)
    return out


def _labelled_regions(index: int, mask: np.ndarray, outer: list[np.ndarray], min_pixels: int) -> LabelRegions:
    """Label ``mask``, whose regions' outer contours are ``outer``, and keep its regions of at least ``min_pixels``
    pixels."""
    label_type = _FAST_LABEL_TYPE if len(outer) <= _FAST_LABEL_LIMIT else _WIDE_LABEL_TYPE
    _, region_map = cv2.connectedComponentsWithAlgorithm(mask, _CONNECTIVITY, label_type, cv2.CCL_DEFAULT)
    sizes = np.bincount(region_map.ravel(), minlength=len(outer) + 1)
    starts = np.array([contour[0, 0] for contour in outer])           # (x, y): a pixel of each region
    ids = region_map[starts[:, 1], starts[:, 0]]
    kept = np.flatnonzero(sizes[ids] >= min_pixels)
    kept = kept[np.lexsort((ids[kept], -sizes[ids[kept]]))]          # largest first, then by id
    regions = [Region(index, int(ids[i]), int(sizes[ids[i]]), _box(outer[i])) for i in kept]
    return LabelRegions(index, regions, mask, region_map)


def _box(contour: np.ndarray) -> tuple[int, int, int, int]:
    x, y, width, height = cv2.boundingRect(contour)
    return int(x), int(y), int(width), int(height)
