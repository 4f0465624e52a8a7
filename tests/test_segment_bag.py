"""segment_bag: recorded bags (sqlite3 and MCAP) written here with rosbags, segmented with the fake model, read
back with rosbags. No ROS: the tool and these tests run without rclpy."""
from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from synseg_ros import bag_types, conversions, regions, segment_bag
from synseg_ros.segmenter import FakeSegmenter
from tests.ros_processes import REPO_ROOT

TOPIC = "/camera/image_raw"
OTHER = "/camera/camera_info"
VOCABULARY = "[red, green, blue]"
H, W = 48, 64
STAMP0 = 1_700_000_000 * 10**9
PERIOD = 100_000_000                    # 10 Hz
SHARED_VISION_MSGS = REPO_ROOT.parent / "shared" / "ros2cli" / "src" / "vision_msgs" / "msg"


def frame(i: int) -> np.ndarray:
    """A red box that moves right by 4 px per frame and a green square; blue is absent."""
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[10:30, 4 + 4 * i:20 + 4 * i, 0] = 255
    rgb[34:44, 40:50, 1] = 200
    rgb[34:44, 52:54, 1] = 200                                  # a second green region of 20 pixels
    return rgb


def write_bag(path, storage: str, frames: int = 5, compressed: str | None = None, corrupt: int | None = None):
    """A bag with ``frames`` camera frames (raw, or compressed as "png"/"jpeg") and camera info between them."""
    store = get_typestore(Stores.ROS2_KILTED)
    T = store.types
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with Writer(path, version=8, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        images = writer.add_connection(TOPIC if not compressed else TOPIC + "/compressed", msgtype, typestore=store)
        infos = writer.add_connection(OTHER, "sensor_msgs/msg/CameraInfo", typestore=store)
        for i in range(frames):
            t = STAMP0 + i * PERIOD
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9,
                                                                                     nanosec=t % 10**9),
                                              frame_id="camera_optical")
            if compressed:
                ok, data = cv2.imencode("." + compressed, cv2.cvtColor(frame(i), cv2.COLOR_RGB2BGR))
                data = data.ravel()
                if i == corrupt:
                    data = data[: data.size // 2]
                msg = T[msgtype](header=header, format=compressed, data=data)
            else:
                fields = conversions.rgb_to_image_fields(frame(i), "bgr8")
                if i == corrupt:
                    fields["step"] = 7
                msg = T[msgtype](header=header, **{**fields, "data": np.frombuffer(fields["data"], np.uint8)})
            writer.write(images, t + 1000, store.serialize_cdr(msg, msgtype))
            info = T["sensor_msgs/msg/CameraInfo"](
                header=header, height=H, width=W, distortion_model="plumb_bob", d=np.zeros(5),
                k=np.array([50.0, 0, 32, 0, 50, 24, 0, 0, 1]), r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0,
                binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                                       do_rectify=False))
            writer.write(infos, t + 2000, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
    return path


def run(*argv: str, factory=lambda settings: FakeSegmenter(settings)) -> int:
    return segment_bag.main([*map(str, argv), "--quiet"], segmenter_factory=factory)


def read_back(path) -> dict[str, list[tuple[int, object, bytes]]]:
    """topic -> [(bag time, message, raw bytes)] with the tool's typestore."""
    store = bag_types.create_typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, store.deserialize_cdr(raw, connection.msgtype),
                                                         bytes(raw)))
    return out


def mask(image) -> np.ndarray:
    return np.asarray(image.data, np.uint8).reshape(image.height, image.step)[:, : image.width]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_every_frame_gets_masks_and_detections_and_every_message_is_copied(tmp_path, storage):
    source = write_bag(tmp_path / "in", storage)
    target = tmp_path / "out"
    assert run(source, target, "--topic", TOPIC, "--vocabulary", VOCABULARY) == 0
    assert segment_bag.storage_of(target) == storage
    got, original = read_back(target), read_back(source)
    for topic in (TOPIC, OTHER):                    # copied as they were, at the same times
        assert [(t, raw) for t, _, raw in got[topic]] == [(t, raw) for t, _, raw in original[topic]]
    masks, found = got["/synseg/masks"], got["/synseg/detections"]
    assert len(masks) == len(found) == len(original[TOPIC]) == 5
    for (t_in, image, _), (t_masks, out, _), (t_det, array, _) in zip(original[TOPIC], masks, found):
        assert t_masks == t_det == t_in             # the frame's time in the bag, and its header
        assert out.header.stamp == image.header.stamp == array.header.stamp
        assert out.header.frame_id == "camera_optical"
        assert list(out.labels) == ["red", "green", "blue"]
        rgb = conversions.image_to_rgb(image)
        np.testing.assert_array_equal(mask(out.masks[0]) > 0, rgb[..., 0] > 127)
        np.testing.assert_array_equal(mask(out.masks[1]) > 0, rgb[..., 1] > 127)
        assert not mask(out.masks[2]).any()
        boxes = sorted((d.results[0].hypothesis.class_id, d.bbox.center.position.x, d.bbox.center.position.y,
                        d.bbox.size_x, d.bbox.size_y) for d in array.detections)
        expected = sorted((["red", "green", "blue"][label.label_index], *r.center, r.box[2], r.box[3])
                          for label in regions.find_regions([m > 0 for m in (rgb[..., 0] > 127, rgb[..., 1] > 127)],
                                                            100) for r in label.regions)
        assert boxes == expected and len(boxes) == 2   # the 20-pixel green region is below min_region_pixels
    (_, info, _), = got["/synseg/label_info"]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "red"), (1, "green"), (2, "blue")]
    assert info.threshold == pytest.approx(0.5)
    with Reader(target) as reader:                  # metadata.yaml as `ros2 bag info` reads it
        assert reader.message_count == 10 + 5 * 2 + 1
        assert reader.topics["/synseg/masks"].msgtype == bag_types.MASKS_TYPE
    assert not list(tmp_path.glob(".out.incomplete-*"))


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_compressed_frames_are_decoded_and_a_corrupt_one_is_skipped(tmp_path, codec, capsys):
    source = write_bag(tmp_path / "in", "mcap", compressed=codec, corrupt=2)
    assert run(source, tmp_path / "out", "--topic", TOPIC + "/compressed", "--vocabulary", VOCABULARY) == 0
    masks = read_back(tmp_path / "out")["/synseg/masks"]
    assert len(masks) == 4
    err = capsys.readouterr().err
    assert f"skipped the frame at {STAMP0 + 2 * PERIOD + 1000} ns: corrupt or truncated {codec.upper()}" in err
    if codec == "png":                              # lossless: the raw frame's masks exactly
        np.testing.assert_array_equal(mask(masks[0][1].masks[0]) > 0, frame(0)[..., 0] > 127)


def test_a_malformed_raw_frame_is_skipped_and_counted(tmp_path, capsys):
    source = write_bag(tmp_path / "in", "sqlite3", corrupt=1)
    assert run(source, tmp_path / "out", "--topic", TOPIC, "--vocabulary", VOCABULARY) == 0
    assert len(read_back(tmp_path / "out")["/synseg/masks"]) == 4
    captured = capsys.readouterr()
    assert "step 7 is shorter than one row" in captured.err
    assert "4 frames of /camera/image_raw segmented" in captured.out and "1 skipped" in captured.out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segment_bag: error: "), err
    return err[0]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_damaged_bag_is_a_one_line_error_naming_it(tmp_path, storage, capsys):
    source = write_bag(tmp_path / "in", storage, frames=20)
    (data,) = [p for p in source.iterdir() if p.suffix in (".db3", ".mcap")]
    content = data.read_bytes()
    data.write_bytes(content[: len(content) // 3])
    assert run(source, tmp_path / "out", "--topic", TOPIC, "--vocabulary", VOCABULARY) == 1
    assert str(source) in one_line_error(capsys)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_missing_bag_topic_and_existing_output_are_one_line_errors(tmp_path, capsys):
    source = write_bag(tmp_path / "in", "sqlite3", frames=1)
    assert run(source, tmp_path / "out", "--topic", "/camera/depth", "--vocabulary", VOCABULARY) == 1
    line = one_line_error(capsys)
    assert "no topic /camera/depth" in line and TOPIC in line and OTHER in line
    assert run(source, tmp_path / "out", "--topic", OTHER, "--vocabulary", VOCABULARY) == 1
    assert "holds sensor_msgs/msg/CameraInfo" in one_line_error(capsys)
    assert run(tmp_path / "nowhere", tmp_path / "out", "--topic", TOPIC) == 1
    assert "no such bag" in one_line_error(capsys)
    (tmp_path / "taken").mkdir()
    assert run(source, tmp_path / "taken", "--topic", TOPIC, "--vocabulary", VOCABULARY) == 1
    assert "exists" in one_line_error(capsys)


def test_an_interrupted_run_leaves_no_output(tmp_path, capsys):
    source = write_bag(tmp_path / "in", "mcap", frames=6)

    class Interrupted(FakeSegmenter):
        calls = 0

        def segment(self, rgb):
            Interrupted.calls += 1
            if Interrupted.calls == 3:
                raise KeyboardInterrupt
            return super().segment(rgb)

    assert run(source, tmp_path / "out", "--topic", TOPIC, "--vocabulary", VOCABULARY,
               factory=lambda settings: Interrupted(settings)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_parameters_come_from_the_node_file_then_p_then_vocabulary(tmp_path):
    source = write_bag(tmp_path / "in", "sqlite3", frames=1)
    params_file = tmp_path / "robot.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    threshold: 0.9\n    vocabulary: [a, b]\n"
                           "synseg:\n  ros__parameters:\n    min_region_pixels: 10\n"
                           "other_node:\n  ros__parameters:\n    threshold: 0.1\n")
    seen = {}

    def factory(settings):
        seen.update(settings)
        return FakeSegmenter(settings)

    assert run(source, tmp_path / "out", "--topic", TOPIC, "--params-file", params_file, "-p", "threshold:=1",
               factory=factory) == 0
    assert seen["threshold"] == 1.0 and seen["min_region_pixels"] == 10 and seen["vocabulary"] == ["a", "b"]
    (_, out, _), = read_back(tmp_path / "out")["/synseg/masks"]
    assert list(out.labels) == ["a", "b"] and out.threshold == pytest.approx(1.0)
    found = read_back(tmp_path / "out")["/synseg/detections"][0][1]
    assert not found.detections                                 # nothing is above an activation of 1


def test_the_shipped_parameter_file_is_accepted(tmp_path):
    source = write_bag(tmp_path / "in", "sqlite3", frames=1)
    assert run(source, tmp_path / "out", "--topic", TOPIC, "--vocabulary", VOCABULARY,
               "--params-file", REPO_ROOT / "config" / "synseg.yaml") == 0


@pytest.mark.parametrize("extra, reason", [
    (["-p", "treshold:=0.4"], "unknown parameters treshold"),
    (["-p", "threshold:=abc"], "threshold expects a floating-point number"),
    (["--vocabulary", "[a, A]"], "duplicate"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, capsys, extra, reason):
    source = write_bag(tmp_path / "in", "sqlite3", frames=1)
    assert run(source, tmp_path / "out", "--topic", TOPIC, *extra) == 1
    assert reason in one_line_error(capsys)


def test_module_and_script_entry_points_answer_help():
    for command in ([sys.executable, "-m", "synseg_ros.segment_bag", "--help"],
                    [sys.executable, str(REPO_ROOT / "scripts" / "segment_bag"), "--help"]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                             env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert "--topic" in out.stdout and "--params-file" in out.stdout


@pytest.mark.skipif(not SHARED_VISION_MSGS.is_dir(), reason=f"vision_msgs sources absent ({SHARED_VISION_MSGS})")
@pytest.mark.parametrize("name", sorted(bag_types.VISION_MSGS))
def test_vision_msgs_definitions_match_the_package(name):
    text = (SHARED_VISION_MSGS / f"{name}.msg").read_text()
    fields = [re.sub(r"\s+", " ", line.split("#", 1)[0]).strip() for line in text.splitlines()]
    package = [f.replace("vision_msgs/", "") for f in fields if f]
    ours = [line.replace("vision_msgs/", "") for line in bag_types.VISION_MSGS[name].splitlines()]
    assert ours == package
