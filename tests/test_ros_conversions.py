"""The node's ROS-free parts: image conversion, mask buffers, rendering, the frame slot, statistics, the fake
segmenter and process handling. Nothing here needs rclpy."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from synseg_ros import conversions, processes, rendering
from synseg_ros.conversions import ImageFormatError
from synseg_ros.frame_slot import LatestFrameSlot
from synseg_ros.segmenter import FakeSegmenter
from synseg_ros.stats import FrameStats

ROS_FREE_MODULES = ["synseg_ros.conversions", "synseg_ros.rendering", "synseg_ros.frame_slot", "synseg_ros.stats",
                    "synseg_ros.segmenter", "synseg_ros.processes", "synseg_ros.regions", "synseg_ros.depth",
                    "synseg_ros.detections", "synseg_ros.params", "synseg_ros.bag_types", "synseg_ros.segment_bag"]


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


def test_lost_frames_are_counted_and_their_share_over_the_window_warns():
    from synseg_ros.diagnostics import NodeReport, node_status

    stats = FrameStats(window=5.0)
    for t in range(8):
        stats.count("received", now=float(t) / 2)
    stats.add_lost(2, now=3.0)
    figures = stats.snapshot(now=4.0)
    assert figures["input_frames_lost"] == 2 and figures["input_lost_share"] == pytest.approx(0.2)
    status = node_status("/synseg: segmentation", NodeReport(state="active", window_s=5.0, figures=figures,
                                                             image_topic="/camera/image_raw"))
    assert status.level == status.WARN and "20% of the frames on /camera/image_raw lost" in status.message
    assert {kv.key: kv.value for kv in status.values}["input_frames_lost"] == "2"


def test_mask_buffers_threshold_in_place_into_reused_arrays():
    probabilities = np.random.default_rng(2).random((3, 5, 7), dtype=np.float32)
    buffers = conversions.MaskBuffers()
    views = buffers.fill(probabilities, 0.5, [True] * 3)
    for view, activation, array_ in zip(views, probabilities, buffers.arrays):
        np.testing.assert_array_equal(view, np.where(activation > 0.5, 255, 0))
        assert np.shares_memory(view, np.frombuffer(array_, np.uint8))      # the message's data, no copy
    first = list(buffers.arrays)
    buffers.fill(probabilities, 0.9, [True] * 3)
    assert all(a is b for a, b in zip(first, buffers.arrays))                # reused frame after frame
    np.testing.assert_array_equal(views[0], np.where(probabilities[0] > 0.9, 255, 0))
    buffers.fill(probabilities, 0.5, [True, False, True])
    assert not views[1].any() and views[0].any()                             # an absent label: an empty mask
    buffers.fill(probabilities[:2], 0.5, [True] * 2)
    assert len(buffers.arrays) == 2                                          # a new vocabulary: new buffers


def test_label_image_accepts_0_255_masks_as_bool_masks():
    probabilities = np.random.default_rng(3).random((4, 6, 5), dtype=np.float32)
    views = conversions.MaskBuffers().fill(probabilities, 0.3, [True] * 4)
    np.testing.assert_array_equal(rendering.label_image(probabilities, views),
                                  rendering.label_image(probabilities, probabilities > 0.3))


def test_fake_segmenter_activation_is_the_colour_channel():
    rgb = np.random.default_rng(4).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    fake = FakeSegmenter({"threshold": 0.5})
    fake.set_vocabulary(["r", "g", "b", "r2"])
    out = fake.segment(rgb)
    assert out.labels == ["r", "g", "b", "r2"] and out.probabilities.dtype == np.float32
    for i in range(4):
        np.testing.assert_allclose(out.probabilities[i], rgb[..., i % 3] / 255.0, rtol=1e-6)
    np.testing.assert_allclose(out.scores, out.probabilities.reshape(4, -1).max(1))
    assert out.present.all() and out.threshold == 0.5                       # negative parameters: its own rule
    rgb[..., 1] //= 2                                                       # green: the faintest channel
    fake.set_mask_rule(0.2, 0.51)
    out = fake.segment(rgb)
    assert out.present.tolist() == [True, False, True, True] and out.threshold == 0.2
    with pytest.raises(RuntimeError, match="text encoder"):
        fake.set_vocabulary(["fail"])


def test_processes_wait_stop_and_report_exits(tmp_path):
    # SIGINT's default handler set explicitly: a shell's background job (`make test &`) starts with SIGINT
    # ignored, which its children inherit, and the sleeper would then wait out the stop's timeout.
    sleeper = processes.start([sys.executable, "-c", "import signal, time; "
                               "signal.signal(signal.SIGINT, signal.default_int_handler); "
                               "print('up', flush=True); time.sleep(60)"], tmp_path / "sleeper.log")
    processes.wait_until(lambda: "up" in (tmp_path / "sleeper.log").read_text(), 10, "the sleeper")
    assert processes.stop(sleeper) != 0 and sleeper.poll() is not None        # SIGINT ended it
    quitter = processes.start([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "quitter.log")
    with pytest.raises(processes.ProcessExited, match="exited with code 3"):
        processes.wait_until(lambda: False, 10, "nothing", procs=[quitter])
    with pytest.raises(TimeoutError, match="waiting for Godot"):
        processes.wait_until(lambda: False, 0.05, "Godot")


def test_ros_free_modules_import_without_rclpy():
    """These modules (and this test file) must work where rclpy is missing: block it and import them."""
    code = ("import sys\nfor name in ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs'):\n"
            "    sys.modules[name] = None\n" + "".join(f"import {m}\n" for m in ROS_FREE_MODULES))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
