"""The synseg node with the real offline default model: its masks overlap the true shapes (an IoU bound).

Scenes come from the shapes-world generator (ground truth per pixel); the node runs in its own process on
CPU with `Segmenter.from_checkpoint(None)`, exactly as `ros2 run synseg_ros synseg_node` would.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from synseg_model import default_checkpoint_path
from tests.ros_helpers import Probe, image_msg, mask_array, stop_node
from tests.ros_processes import start_node

pytestmark = pytest.mark.ros

SCENES = 12
SEED = 7
# Classes covering less of an image than this are too small to score reliably at 64 px.
MIN_CLASS_FRACTION = 0.02
# Scored: the classes the default model was trained densely on (its model card's `seen_in_stage2`); on the
# others it is near chance (README, "Shapes world"), which would test the model, not the node. The masks
# must overlap the truth clearly better than whole-image masks do; MEASURED_IOU is what this test measured
# with the committed model, and the bound sits a margin below it, so that it tests the node's path
# (conversion, model, thresholding, messages), not the model's edge.
MEASURED_IOU = 0.76    # 0.758 over 14 class instances (whole-image masks: 0.367), 12 scenes
MIN_MEAN_IOU = MEASURED_IOU - 0.1
MIN_GAIN_OVER_WHOLE_IMAGE = 0.1
MODEL_STARTUP_S = 90.0      # torch import and model load on a busy 2-core machine


@pytest.mark.slow
@pytest.mark.skipif(not default_checkpoint_path().exists(),
                    reason=f"the offline default model {default_checkpoint_path()} is not trained yet (issue 7)")
def test_default_model_masks_overlap_the_true_shapes(ros_context, tmp_path):
    from synseg_model import load_checkpoint
    from synseg_ros.msg import SegmentationMasks
    from training.shapes.generate import generate

    scored = set(load_checkpoint(default_checkpoint_path()).model_card["seen_in_stage2"])

    generate(tmp_path / "scenes", train=0, val=SCENES, seed=SEED)
    val = tmp_path / "scenes" / "val"
    classes = (val / "classes.txt").read_text().split()
    names = (val / "ImageSets" / "Segmentation" / "val.txt").read_text().split()

    proc = start_node("synseg_ros.node", ["--ros-args", "-r", "image:=/iou/image_raw", "-p", "device:=cpu",
                                          "-p", "autostart:=true", "-p", f"vocabulary:=[{', '.join(classes)}]"],
                      tmp_path / "node.log")
    probe = Probe("probe_iou", "/iou/image_raw", {"/synseg/masks": SegmentationMasks})
    ious, chance = [], []
    try:
        probe.wait_for_node(timeout=MODEL_STARTUP_S)
        for name in names:
            rgb = np.asarray(PILImage.open(val / "JPEGImages" / f"{name}.jpg").convert("RGB"))
            truth = np.asarray(PILImage.open(val / "SegmentationClass" / f"{name}.png"))
            sent = {}

            def make():
                sent["stamp"] = probe.now()
                return image_msg(rgb, "rgb8", sent["stamp"])

            out = probe.publish_until(
                make, lambda: [m for m in probe.messages("/synseg/masks") if m.header.stamp == sent["stamp"]],
                what=f"masks for {name}")[0]
            assert list(out.labels) == classes
            for index, label in enumerate(classes):
                gt = truth == index
                if label not in scored or gt.mean() < MIN_CLASS_FRACTION:
                    continue
                pred = mask_array(out.masks[index]) > 0
                ious.append((pred & gt).sum() / max(1, (pred | gt).sum()))
                chance.append(gt.mean())          # IoU of a mask covering the whole image
    finally:
        probe.close()
        stop_node(proc)
        print((tmp_path / "node.log").read_text())
    print(f"mean IoU {np.mean(ious):.3f} over {len(ious)} class instances (whole-image masks: {np.mean(chance):.3f})")
    assert np.mean(ious) >= MIN_MEAN_IOU
    assert np.mean(ious) >= np.mean(chance) + MIN_GAIN_OVER_WHOLE_IMAGE
