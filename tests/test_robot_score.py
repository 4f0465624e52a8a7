"""What a robot receives: the presence rule, its scoring on a shapes split and its calibration on dev."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from synseg_model import MaskRule, Segmenter, SynSeg
from training.config import ConfigError
from training.shapes import calibrate, robot
from training.shapes.generate import generate
from training.shapes.world import load_world

SEEN = {"grass", "sand", "brick", "circle", "square", "star"}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("robot")
    generate(out, train=0, val=16, seed=7)
    return out / "val"


@pytest.fixture(scope="module")
def shipped():
    return SynSeg.from_checkpoint(None)


@pytest.fixture(scope="module")
def maps(shipped, split):
    return robot.compute_maps(shipped, split, robot.Probes(("dog", "car"), ("black", "uniform_noise"), 0.01), SEEN)


def test_robot_figures_are_what_the_node_publishes(shipped, split, maps):
    """Every figure, recomputed image by image through the node's own class (Segmenter.segment)."""
    rule = MaskRule(0.6, 0.8, 0.05)
    figures = robot.robot_figures(maps, rule)
    seg = Segmenter(shipped, device="cpu", backend="torch", threshold=rule.threshold,
                    presence_threshold=rule.presence_threshold)
    seg.mask_rule = rule
    names = maps.names
    keys = (split / "ImageSets/Segmentation/val.txt").read_text().split()
    inter, pred, true, pred_on, absent, absent_hit = (np.zeros(len(names)) for _ in range(6))
    word_hits, frame_largest, positives, negatives = np.zeros(2), {}, [], []
    for key in keys:
        rgb = np.array(Image.open(split / "JPEGImages" / f"{key}.jpg").convert("RGB"))
        truth = np.asarray(Image.open(split / "SegmentationClass" / f"{key}.png"))
        seg.set_vocabulary(names)
        out = seg.segment(rgb)
        masks = out.masks
        holds = np.array([(truth == k).any() for k in range(len(names))])
        positives.append(out.scores[holds])
        negatives.append(out.scores[~holds])
        for k in range(len(names)):
            inside = truth == k
            inter[k] += (masks[k] & inside).sum()
            pred[k] += masks[k].sum()
            true[k] += inside.sum()
            pred_on[k] += masks[k].sum() if inside.any() else 0
            if not inside.any():
                absent[k] += 1
                absent_hit[k] += masks[k].mean() > 0.01
        seg.set_vocabulary(["dog", "car"])
        word_hits += seg.segment(rgb).masks.mean((1, 2)) > 0.01
    seg.set_vocabulary(names)
    for frame in ("black", "uniform_noise"):
        frame_largest[frame] = 100 * seg.segment(robot.probe_frame(frame, 64)).masks.mean((1, 2)).max()
    for k, name in enumerate(names):
        row = figures["per_class"][name]
        if true[k]:
            assert row["iou"] == pytest.approx(100 * inter[k] / (pred[k] + true[k] - inter[k]), abs=1e-6)
            assert row["recall"] == pytest.approx(100 * inter[k] / true[k], abs=1e-6)
            assert row["area_ratio"] == pytest.approx(pred_on[k] / true[k], abs=1e-6)
        if pred[k]:
            assert row["precision"] == pytest.approx(100 * inter[k] / pred[k], abs=1e-6)
        if absent[k]:
            assert row["absent_rate"] == pytest.approx(100 * absent_hit[k] / absent[k], abs=1e-6)
    pos, neg = np.concatenate(positives), np.concatenate(negatives)
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert figures["presence_auc"] == pytest.approx(pairs, abs=1e-6)
    assert list(figures["words"].values()) == pytest.approx(list(100 * word_hits / len(keys)), abs=1e-6)
    for frame, largest in frame_largest.items():
        assert figures["frames"][frame]["largest"] == pytest.approx(largest, abs=1e-6)
    assert figures["iou_seen"] == pytest.approx(np.mean([figures["per_class"][n]["iou"] for n in names
                                                         if n in SEEN and figures["per_class"][n]["iou"] is not None]))


def test_spill_is_the_mask_off_the_object_near_it_and_beyond(maps):
    """Against a direct computation with OpenCV's dilation, scene by scene; the shares add up to the area ratio."""
    rule = MaskRule(0.3, 0.0, 0.05)
    spill = robot.spill_figures(maps, rule)
    figures = robot.robot_figures(maps, rule)
    masks = (maps.scenes > rule.threshold).numpy()
    truth = maps.truth.numpy()
    checked = 0
    for k, name in enumerate(maps.names):
        ring = beyond = true = 0
        on = np.zeros(len(maps.names))
        for i in range(len(truth)):
            inside = truth[i] == k
            if not inside.any():
                continue
            near = cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            wrong = masks[i, k] & ~inside & (truth[i] != 255)
            ring += (wrong & near).sum()
            beyond += (wrong & ~near).sum()
            np.add.at(on, truth[i][wrong & ~near], 1)
            true += inside.sum()
        if not true:
            assert name not in spill
            continue
        checked += 1
        assert spill[name]["ring"] == pytest.approx(ring / true)
        assert spill[name]["beyond"] == pytest.approx(beyond / true)
        assert spill[name]["beyond_on"] == pytest.approx({maps.names[j]: on[j] / true for j in np.flatnonzero(on)})
        recall = figures["per_class"][name]["recall"] / 100
        assert recall + spill[name]["ring"] + spill[name]["beyond"] == pytest.approx(
            figures["per_class"][name]["area_ratio"])
    assert checked >= 8


def test_auc_counts_ties_half():
    assert robot.auc(torch.tensor([0.9, 0.5]), torch.tensor([0.5, 0.1])) == 0.875   # (1 + 1 + 0.5 + 1) / 4
    assert robot.auc(torch.tensor([0.9]), torch.tensor([])) is None


def test_captions_name_the_classes_the_training_reads_from_them(split, maps):
    captions = json.loads((split / "captions.json").read_text())
    key = sorted(captions)[0]
    world = load_world()
    named = {maps.names[k] for k in torch.nonzero(maps.named[0]).flatten().tolist()}
    assert named and all(any(w in captions[key].lower() for w in [n, *world.spec["stuff"].get(n, {}).get("words", [])])
                         for n in named), (captions[key], named)


def test_calibration_keeps_the_bounds_it_can_and_sets_aside_the_one_it_cannot():
    """Hand-made maps: at 0.5 the words get masks, at 0.9 not; the frames get a mask under both rules."""
    n, size = 4, 8
    truth = torch.zeros(n, size, size, dtype=torch.long)
    truth[:, :4] = 1                                                    # class b on the top half
    scenes = torch.zeros(n, 2, size, size)
    scenes[:, 0] = 0.95                                                 # class a everywhere, sure
    scenes[:, 1, :4] = 0.95
    scenes[:, 1, 4:] = 0.7                                              # class b spills at 0.5, not at 0.9
    maps = robot.RobotMaps(
        names=["a", "b"], seen=frozenset({"a", "b"}), truth=truth, scenes=scenes,
        words=torch.full((n, 1, size, size), 0.7), frames=torch.full((1, 2, size, size), 0.97),
        named=torch.ones(n, 2, dtype=torch.bool), probes=robot.Probes(("w",), ("black",), 0.05))
    choice = calibrate.calibrate(maps, [MaskRule(0.5), MaskRule(0.9)])
    assert choice["unmet"] == ["frames"] and choice["admissible"] == 1
    assert choice["rule"] == MaskRule(0.9)
    assert choice["figures"]["word_rate"] == 0 and choice["figures"]["iou_seen"] == pytest.approx(100 * 0.75)


@pytest.mark.slow
def test_score_and_calibrate_commands(split, tmp_path, capsys):
    from training.shapes.__main__ import main

    main(["score", "--split", str(split), "--json", str(tmp_path / "f.json"), "--threshold", "0.7"])
    out = capsys.readouterr().out
    assert "| **mean, seen** |" in out and "rule: threshold 0.7" in out and "where the masks spill" in out
    written = json.loads((tmp_path / "f.json").read_text())
    assert written["rule"]["threshold"] == 0.7 and set(written["spill"]) <= set(written["per_class"])
    main(["calibrate", "--split", str(split), "--write", str(tmp_path / "m.safetensors")])
    card = SynSeg.from_checkpoint(tmp_path / "m.safetensors").model_card
    assert card["mask_rule_choice"]["probes"] == "dev"
    assert Segmenter.from_checkpoint(tmp_path / "m.safetensors", device="cpu").mask_rule == \
        MaskRule(**card["mask_rule"])
    with pytest.raises(SystemExit, match="presence_threshold must be in"):
        main(["score", "--split", str(split), "--presence-threshold", "2"])


def test_the_probes_are_outside_the_world_and_dev_and_test_are_disjoint(tmp_path):
    dev, test = robot.load_probes("dev"), robot.load_probes("test")
    world = load_world()
    assert not set(dev.words) & set(test.words) and not set(dev.frames) & set(test.frames)
    assert all(world.class_of_label(w) is None for w in dev.words + test.words)
    bad = tmp_path / "probes.yaml"
    bad.write_text("dev: {words: [cat], frames: [purple]}\n")
    with pytest.raises(ConfigError, match="unknown frames"):
        robot.load_probes("dev", bad)


def test_the_outside_words_are_what_the_command_writes_and_none_is_scored_or_of_the_world(tmp_path):
    from training.outside import read_words
    from training.shapes.outside_words import OUTSIDE_WORDS, main, world_vocabulary

    main(["--out", str(tmp_path / "words.txt")])
    words = read_words(OUTSIDE_WORDS)
    assert read_words(tmp_path / "words.txt") == words and len(words) == 1000
    world = load_world()
    probes = set(robot.load_probes("dev").words + robot.load_probes("test").words)
    assert not set(words) & (probes | world_vocabulary(world))
    assert all(world.class_of_label(w) is None for w in words)
    assert {"circle", "water", "table", "sea", "dog", "cat"}.isdisjoint(words) and "lamp" not in words
