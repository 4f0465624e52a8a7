"""A camera stand-in: publishes the images of a folder on ``image_raw`` at a fixed rate.

    ros2 run synseg_ros image_folder_publisher --ros-args -r __ns:=/camera -p folder:=/data/VOC/JPEGImages
    python -m synseg_ros.image_folder_publisher --ros-args -p folder:=demo_out/scenes/val/JPEGImages

Images (.jpg, .jpeg, .png, .bmp) go out in file-name order with a fresh stamp, with the sensor-data QoS a
camera driver uses (REP-2003), looping by default.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from synseg_ros import conversions

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; ValueError if there are none."""
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} has no {', '.join(IMAGE_SUFFIXES)} files")
    return files


def read_rgb(path: Path, width: int = 0, height: int = 0) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, resized to width x height when both are set."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    if width and height:
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageFolderPublisher(Node):
    """Publishes a folder's images on ``image_raw``; ``done`` turns True after ``max_frames`` frames."""

    def __init__(self, **kwargs) -> None:
        super().__init__("image_folder_publisher", **kwargs)
        self.declare_parameter("folder", "", ParameterDescriptor(description="Folder of images to publish.",
                                                                 read_only=True))
        self.declare_parameter("rate_hz", 10.0, ParameterDescriptor(
            description="Frames per second.", read_only=True,
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=1000.0)]))
        self.declare_parameter("loop", True, ParameterDescriptor(description="Start again after the last image."))
        self.declare_parameter("encoding", "rgb8", ParameterDescriptor(
            description=f"Encoding on the wire: {', '.join(conversions.SUPPORTED_ENCODINGS)}.", read_only=True))
        self.declare_parameter("frame_id", "camera", ParameterDescriptor(description="header.frame_id"))
        for side in ("width", "height"):
            self.declare_parameter(side, 0, ParameterDescriptor(
                description=f"Resize to this {side} (with both set); 0: as stored.", read_only=True,
                integer_range=[IntegerRange(from_value=0, to_value=8192, step=1)]))
        self.declare_parameter("max_frames", 0, ParameterDescriptor(
            description="Stop after this many frames; 0: never.", read_only=True,
            integer_range=[IntegerRange(from_value=0, to_value=1 << 30, step=1)]))

        folder = Path(self.get_parameter("folder").value)
        self._files = list_images(folder)
        self._encoding = self.get_parameter("encoding").value
        if self._encoding not in conversions.SUPPORTED_ENCODINGS:
            raise ValueError(f"encoding {self._encoding!r} is not one of {conversions.SUPPORTED_ENCODINGS}")
        self._size = (self.get_parameter("width").value, self.get_parameter("height").value)
        self._max_frames = self.get_parameter("max_frames").value
        self._sent = 0
        self.done = False
        self._pub = self.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        rate = self.get_parameter("rate_hz").value
        self.create_timer(1.0 / rate, self._publish_next)
        self.get_logger().info(f"Publishing {len(self._files)} images from {folder} on {self._pub.topic_name} "
                               f"at {rate:g} Hz ({self._encoding}, best effort)")

    def _publish_next(self) -> None:
        if self.done:
            return
        index = self._sent % len(self._files)
        if self._sent and index == 0 and not self.get_parameter("loop").value:
            self.done = True
            return
        path = self._files[index]
        try:
            rgb = read_rgb(path, *self._size)
        except ValueError as exc:  # one unreadable file must not stop the stream
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            self._sent += 1
            return
        msg = Image(**conversions.rgb_to_image_fields(rgb, self._encoding))
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.get_parameter("frame_id").value
        self._pub.publish(msg)
        self._sent += 1
        if self._max_frames and self._sent >= self._max_frames:
            self.done = True


def get_args_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="image_folder_publisher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="parameters: folder, rate_hz (10), loop (true), encoding (rgb8), frame_id (camera), width, "
               "height (0: as stored), max_frames (0: never stop)")


def main(argv: Sequence[str] | None = None) -> int:
    """Publish until shutdown, or until max_frames or the end of a non-looping folder; returns the exit code."""
    args = ["image_folder_publisher", *(sys.argv[1:] if argv is None else argv)]
    get_args_parser().parse_args(remove_ros_args(args)[1:])
    rclpy.init(args=args)    # not `with rclpy.init(...)`: Jazzy's init returns None
    try:
        try:
            node = ImageFolderPublisher()
        except ValueError as exc:
            get_logger("image_folder_publisher").fatal(str(exc))
            return 1
        try:
            while rclpy.ok() and not node.done:
                rclpy.spin_once(node, timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            # launch and `timeout` signal the whole process group again: a second Ctrl-C must not interrupt
            # the clean-up (KeyboardInterrupt inside destroy_node, exit -2)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
