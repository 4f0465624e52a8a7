"""What a robot acts on, published by the synseg node: vision_msgs detections, LabelInfo, 3-D and points.

``RobotOutputs`` owns the publishers from ``configure`` to ``cleanup``: ``~/detections``
(vision_msgs/Detection2DArray) and ``~/label_info`` (vision_msgs/LabelInfo, transient local, republished when the
labels or the threshold change), and with ``use_depth`` ``~/detections_3d`` (vision_msgs/Detection3DArray) and
``~/points`` (sensor_msgs/PointCloud2). Detections and 3-D are computed only while someone subscribes. Where
vision_msgs is not installed the node runs without them (``create`` warns once and returns None).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from synseg_ros import depth, detections, regions, rendering
from synseg_ros.frame_input import Frame
from synseg_ros.segmenter import Segmentation

WARN_THROTTLE_S = 5.0
# LabelInfo is latched, as vision_msgs documents it: a subscriber that comes late still gets the current map.
LABEL_INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


class RobotOutputs:
    """The detection publishers and the messages of one frame. Called from one thread at a time (the worker).

    Args:
        node: the node.
        settings: its parameter values at configure (use_depth decides the 3-D publishers).
        qos: the QoS of the per-frame outputs (the node's other outputs').
    """

    def __init__(self, node: LifecycleNode, settings: Mapping[str, Any], qos: QoSProfile) -> None:
        types = detections.ROS_TYPES
        self._node = node
        self._detections = node.create_publisher(types.get("vision_msgs/msg/Detection2DArray"), "~/detections", qos)
        self._label_info = node.create_publisher(types.get("vision_msgs/msg/LabelInfo"), "~/label_info",
                                                 LABEL_INFO_QOS)
        self._publishers = [self._detections, self._label_info]
        self._detections_3d = self._points = None
        if settings["use_depth"]:
            self._detections_3d = node.create_publisher(types.get("vision_msgs/msg/Detection3DArray"),
                                                        "~/detections_3d", qos)
            self._points = node.create_publisher(types.get("sensor_msgs/msg/PointCloud2"), "~/points", qos)
            self._publishers += [self._detections_3d, self._points]
        self._labelled: tuple[tuple[str, ...], float] | None = None

    @classmethod
    def create(cls, node: LifecycleNode, settings: Mapping[str, Any], qos: QoSProfile) -> "RobotOutputs | None":
        """The outputs, or None with one warning where vision_msgs cannot be used."""
        try:
            return cls(node, settings, qos)
        except Exception as exc:  # ImportError, or its libraries missing when the publisher loads them
            node.get_logger().warning(
                f"Detections are off: vision_msgs cannot be used ({type(exc).__name__}: {exc}); install "
                f"ros-<distro>-vision-msgs (rosdep does) for ~/detections, ~/label_info and the 3-D outputs")
            return None

    def describe(self) -> str:
        """The topics, for the node's log."""
        return ", ".join(p.topic_name for p in self._publishers)

    def destroy(self) -> None:
        for publisher in self._publishers:
            self._node.destroy_publisher(publisher)
        self._publishers = []

    def wanted(self) -> bool:
        """Whether one frame's masks are needed here: someone subscribes to a per-frame output."""
        return any(p.get_subscription_count() > 0 for p in self._publishers[:1] + self._publishers[2:])

    def publish_label_info(self, header: Header, labels: Sequence[str], threshold: float) -> None:
        """Publish LabelInfo when the labels or the threshold differ from the last published (every frame)."""
        if self._labelled != (tuple(labels), threshold):
            self._label_info.publish(detections.label_info(detections.ROS_TYPES, header, labels, threshold))
            self._labelled = (tuple(labels), threshold)

    def publish(self, frame: Frame, result: Segmentation, masks: Sequence[np.ndarray],
                settings: Mapping[str, Any]) -> None:
        """Publish the detections that have subscribers.

        Args:
            frame: the frame (its header; with depth, its depth image and camera info).
            result: the segmentation of the frame's image.
            masks: the K (H, W) uint8 masks of ``result``.
            settings: the node's parameter values (min_region_pixels, max_depth, point_decimation).
        """
        labels = list(result.labels)
        want_2d = self._detections.get_subscription_count() > 0
        want_3d = frame.depth is not None and self._points is not None and (
            self._detections_3d.get_subscription_count() > 0 or self._points.get_subscription_count() > 0)
        if not (want_2d or want_3d):
            return
        found = regions.find_regions(masks, settings["min_region_pixels"])
        if want_2d:
            self._detections.publish(detections.detections_2d(detections.ROS_TYPES, frame.header, labels,
                                                              result.scores, found))
        if want_3d:
            self._publish_3d(frame, result, masks, found, settings)

    def _publish_3d(self, frame: Frame, result: Segmentation, masks: Sequence[np.ndarray],
                    found: list[regions.LabelRegions], settings: Mapping[str, Any]) -> None:
        try:
            camera = depth.PinholeCamera.from_camera_info(frame.camera_info)
            grid = depth.point_grid(frame.depth, camera, settings["max_depth"], settings["point_decimation"],
                                    expected_size=masks[0].shape if len(masks) else None)
        except depth.DepthError as exc:
            self._node.get_logger().warning(f"No 3-D for this frame: {exc}", throttle_duration_sec=WARN_THROTTLE_S)
            return
        header = Header(stamp=frame.depth.header.stamp, frame_id=frame.depth.header.frame_id)
        types = detections.ROS_TYPES
        if self._detections_3d.get_subscription_count() > 0:
            boxes = depth.region_boxes(grid, found)
            self._detections_3d.publish(detections.detections_3d(types, header, result.labels, result.scores, boxes))
        if self._points.get_subscription_count() > 0:
            label_map = rendering.label_image(grid.sample(result.probabilities), [grid.sample(m) for m in masks])
            self._points.publish(detections.point_cloud(types, header, depth.labelled_points(grid, label_map)))
