"""The node's ROS-free parts: image conversion, rendering, the frame slot, statistics and parameter checks."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter

from synseg_ros import conversions, params, rendering
from synseg_ros.conversions import ImageFormatError
from synseg_ros.frame_slot import LatestFrameSlot
from synseg_ros.stats import FrameStats
from tests.ros_helpers import REPO_ROOT


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip_exactly(rgb, encoding):
    fields = conversions.rgb_to_image_fields(rgb, encoding)
    assert fields["step"] * fields["height"] == len(fields["data"])
    np.testing.assert_array_equal(conversions.image_to_rgb(fields), rgb)


def test_bgr8_bytes_are_blue_first(rgb):
    data = np.frombuffer(conversions.rgb_to_image_fields(rgb, "bgr8")["data"], np.uint8).reshape(6, 8, 3)
    np.testing.assert_array_equal(data, rgb[..., ::-1])


def test_mono8_decodes_to_grey_rgb():
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = conversions.image_to_rgb(conversions.mono8_fields(grey))
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding, first_is_luma", [("yuv422_yuy2", True), ("yuyv", True),
                                                     ("yuv422", False), ("uyvy", False)])
def test_yuv422_byte_orders(encoding, first_is_luma):
    """ROS "yuv422" is UYVY (chroma first), "yuv422_yuy2" is YUYV (luma first); a flat grey decodes to grey."""
    grey = np.full((4, 6, 3), 128, np.uint8)
    fields = conversions.rgb_to_image_fields(grey, encoding)
    data = np.frombuffer(fields["data"], np.uint8)
    luma, chroma = (data[0], data[1]) if first_is_luma else (data[1], data[0])
    assert abs(int(luma) - 128) <= 16 and abs(int(chroma) - 128) <= 2
    np.testing.assert_allclose(conversions.image_to_rgb(fields), grey, atol=3)


def test_yuyv_decoding_matches_opencv():
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, size=(4, 6, 2), dtype=np.uint8)
    fields = {"height": 4, "width": 6, "encoding": "yuv422_yuy2", "step": 12, "data": packed.tobytes()}
    np.testing.assert_array_equal(conversions.image_to_rgb(fields), cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_YUYV))


def test_row_padding_is_skipped(rgb):
    padded = np.zeros((6, 8 * 3 + 5), np.uint8)
    padded[:, : 8 * 3] = rgb.reshape(6, -1)
    fields = {"height": 6, "width": 8, "encoding": "rgb8", "step": 8 * 3 + 5, "data": padded.tobytes()}
    np.testing.assert_array_equal(conversions.image_to_rgb(fields), rgb)


@pytest.mark.parametrize("change, reason", [
    ({"encoding": "32FC1"}, "unsupported encoding '32FC1'"),
    ({"height": 0, "data": b""}, "empty image"),
    ({"step": 8 * 3 - 1}, "shorter than one row"),
    ({"data": bytes(10)}, "data has 10 bytes"),
    ({"encoding": "rgba8"}, "shorter than one row"),          # rgb8 layout declared as rgba8
    ({"width": 7, "step": 21, "encoding": "yuyv", "data": bytes(126)}, "even width"),
])
def test_malformed_images_raise_with_reason(rgb, change, reason):
    fields = {**conversions.rgb_to_image_fields(rgb, "rgb8"), **change}
    with pytest.raises(ImageFormatError, match=reason):
        conversions.image_to_rgb(fields)


def test_oversized_images_are_rejected_before_decoding():
    fields = {"height": 100_000, "width": 100_000, "encoding": "rgb8", "step": 300_000, "data": b""}
    with pytest.raises(ImageFormatError, match="exceeds the limit"):
        conversions.image_to_rgb(fields, max_pixels=3840 * 2160)


def test_mono8_fields_of_bool_mask_are_0_and_255():
    mask = np.array([[True, False], [False, True]])
    data = np.frombuffer(conversions.mono8_fields(mask)["data"], np.uint8)
    assert data.tolist() == [255, 0, 0, 255]


def test_label_image_takes_the_most_activated_mask():
    probs = np.array([[[0.9, 0.6, 0.1]], [[0.7, 0.8, 0.2]]], np.float32)     # (K=2, H=1, W=3)
    masks = probs > 0.5
    assert rendering.label_image(probs, masks).tolist() == [[1, 2, 0]]


def test_overlay_tints_only_labelled_pixels():
    rgb = np.full((40, 60, 3), 100, np.uint8)
    label_map = np.zeros((40, 60), np.uint8)
    label_map[5:35, 5:30] = 1
    out = rendering.overlay(rgb, ["cup"], label_map, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 45:], rgb[:, 45:])          # far from the mask and its text
    assert np.abs(out[5:35, 5:30].astype(int) - 100).sum() > 0
    assert rendering.label_color("cup") == rendering.label_color("cup") != rendering.label_color("plate")


def test_frame_slot_keeps_only_the_newest_and_counts_drops():
    slot: LatestFrameSlot[int] = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(timeout=0) == 3 and slot.dropped == 2
    assert slot.take(timeout=0.01) is None
    waiter = threading.Thread(target=lambda: slot.take(timeout=10))
    waiter.start()
    slot.close()
    waiter.join(timeout=2)
    assert not waiter.is_alive()


def test_frame_stats_rates_and_percentiles():
    stats = FrameStats(window=2.0, history=100)
    now = time.monotonic()
    for i in range(10):
        stats.count("received", now - i * 0.1)
    for latency in np.linspace(0.01, 0.1, 10):
        stats.add_latency(float(latency))
    stats.add_stage("model", 0.05)
    figures = stats.snapshot(now)
    assert figures["input_rate_hz"] == pytest.approx(5.0)
    assert figures["received"] == 10 and figures["processed"] == 0
    assert figures["latency_p50_ms"] == pytest.approx(55.0)
    assert figures["model_p50_ms"] == pytest.approx(50.0)
    assert np.isnan(FrameStats().snapshot()["latency_p95_ms"])


@pytest.mark.parametrize("value, reason", [
    ([], "must not be empty"), (["a", ""], "blank"), (["Chair", "chair "], "duplicate"),
    (["x"] * 2, "duplicate"), ([True, False], "quote them"), ([3, 4], "quote them"),
    ([f"c{i}" for i in range(5)], "max_categories=4"),
])
def test_vocabulary_checks(value, reason):
    with pytest.raises(ValueError, match=reason):
        params.check_labels("vocabulary", value, max_count=4)


def test_prompt_templates_need_a_placeholder():
    settings = {"max_categories": 4}
    params.validate("prompt_templates", ["a photo of a {}."], settings)
    with pytest.raises(ValueError, match="no {}"):
        params.validate("prompt_templates", ["a photo"], settings)


@pytest.mark.parametrize("text, labels", [("[person, 'traffic light']", ["person", "traffic light"]),
                                          ("person", ["person"]), ("person, chair", ["person", "chair"]),
                                          ("[]", [])])
def test_parse_label_list(text, labels):
    assert params.parse_label_list(text) == labels


def test_coerce_repairs_what_ros2_param_set_infers():
    assert params.coerce(Parameter("vocabulary", value="[person, 3]")).value == ["person", "3"]
    empty = params.coerce(Parameter("vocabulary", Parameter.Type.BOOL_ARRAY, []))
    assert empty.type_ == Parameter.Type.STRING_ARRAY and empty.value == []
    assert params.coerce(Parameter("vocabulary", value=[" cup "])).value == ["cup"]
    threshold = params.coerce(Parameter("threshold", value=1))
    assert threshold.type_ == Parameter.Type.DOUBLE and threshold.value == 1.0
    booleans = Parameter("vocabulary", value=[True, False])
    assert params.coerce(booleans) is booleans          # left for the validating callback to reject


def test_every_parameter_has_a_described_descriptor():
    for spec in params.PARAMETERS:
        descriptor = spec.descriptor()
        assert descriptor.description and descriptor.read_only == (not spec.dynamic)
        assert bool(descriptor.integer_range) == (spec.int_range is not None)
        assert bool(descriptor.floating_point_range) == (spec.float_range is not None)


def test_config_file_sets_only_declared_valid_parameters():
    with open(REPO_ROOT / "config" / "synseg.yaml") as f:
        values = yaml.safe_load(f)["/**"]["ros__parameters"]
    assert set(values) <= set(params.SPECS), set(values) - set(params.SPECS)
    settings = {spec.name: spec.default for spec in params.PARAMETERS} | values
    for name, value in values.items():
        spec = params.SPECS[name]
        params.validate(name, value, settings)
        if spec.default is not None:
            assert isinstance(value, type(spec.default)), name
        if spec.float_range:
            assert spec.float_range[0] <= value <= spec.float_range[1], name
        if spec.int_range:
            assert spec.int_range[0] <= value <= spec.int_range[1], name
