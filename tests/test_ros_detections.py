"""The node's robot outputs over real DDS on loopback, with the fake model in its own process: vision_msgs
detections and LabelInfo, compressed input, and 3-D from a synchronised depth image and camera info.

vision_msgs and message_filters come from ../shared here (`make setup` builds them); where they are missing the
tests that need them skip, and the node runs with detections off. Run under the network rule: `make test`.
"""
from __future__ import annotations

import importlib.util
import os
import time

import cv2
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from synseg_ros import processes
from tests import depth_scene as scene
from tests.ros_helpers import Probe, image_msg, mask_array, stop_node, wait_until
from tests.ros_processes import REPO_ROOT, ROS_PYTHON_DIRS, TIMEOUT_S, VISION_MSGS_DIRS, start_node
from tests.test_ros_depth import components, encode, textured_scene

pytestmark = pytest.mark.ros

FAKE_NODE = "synseg_ros.fake_node"


def vision_msgs_problem() -> str | None:
    """Why vision_msgs and message_filters cannot be used in this process, or None."""
    for module in ("vision_msgs", "message_filters"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (here it comes from ../shared/ros2cli through `make setup`)"
    try:
        from rclpy.type_support import check_for_type_support
        from vision_msgs.msg import Detection2DArray

        check_for_type_support(Detection2DArray)
    except Exception as exc:  # its libraries are not on LD_LIBRARY_PATH
        return f"vision_msgs does not load ({type(exc).__name__}: {exc}); `make test` sets LD_LIBRARY_PATH for it"
    return None


needs_vision_msgs = pytest.mark.skipif(vision_msgs_problem() is not None, reason=str(vision_msgs_problem()))
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_fake(tmp_path_factory, name: str, image_topic: str, *params: str, remaps: tuple[str, ...] = (),
               env: dict | None = None):
    """The node on the fake model, vocabulary [red, green, blue], with ``params`` (name:=value) and ``remaps``."""
    log = tmp_path_factory.mktemp(name) / "node.log"
    args = ["--ros-args", "-r", f"image:={image_topic}", *[item for r in remaps for item in ("-r", r)],
            "-p", "autostart:=true", "-p", "vocabulary:=[red, green, blue]",
            *[item for p in params for item in ("-p", p)]]
    if env is None:
        return start_node(FAKE_NODE, args, log), log
    return processes.start_module(FAKE_NODE, args, log, env=env, cwd=REPO_ROOT), log


def close(proc, probe, log) -> None:
    probe.close()
    code = stop_node(proc)
    print(log.read_text())
    assert code == 0, "the node did not end cleanly on SIGINT"


def with_stamp(probe: Probe, topic: str, stamp) -> list:
    return [m for m in probe.messages(topic) if m.header.stamp == stamp]


# --------------------------------------------------------------------------------------------- detections

@pytest.fixture(scope="module")
def detection_node(ros_context, tmp_path_factory):
    from vision_msgs.msg import Detection2DArray, LabelInfo

    from synseg_ros.msg import SegmentationMasks

    proc, log = start_fake(tmp_path_factory, "detections", "/det/image_raw", "min_region_pixels:=12")
    probe = Probe("probe_detections", "/det/image_raw", {"/synseg/detections": Detection2DArray,
                                                          "/synseg/masks": SegmentationMasks})
    probe.received["/synseg/label_info"] = []
    probe.node.create_subscription(LabelInfo, "/synseg/label_info", probe._recorder("/synseg/label_info"), LATCHED)
    try:
        probe.wait_for_node()
        yield proc, probe
    finally:
        close(proc, probe, log)


def regions_image(seed: int) -> np.ndarray:
    """Red and green blobs of many sizes (some below min_region_pixels), blue nowhere."""
    rng = np.random.default_rng(seed)
    rgb = np.zeros((60, 80, 3), np.uint8)
    for channel in (0, 1):
        layer = np.zeros((60, 80), np.uint8)
        for _ in range(5):
            cv2.circle(layer, (int(rng.integers(0, 80)), int(rng.integers(0, 60))), int(rng.integers(1, 9)), 255, -1)
        rgb[..., channel] = layer
    return rgb


@needs_vision_msgs
@pytest.mark.parametrize("seed", [0, 1])
def test_detections_are_the_connected_regions_of_each_mask(detection_node, seed):
    proc, probe = detection_node
    assert probe.set_parameter("vocabulary", ["red", "green", "blue"]).successful
    rgb = regions_image(seed)
    sent = {}

    def make():
        sent["stamp"] = probe.now()
        return image_msg(rgb, "rgb8", sent["stamp"], frame_id="camera_optical")

    found = probe.publish_until(make, lambda: with_stamp(probe, "/synseg/detections", sent["stamp"]),
                                what="detections")[0]
    masks = wait_until(lambda: with_stamp(probe, "/synseg/masks", sent["stamp"]), what="masks")[0]
    assert found.header.frame_id == "camera_optical"
    expected = []
    for index, label in enumerate(["red", "green"]):
        for pixels, (x, y, w, h) in components(rgb[..., index] > 127):
            if pixels >= 12:
                expected.append((label, x + w / 2, y + h / 2, float(w), float(h), float(masks.scores[index])))
    got = [(d.results[0].hypothesis.class_id, d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x,
            d.bbox.size_y, d.results[0].hypothesis.score) for d in found.detections]
    assert sorted(got) == sorted(expected)
    assert all(d.header == found.header for d in found.detections)
    assert len(got) >= 4


@needs_vision_msgs
def test_label_info_follows_the_vocabulary_and_is_latched(detection_node):
    from vision_msgs.msg import LabelInfo

    proc, probe = detection_node
    assert probe.set_parameter("vocabulary", ["tomato", "leaf"]).successful
    rgb = regions_image(3)
    probe.publish_until(lambda: image_msg(rgb, "rgb8", probe.now()), lambda: [
        m for m in probe.messages("/synseg/label_info") if [c.class_name for c in m.class_map] == ["tomato", "leaf"]],
        what="LabelInfo of the new vocabulary")
    info = probe.messages("/synseg/label_info")[-1]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "tomato"), (1, "leaf")]
    assert info.threshold == pytest.approx(0.5)
    late = []                                           # a subscriber that comes after it was published
    probe.node.create_subscription(LabelInfo, "/synseg/label_info", late.append, LATCHED)
    wait_until(lambda: late, what="the latched LabelInfo")
    assert [c.class_name for c in late[0].class_map] == ["tomato", "leaf"]
    assert probe.set_parameter("vocabulary", ["red", "green", "blue"]).successful


def test_without_vision_msgs_the_node_runs_with_detections_off(ros_context, tmp_path_factory):
    from synseg_ros.msg import SegmentationMasks

    path = [str(REPO_ROOT), *ROS_PYTHON_DIRS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    blocked = tmp_path_factory.mktemp("no_vision_msgs")
    (blocked / "vision_msgs").mkdir()                   # shadows an installed one: `import vision_msgs.msg` fails
    (blocked / "vision_msgs" / "__init__.py").write_text("raise ImportError('vision_msgs hidden by the test')\n")
    env["PYTHONPATH"] = os.pathsep.join([str(blocked), *path])
    assert not set(VISION_MSGS_DIRS) & set(env["PYTHONPATH"].split(os.pathsep))
    proc, log = start_fake(tmp_path_factory, "no_vision", "/novision/image_raw", env=env)
    probe = Probe("probe_no_vision", "/novision/image_raw", {"/synseg/masks": SegmentationMasks})
    try:
        probe.wait_for_node()
        probe.publish_until(lambda: image_msg(regions_image(0), "rgb8", probe.now()),
                            lambda: probe.messages("/synseg/masks"), what="masks")
    finally:
        close(proc, probe, log)
    text = log.read_text()
    assert text.count("Detections are off: vision_msgs cannot be used") == 1, text


# ------------------------------------------------------------------------------------------ compressed input

@pytest.fixture(scope="module")
def compressed_node(ros_context, tmp_path_factory):
    from synseg_ros.msg import SegmentationMasks

    proc, log = start_fake(tmp_path_factory, "compressed", "/cmp/image_raw", "image_transport:=compressed")
    probe = Probe("probe_compressed", "/cmp/image_raw", {"/synseg/masks": SegmentationMasks})
    probe.compressed_pub = probe.node.create_publisher(CompressedImage, "/cmp/image_raw/compressed",
                                                       qos_profile_sensor_data)
    try:
        wait_until(lambda: probe.compressed_pub.get_subscription_count() > 0, what="the compressed subscription")
        yield proc, probe, log
    finally:
        close(proc, probe, log)


def send_compressed(probe: Probe, payload: bytes, fmt: str) -> object:
    sent = {}

    def publish_one():
        sent["stamp"] = probe.now()
        msg = CompressedImage(format=fmt)
        msg.header.stamp = sent["stamp"]
        msg.data = payload
        probe.compressed_pub.publish(msg)
        return None

    deadline_what = f"masks of a {fmt} frame"
    for _ in range(100):
        publish_one()
        try:
            return wait_until(lambda: with_stamp(probe, "/synseg/masks", sent["stamp"]), timeout=0.2,
                              what=deadline_what)[0]
        except TimeoutError:
            continue
    raise TimeoutError(f"no {deadline_what}")


def masks_of(out) -> np.ndarray:
    return np.stack([mask_array(m) > 0 for m in out.masks])


def test_png_gives_the_raw_masks_and_jpeg_90_masks_of_iou_098(compressed_node):
    proc, probe, log = compressed_node
    rgb = textured_scene()
    raw = np.stack([rgb[..., c] > 127 for c in range(3)])
    png = masks_of(send_compressed(probe, encode(rgb, ".png"), "rgb8; png compressed bgr8"))
    np.testing.assert_array_equal(png, raw)
    jpeg = masks_of(send_compressed(probe, encode(rgb, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90), "jpeg"))
    for k in range(2):
        assert (jpeg[k] & raw[k]).sum() / (jpeg[k] | raw[k]).sum() >= 0.98


def test_corrupt_compressed_payloads_are_rejected_and_the_node_goes_on(compressed_node):
    proc, probe, log = compressed_node
    data = encode(textured_scene(), ".jpg")
    for payload in (data[: len(data) // 2], b"not an image", b""):
        msg = CompressedImage(format="jpeg")
        msg.header.stamp = probe.now()
        msg.data = payload
        probe.compressed_pub.publish(msg)
    wait_until(lambda: "Rejected an image on /cmp/image_raw/compressed" in log.read_text(), what="the warning")
    assert proc.poll() is None
    out = send_compressed(probe, encode(textured_scene(), ".png"), "png")
    assert len(out.masks) == 3


# ----------------------------------------------------------------------------------------------------- 3-D

DEPTH_TOPIC, INFO_TOPIC = "/rgbd/depth/image_rect_raw", "/rgbd/depth/camera_info"


@pytest.fixture(scope="module")
def depth_node(ros_context, tmp_path_factory):
    from sensor_msgs.msg import PointCloud2
    from vision_msgs.msg import Detection2DArray, Detection3DArray

    proc, log = start_fake(tmp_path_factory, "depth", "/rgbd/color/image_raw", "use_depth:=true", "max_depth:=5.0",
                           remaps=(f"depth:={DEPTH_TOPIC}", f"camera_info:={INFO_TOPIC}"))
    probe = Probe("probe_depth", "/rgbd/color/image_raw", {"/synseg/detections_3d": Detection3DArray,
                                                           "/synseg/points": PointCloud2,
                                                           "/synseg/detections": Detection2DArray})
    probe.depth_pub = probe.node.create_publisher(Image, DEPTH_TOPIC, qos_profile_sensor_data)
    probe.info_pub = probe.node.create_publisher(CameraInfo, INFO_TOPIC, qos_profile_sensor_data)
    try:
        probe.wait_for_node()
        wait_until(lambda: probe.depth_pub.get_subscription_count() and probe.info_pub.get_subscription_count(),
                   what="the depth subscriptions")
        yield proc, probe, log
    finally:
        close(proc, probe, log)


def send_rgbd(probe: Probe, encoding: str, depth_fields: dict | None = None, topic: str = "/synseg/detections_3d",
              labels: list[str] | None = None):
    """Publish the scene's colour, depth and camera info with one stamp until ``topic`` answers that stamp (with
    ``labels``: with detections of those labels only, since a vocabulary set just before applies from a later
    frame, not necessarily the next)."""
    sent = {}

    def make():
        stamp = sent["stamp"] = probe.now()
        depth = Image(**(depth_fields or scene.depth_fields(encoding)))
        depth.header.stamp, depth.header.frame_id = stamp, "depth_optical"
        info = CameraInfo(height=scene.HEIGHT, width=scene.WIDTH, k=scene.camera_matrix(),
                          distortion_model="plumb_bob")
        info.header = depth.header
        probe.depth_pub.publish(depth)
        probe.info_pub.publish(info)
        return image_msg(scene.colour(), "rgb8", stamp, frame_id="color_optical")

    # Three messages of 1.5 MB in all per try: a loaded machine can take a few tries to deliver them together.
    def answered():
        return [m for m in with_stamp(probe, topic, sent["stamp"])
                if labels is None or {d.results[0].hypothesis.class_id for d in m.detections} <= set(labels)]

    return probe.publish_until(make, answered, period=0.3, timeout=3 * TIMEOUT_S, what=f"{topic} of an RGB-D frame")[0]


@needs_vision_msgs
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_3d_detections_of_the_synthetic_scene(depth_node, encoding):
    proc, probe, log = depth_node
    assert probe.set_parameter("vocabulary", scene.LABELS).successful
    found = send_rgbd(probe, encoding, labels=scene.LABELS)
    assert found.header.frame_id == "depth_optical"
    by_label = {d.results[0].hypothesis.class_id: d for d in found.detections}
    assert sorted(by_label) == ["box", "wall"]
    for name, truth in scene.truth().items():
        box = by_label[name].bbox
        centre = (box.center.position.x, box.center.position.y, box.center.position.z)
        np.testing.assert_allclose(centre, truth.center, atol=0.01, err_msg=f"{name} centre")
        np.testing.assert_allclose((box.size.x, box.size.y, box.size.z), truth.size, atol=0.02,
                                   err_msg=f"{name} size")
    points = wait_until(lambda: with_stamp(probe, "/synseg/points", found.header.stamp), what="points")[0]
    assert points.header.frame_id == "depth_optical" and points.point_step == 16
    assert [(f.name, f.offset) for f in points.fields] == [("x", 0), ("y", 4), ("z", 8), ("label", 12)]
    cloud = np.frombuffer(bytes(points.data), np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                         ("label", "<u4")]))
    assert len(cloud) == points.width == (scene.HEIGHT // 4) * (scene.WIDTH // 4)      # point_decimation 4
    np.testing.assert_allclose(cloud["z"][cloud["label"] == 0], scene.BOX_Z)
    np.testing.assert_allclose(cloud["z"][cloud["label"] == 1], scene.WALL_Z)


@needs_vision_msgs
def test_invalid_depth_is_skipped_and_a_depth_of_another_size_is_a_warning(depth_node):
    proc, probe, log = depth_node
    assert probe.set_parameter("vocabulary", scene.LABELS).successful
    z = scene.depth_metres()
    z[::3] = np.nan                                     # every third row has no measurement
    z[1::3, ::2] = 9.0                                  # beyond max_depth
    found = send_rgbd(probe, "32FC1", scene.depth_fields("32FC1", z), labels=scene.LABELS)
    by_label = {d.results[0].hypothesis.class_id: d.bbox for d in found.detections}
    for name, truth in scene.truth().items():
        np.testing.assert_allclose(by_label[name].center.position.z, truth.center[2], atol=0.01)
        np.testing.assert_allclose(by_label[name].size.z, 0.0, atol=0.02)
    small = scene.depth_fields("16UC1", scene.depth_metres()[::2, ::2].copy())
    send_rgbd(probe, "16UC1", small, topic="/synseg/detections")        # the 2-D detections go on
    wait_until(lambda: "No 3-D for this frame: depth image is 320x240, the colour image 640x480" in log.read_text(),
               what="the size warning")
    assert proc.poll() is None


@needs_vision_msgs
def test_images_without_camera_info_are_a_warning(depth_node):
    proc, probe, log = depth_node
    deadline = time.monotonic() + 3 * TIMEOUT_S
    while "0 camera infos on /rgbd/depth/camera_info" not in log.read_text():
        assert time.monotonic() < deadline, "no warning about the missing camera info"
        stamp = probe.now()
        depth = Image(**scene.depth_fields("16UC1"))
        depth.header.stamp = stamp
        probe.depth_pub.publish(depth)                  # depth, but never a camera info
        probe.image_pub.publish(image_msg(scene.colour(), "rgb8", stamp))
        time.sleep(0.2)
    assert "No frames in the last 5 s" in log.read_text() and proc.poll() is None
