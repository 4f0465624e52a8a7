"""The synseg node with the real offline default model: its masks overlap the true shapes (an IoU bound),
absent classes and a black frame get none, and a word the model never met is warned about once.

Scenes come from the shapes-world generator (ground truth per pixel); the node runs in its own process on
CPU with `Segmenter.from_checkpoint(None)`, exactly as `ros2 run synseg_ros synseg_node` would.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image as PILImage

from synseg_model import default_checkpoint_path
from tests.ros_helpers import Probe, image_msg, mask_array, stop_node
from tests.ros_processes import MODEL_STARTUP_S, start_node

pytestmark = pytest.mark.ros

SCENES = 12
SEED = 7
# Classes covering less of an image than this are too small to score reliably at 64 px.
MIN_CLASS_FRACTION = 0.02
# Scored apart: the classes the default model was trained densely on (its model card's `seen_in_stage2`) and
# those it learnt from captions alone (docs/shapes.md). MEASURED_IOU is what this test measured with
# the committed model, and the bounds sit a margin below it, so that it tests the node's path (conversion,
# model, thresholding, messages), not the model's edge. The seen classes' masks must also overlap the truth
# clearly better than whole-image masks do. The unseen ones do not beat them on these scenes (0.309 against
# 0.343): whole-image masks of a background score high, and the card's presence threshold leaves about a sixth
# of the caption-only labels that are there without a mask (docs/shapes.md, "What a robot receives"). Their
# bound alone still fails a model that never learnt them (the stage-2 model's masks: 0.0 on them).
MEASURED_IOU = {"seen": 0.698, "unseen": 0.309}
MARGIN = 0.1
# Presence before pixels, through the node with the model card's mask rule: a world class absent from a scene
# (no pixel of it) gets a mask over 1% of the frame in at most this share of such (scene, class) pairs
# (MEASURED_ABSENT with the committed model, plus a margin), and a black frame gets no mask at all.
MEASURED_ABSENT = 0.020
MAX_ABSENT = MEASURED_ABSENT + 0.05
MIN_GAIN_OVER_WHOLE_IMAGE = 0.1


@pytest.mark.slow
@pytest.mark.skipif(not default_checkpoint_path().exists(),
                    reason=f"the offline default model {default_checkpoint_path()} is not trained yet (make shapes)")
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
    ious, chance = {"seen": [], "unseen": []}, {"seen": [], "unseen": []}
    absent, absent_scores = [], []
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
                if not gt.any():
                    absent.append((mask_array(out.masks[index]) > 0).mean() > 0.01)
                    absent_scores.append(out.scores[index])
                if gt.mean() < MIN_CLASS_FRACTION:
                    continue
                group = "seen" if label in scored else "unseen"
                pred = mask_array(out.masks[index]) > 0
                ious[group].append((pred & gt).sum() / max(1, (pred | gt).sum()))
                chance[group].append(gt.mean())          # IoU of a mask covering the whole image
        black = {}

        def make_black():
            black["stamp"] = probe.now()
            return image_msg(np.zeros((64, 64, 3), np.uint8), "rgb8", black["stamp"])

        out = probe.publish_until(
            make_black, lambda: [m for m in probe.messages("/synseg/masks") if m.header.stamp == black["stamp"]],
            what="masks for a black frame")[0]
        black_masks = [mask_array(m).any() for m in out.masks]
        black_scores = list(out.scores)
        for labels in (["person", "circle"], ["chair", "person"]):      # a word the model never met: said once
            assert probe.set_parameter("vocabulary", labels).successful
    finally:
        probe.close()
        stop_node(proc)
        print((tmp_path / "node.log").read_text())
    log = (tmp_path / "node.log").read_text()
    warned = re.findall(r"Label '(\w+)' is not one of the 11 classes this model knows", log)
    assert warned == ["person", "chair"]
    rule = load_checkpoint(default_checkpoint_path()).model_card["mask_rule"]
    print(f"absent classes: mask over 1% in {np.mean(absent):.3f} of {len(absent)} pairs; scores "
          f"{np.mean(absent_scores):.3f} (rule {rule}); black frame: masks {black_masks}, scores {black_scores}")
    assert np.mean(absent) <= MAX_ABSENT
    assert not any(black_masks) and max(black_scores) < rule["presence_threshold"]
    for group in ious:
        print(f"{group} classes: mean IoU {np.mean(ious[group]):.3f} over {len(ious[group])} class instances "
              f"(whole-image masks: {np.mean(chance[group]):.3f})")
        assert np.mean(ious[group]) >= MEASURED_IOU[group] - MARGIN, group
    assert np.mean(ious["seen"]) >= np.mean(chance["seen"]) + MIN_GAIN_OVER_WHOLE_IMAGE
