"""Segmenter: the inference API and its input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synseg_model import Segmenter, image_to_tensor
from synseg_model.runtime import probabilities_at


@pytest.fixture
def segmenter(tiny_model):
    seg = Segmenter(tiny_model, device="cpu", threshold=0.5, max_categories=4)
    seg.set_vocabulary(["circle", "grass"])
    return seg


def test_segment_shapes_and_types(segmenter):
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    out = segmenter.segment(rgb)
    assert out.labels == ["circle", "grass"]
    assert out.probabilities.shape == out.masks.shape == (2, 48, 80)
    assert out.probabilities.dtype == np.float32 and out.masks.dtype == bool
    assert out.scores.shape == (2,) and out.scores.dtype == np.float32
    np.testing.assert_array_equal(out.masks, out.probabilities > 0.5)
    assert out.present.tolist() == [True, True] and out.threshold == 0.5      # no card rule: every label present
    # The presence score: the mean of the top 1% of each map, at the model's resolution.
    maps = torch.sigmoid(segmenter.logits(segmenter.preprocess(rgb), segmenter._vocab[1]))[0].flatten(1)
    top = maps.sort(dim=1, descending=True).values[:, :-(-maps.shape[1] // 100)].mean(1)
    np.testing.assert_allclose(out.scores, top.numpy(), rtol=1e-5)


@pytest.mark.parametrize("size", [(480, 640), (37, 53), (20, 12)])
def test_probabilities_are_the_sigmoid_of_torch_bilinear_resize(size):
    """The CPU path (OpenCV) resizes as F.interpolate does (half-pixel centres), up and down, any aspect; to
    ~1e-5, the rounding of OpenCV's single-precision interpolation weights (a mask moves only for a pixel that
    close to the threshold)."""
    logits = torch.randn(11, 64, 48) * 4
    expected = torch.sigmoid(F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0])
    out = probabilities_at(logits, size)
    assert out.shape == (11, *size) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-4)


def test_a_label_below_the_presence_threshold_gets_an_empty_mask(tiny_model):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    seg = Segmenter(tiny_model, device="cpu", threshold=0.0)
    seg.set_vocabulary(["circle", "grass"])
    scores = seg.segment(rgb).scores
    low = int(np.argmin(scores))
    seg.set_mask_rule(threshold=0.0, presence_threshold=float(scores.mean()))
    out = seg.segment(rgb)
    assert out.present.tolist() == [k != low for k in range(2)]
    assert not out.masks[low].any() and out.masks[1 - low].all()              # threshold 0: all of a present map


def test_the_model_card_carries_the_mask_rule(tiny_model, monkeypatch):
    from synseg_model import MaskRule

    monkeypatch.setattr(tiny_model, "model_card", {"mask_rule": {"threshold": 0.7, "presence_threshold": 0.9}})
    seg = Segmenter(tiny_model, device="cpu")
    assert seg.mask_rule == MaskRule(0.7, 0.9) and seg.threshold == 0.7
    seg.set_mask_rule(threshold=0.3)
    assert seg.mask_rule == MaskRule(0.3, 0.9)                              # an override keeps the rest
    seg.set_mask_rule()
    assert seg.mask_rule == MaskRule(0.7, 0.9)                              # None: the card's again
    assert Segmenter(tiny_model, device="cpu", presence_threshold=0.0).mask_rule == MaskRule(0.7, 0.0)
    monkeypatch.setattr(tiny_model, "model_card", {"mask_rule": {"threshold": 0.7, "presence": 0.9}})
    with pytest.raises(ValueError, match="unknown mask_rule keys"):
        Segmenter(tiny_model, device="cpu")
    with pytest.raises(ValueError, match="presence_threshold must be in"):
        MaskRule(presence_threshold=1.5)


def test_vocabulary_change(segmenter):
    segmenter.set_vocabulary(["star"])
    assert segmenter.segment(np.zeros((10, 10, 3), np.uint8)).labels == ["star"]


@pytest.mark.parametrize("image, message", [
    (np.zeros((10, 10, 3), np.float32), "uint8"),
    (np.zeros((10, 10), np.uint8), "H x W x 3"),
    (np.zeros((10, 10, 4), np.uint8), "H x W x 3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ([[0]], "numpy array"),
])
def test_bad_images_raise(segmenter, image, message):
    with pytest.raises(ValueError, match=message):
        segmenter.segment(image)


@pytest.mark.parametrize("labels, message", [
    ([], "empty"), (["a", " "], "blank"), (["a", "a"], "duplicate"), (list("abcde"), "max_categories"),
    (["Cup", "cup "], "duplicate"),                  # one text to CLIP's tokenizer, as the node's rule says
])
def test_bad_vocabulary_raises_and_keeps_the_old(segmenter, labels, message):
    with pytest.raises(ValueError, match=message):
        segmenter.set_vocabulary(labels)
    assert segmenter.vocabulary == ["circle", "grass"]


def test_no_vocabulary_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="no vocabulary"):
        Segmenter(tiny_model, device="cpu").segment(np.zeros((8, 8, 3), np.uint8))


def test_image_to_tensor_normalises_frames_and_stacks():
    rgb = np.random.default_rng(1).integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    x = image_to_tensor(rgb, mean, std)
    assert x.shape == (2, 3, 6, 5) and x.dtype == torch.float32
    expected = (torch.from_numpy(rgb).permute(0, 3, 1, 2) / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(image_to_tensor(rgb[1], mean, std), x[1:])
    assert image_to_tensor(rgb[0], mean, std, size=4).shape == (1, 3, 4, 4)
