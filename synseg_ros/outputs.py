"""What the synseg node publishes for one segmented frame: the masks message, the label image, the overlay,
and the detections of synseg_ros.robot_outputs.

``SegmentationOutputs`` owns the output publishers from ``configure`` to ``cleanup`` and turns one frame's
result into messages; an output nobody subscribes to costs nothing. Another output is one more publisher here
and one more branch in ``publish``: the node and its worker do not change.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from synseg_ros import conversions, rendering
from synseg_ros.frame_input import Frame
from synseg_ros.interfaces import SegmentationMasks
from synseg_ros.robot_outputs import RobotOutputs
from synseg_ros.segmenter import Segmentation

# Output topics publish reliably: a reliable publisher matches both reliable and best-effort subscribers.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)


class SegmentationOutputs:
    """The publishers of ``~/masks``, ``~/label_image`` and ``~/overlay``, and the messages of one frame.

    Called from one thread at a time (the node's worker): the mask buffers are reused frame after frame.
    """

    def __init__(self, node: LifecycleNode, settings: Mapping[str, Any]) -> None:
        self._node = node
        self._masks_pub = node.create_publisher(SegmentationMasks, "~/masks", OUTPUT_QOS)
        self._label_pub = node.create_publisher(Image, "~/label_image", OUTPUT_QOS)
        self._overlay_pub = node.create_publisher(Image, "~/overlay", OUTPUT_QOS)
        self._masks = conversions.MaskBuffers()
        self._mask_images: list[Image] = []
        # vision_msgs' outputs; None (after one warning) where vision_msgs is not installed.
        self._robot = RobotOutputs.create(node, settings, OUTPUT_QOS)

    def describe(self) -> str:
        """The topics and their QoS, for the node's log."""
        topics = ", ".join(p.topic_name for p in (self._masks_pub, self._label_pub, self._overlay_pub))
        if self._robot is not None:
            topics += f", {self._robot.describe()}"
        return f"{topics} (reliable, depth {OUTPUT_QOS.depth})"

    def destroy(self) -> None:
        """Destroy the publishers and drop the buffers."""
        for publisher in (self._masks_pub, self._label_pub, self._overlay_pub):
            self._node.destroy_publisher(publisher)
        if self._robot is not None:
            self._robot.destroy()
        self._masks = conversions.MaskBuffers()
        self._mask_images = []

    def publish(self, frame: Frame, rgb: np.ndarray, result: Segmentation, settings: Mapping[str, Any]) -> None:
        """Publish one frame's result to the outputs that have subscribers, each with the frame's header.

        Args:
            frame: the source image (its header), and its depth and camera info with ``use_depth``.
            rgb: (H, W, 3) uint8, the decoded source image (for the overlay).
            result: the segmentation of ``rgb``: (K, H, W) activation maps with their labels, presence scores,
                which labels are present and the mask threshold.
            settings: the node's parameter values (which outputs are switched on, the overlay's opacity).
        """
        want_masks = self._masks_pub.get_subscription_count() > 0
        want_labels = settings["publish_label_image"] and self._label_pub.get_subscription_count() > 0
        want_overlay = settings["publish_overlay"] and self._overlay_pub.get_subscription_count() > 0
        header, robot, threshold = frame.header, self._robot, float(result.threshold)
        if robot is not None:
            robot.publish_label_info(header, result.labels, threshold)
        want_robot = robot is not None and robot.wanted()
        if not (want_masks or want_labels or want_overlay or want_robot):
            return
        masks = self._masks.fill(result.probabilities, threshold, result.present)
        if want_robot:
            robot.publish(frame, result, masks, settings)
        if want_masks:
            out = SegmentationMasks(header=header, labels=list(result.labels), threshold=threshold,
                                    scores=[float(s) for s in result.scores], masks=self._mask_messages(header))
            if settings["publish_probabilities"]:
                levels = np.clip(result.probabilities * 255.0 + 0.5, 0, 255).astype(np.uint8)
                out.probabilities = [Image(header=header, **conversions.mono8_fields(p)) for p in levels]
            self._masks_pub.publish(out)
        if not (want_labels or want_overlay):
            return
        label_map = rendering.label_image(result.probabilities, masks)
        if want_labels:
            self._label_pub.publish(Image(header=header, **conversions.mono8_fields(label_map)))
        if want_overlay:
            picture = rendering.overlay(rgb, list(result.labels), label_map, settings["overlay_alpha"])
            self._overlay_pub.publish(Image(header=header, **conversions.rgb_to_image_fields(picture)))

    def _mask_messages(self, header: Header) -> list[Image]:
        """One mono8 Image per mask, holding the mask buffers themselves (no copy), with this frame's header."""
        buffers = self._masks.arrays
        if len(self._mask_images) != len(buffers) or any(
                image.data is not buffer for image, buffer in zip(self._mask_images, buffers)):
            height, width = self._masks.shape
            # check_fields: the data setter then keeps an array.array as it is instead of copying it.
            self._mask_images = [Image(check_fields=True, height=height, width=width, encoding="mono8",
                                       is_bigendian=0, step=width) for _ in buffers]
            for image, buffer in zip(self._mask_images, buffers):
                image.data = buffer
        for image in self._mask_images:
            image.header = header
        return self._mask_images
