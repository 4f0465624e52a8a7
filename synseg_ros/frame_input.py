"""The subscriptions behind the synseg node's image input: the camera image, raw or compressed, and optionally
depth and camera info (``image_input.ImageInput`` owns them, with their QoS and events).

With ``use_depth`` the image, ``depth`` and ``camera_info`` go through message_filters'
ApproximateTimeSynchronizer (stamps within ``depth_slop``), and each ``Frame`` holds all three; without it a
``Frame`` holds the image alone. ``image_transport: compressed`` subscribes to ``<image>/compressed``
(sensor_msgs/CompressedImage), where image_transport's compressed plugin publishes, ``<image>`` being the
resolved (remapped) name of ``image``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rclpy.callback_groups import CallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

# Frames each input keeps while it waits for its partners: a few frames of a 30 Hz camera.
SYNC_QUEUE = 10
# How often, while images arrive, the node checks that they find their depth and camera info.
SYNC_CHECK_S = 5.0


@dataclass(frozen=True)
class Frame:
    """One camera frame: the image (Image or CompressedImage) and, with depth, its depth image and camera info."""

    image: Any
    depth: Image | None = None
    camera_info: CameraInfo | None = None

    @property
    def header(self) -> Any:
        return self.image.header


def _message_filters() -> Any:
    """The message_filters module, or None where it is not installed (only with ../shared here)."""
    try:
        import message_filters
    except ImportError:
        return None
    return message_filters


class FrameSubscriptions:
    """The subscriptions; ``on_frame`` gets every (synchronised) frame.

    Args:
        node: the node.
        settings: its parameter values (image_transport, use_depth, depth_slop).
        qos: the image subscription's QoS (depth and camera info use the same).
        on_frame: called with each ``Frame``, on the executor.
        group: the callback group of every subscription.
        event_callbacks: the image subscription's event callbacks.
    """

    def __init__(self, node: LifecycleNode, settings: Mapping[str, Any], qos: QoSProfile,
                 on_frame: Callable[[Frame], None], group: CallbackGroup, event_callbacks: Any = None) -> None:
        self._node = node
        self._on_frame = on_frame
        compressed = settings["image_transport"] == "compressed"
        msg_type = CompressedImage if compressed else Image
        topic = node.resolve_topic_name("image") + "/compressed" if compressed else "image"
        filters = _message_filters() if settings["use_depth"] else None
        self.depth = filters is not None
        if settings["use_depth"] and filters is None:
            node.get_logger().warning("use_depth is set but message_filters is not installed "
                                      "(ros-<distro>-message-filters): subscribing to the image alone, no 3-D")
        self._subscriptions: list[Any] = []
        self._timer = None
        if not self.depth:
            self.subscription = node.create_subscription(msg_type, topic, lambda msg: on_frame(Frame(msg)), qos,
                                                         callback_group=group, event_callbacks=event_callbacks)
            self._subscriptions = [self.subscription]
            return
        inputs = [filters.Subscriber(node, msg_type, topic, qos_profile=qos, callback_group=group,
                                     event_callbacks=event_callbacks),
                  filters.Subscriber(node, Image, "depth", qos_profile=qos, callback_group=group),
                  filters.Subscriber(node, CameraInfo, "camera_info", qos_profile=qos, callback_group=group)]
        self._subscriptions = [f.sub for f in inputs]
        self.subscription = self._subscriptions[0]
        self._counts = [0, 0, 0, 0]         # image, depth, camera info, synchronised frames since the last check
        for index, source in enumerate(inputs):
            source.registerCallback(self._counter(index))
        # The subscribers' callbacks hold the synchroniser.
        filters.ApproximateTimeSynchronizer(inputs, SYNC_QUEUE, settings["depth_slop"]).registerCallback(
            self._on_synchronised)
        self._slop = float(settings["depth_slop"])
        self._timer = node.create_timer(SYNC_CHECK_S, self._check_sync, callback_group=group)

    def describe_depth(self) -> str:
        """The depth inputs, for the node's log ("" without depth)."""
        if not self.depth:
            return ""
        names = [s.topic_name for s in self._subscriptions[1:]]
        return f", synchronised with {' and '.join(names)} (slop {self._slop:g} s)"

    def destroy(self) -> None:
        """Unsubscribe (no frame reaches ``on_frame`` after this returns)."""
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def _counter(self, index: int) -> Callable[[Any], None]:
        def count(_msg: Any) -> None:
            self._counts[index] += 1
        return count

    def _on_synchronised(self, image: Any, depth: Image, camera_info: CameraInfo) -> None:
        self._counts[3] += 1
        self._on_frame(Frame(image, depth, camera_info))

    def _check_sync(self) -> None:
        """Warn when images arrive but none finds its depth and camera info (a topic missing or the slop too
        small): the node would otherwise stay silent."""
        images, depths, infos, synced = self._counts
        self._counts = [0, 0, 0, 0]
        if images and not synced:
            names = [s.topic_name for s in self._subscriptions]
            self._node.get_logger().warning(
                f"No frames in the last {SYNC_CHECK_S:.0f} s: {images} images on {names[0]}, {depths} depth images "
                f"on {names[1]}, {infos} camera infos on {names[2]}; every image needs a depth image and a camera "
                f"info whose stamps are within depth_slop ({self._slop:g} s) of its own "
                f"(remap depth and camera_info, e.g. the launch arguments depth_topic and camera_info_topic)")
