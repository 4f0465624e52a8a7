#!/usr/bin/env python3
"""Render the node's 3-D output for the synthetic RGB-D test scene (tests/depth_scene.py) into a PNG for the docs.

The scene goes through the same code as the node's (the fake model, regions, depth, the detections' boxes):
left, the colour image with each detection's 2-D box; right, the labelled points (~/points) coloured by
label, seen from above the camera, with each region's 3-D box (~/detections_3d: centre and size).

    .venv/bin/python scripts/render_depth_picture.py --out docs/depth_3d.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synseg_ros import conversions, depth, regions, rendering  # noqa: E402
from synseg_ros.segmenter import FakeSegmenter  # noqa: E402
from tests import depth_scene as scene  # noqa: E402

MAX_DEPTH_M = 5.0
MIN_REGION_PIXELS = 100


def box_edges(center: np.ndarray, size: np.ndarray) -> list[np.ndarray]:
    """The 12 edges of an axis-aligned box, each a (2, 3) array."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) * size + center
    return [corners[[i, j]] for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]


def render(out: Path, stride: int) -> None:
    """Segment the scene, compute its 3-D output and write the figure to ``out``."""
    fake = FakeSegmenter({"threshold": 0.5})
    fake.set_vocabulary(scene.LABELS)
    rgb = scene.colour()
    result = fake.segment(rgb)
    masks = conversions.MaskBuffers().fill(result.probabilities, 0.5, result.present)
    found = regions.find_regions(masks, MIN_REGION_PIXELS)
    camera = depth.PinholeCamera.from_camera_info({"k": scene.camera_matrix()})
    grid = depth.point_grid(scene.depth_fields("16UC1"), camera, MAX_DEPTH_M, stride)
    boxes = depth.region_boxes(grid, found)
    label_map = rendering.label_image(grid.sample(result.probabilities), [grid.sample(m) for m in masks])
    points = depth.labelled_points(grid, label_map)
    colours = np.array([rendering.label_color(label) for label in scene.LABELS]) / 255.0

    figure = plt.figure(figsize=(11, 4.6), dpi=110)
    left = figure.add_subplot(1, 2, 1)
    left.imshow(rgb)
    for label in found:
        for region in label.regions:
            x, y, w, h = region.box
            colour = colours[label.label_index]
            left.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor=colour, linewidth=2))
            left.text(x + 4, y + 16, scene.LABELS[label.label_index], color=colour, fontsize=10,
                      bbox={"facecolor": "black", "alpha": 0.6, "pad": 1})
    left.set_title("colour image and ~/detections (2-D boxes)")
    left.axis("off")

    right = figure.add_subplot(1, 2, 2, projection="3d")
    keep = np.arange(len(points)) % 3 == 0            # a third of the points keeps the figure readable
    # Optical frame (x right, y down, z forward) drawn as x right, z into the picture, -y up.
    right.scatter(points["x"][keep], points["z"][keep], -points["y"][keep], s=0.4, c=colours[points["label"][keep]],
                  depthshade=False)
    for item in boxes:
        colour = colours[item.label_index]
        for edge in box_edges(item.center, np.maximum(item.size, 0.02)):
            right.plot(edge[:, 0], edge[:, 2], -edge[:, 1], color="black", linewidth=1.2)
        right.text(item.center[0], item.center[2], -item.center[1] + item.size[1] / 2 + 0.08,
                   f"{scene.LABELS[item.label_index]}: z {item.center[2]:.2f} m", color=colour, fontsize=9)
    right.scatter([0], [0], [0], marker="^", s=40, color="black")
    right.text(0, 0, -0.15, "camera", fontsize=8)
    right.set_xlabel("x (m)")
    right.set_ylabel("z, forward (m)")
    right.set_zlabel("-y, up (m)")
    span = [np.ptp(np.append(points[axis], 0.0)) for axis in ("x", "z", "y")]
    right.set_box_aspect(span)                          # metres the same on every axis
    right.view_init(elev=28, azim=-62)
    right.set_title("~/points by label and ~/detections_3d (centre, size)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    print(f"wrote {out}: {len(points)} points, " + ", ".join(
        f"{scene.LABELS[b.label_index]} centre {np.round(b.center, 3).tolist()} size {np.round(b.size, 3).tolist()}"
        for b in boxes))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "depth_3d.png")
    parser.add_argument("--stride", type=int, default=4, help="point_decimation of the picture's points")
    args = parser.parse_args(argv)
    render(args.out, args.stride)
    return 0


if __name__ == "__main__":
    sys.exit(main())
