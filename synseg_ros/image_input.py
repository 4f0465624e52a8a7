"""The synseg node's image subscription, with the QoS its parameters ask for and the warnings of its events.

The subscriptions themselves (raw or compressed images; with ``use_depth``, depth and camera info synchronised
with them) are synseg_ros.frame_input's; the callback gets a ``Frame``.

A publisher whose QoS cannot match the subscription (a best-effort camera and ``image_reliability:
reliable``) delivers nothing; the subscription's event names it, once the graph knows its node's name.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import QoSMessageLostInfo, QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_policy_name_from_kind,
)

from synseg_ros.frame_input import Frame, FrameSubscriptions

# Why frames get lost between a camera and the node, and what helps: said once per subscription.
LOST_HINT = ("{count} frames on {topic} were lost before they reached the node (the middleware saw gaps in the "
             "publisher's sequence numbers). With Fast DDS, frames over 512 KB (640x480 rgb8 is 900 KB) need a "
             "larger shared-memory segment on the camera's side: start the camera with "
             "FASTDDS_DEFAULT_PROFILES_FILE (FASTRTPS_DEFAULT_PROFILES_FILE for Jazzy's Fast DDS 2) set to a "
             "profile like this package's config/fastdds_loopback.xml, or "
             "use image_transport:=compressed, or another middleware. /diagnostics counts them "
             "(input_frames_lost).")

# The graph learns a publisher's node name some time after its endpoint: how long an incompatible-QoS
# warning waits for the name, and how often it looks.
QOS_NAME_WAIT_S = 5.0
QOS_NAME_POLL_S = 0.1
UNKNOWN_NODE = "_NODE_NAME_UNKNOWN_"


def image_qos(settings: Mapping[str, Any]) -> QoSProfile:
    """The subscription's QoS: sensor data (REP-2003) with the reliability and depth of the parameters."""
    return QoSProfile(depth=settings["image_queue_depth"], history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE,
                      reliability=(ReliabilityPolicy.RELIABLE if settings["image_reliability"] == "reliable"
                                   else ReliabilityPolicy.BEST_EFFORT))


class ImageInput:
    """The subscription to ``image`` from ``activate`` to ``deactivate``; ``callback`` gets every frame.

    Its own callback group, so that encoding a new vocabulary (a parameter callback) never delays intake.
    """

    def __init__(self, node: LifecycleNode, settings: Mapping[str, Any], callback: Callable[[Frame], None],
                 on_lost: Callable[[int], None]) -> None:
        self._node = node
        self._on_lost = on_lost
        self._warned_lost = False
        self._poll_timer = None
        self.qos = image_qos(settings)
        self._frames = FrameSubscriptions(
            node, settings, self.qos, callback, MutuallyExclusiveCallbackGroup(),
            SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos,
                                       message_lost=self._on_message_lost))
        self.subscription = self._frames.subscription

    @property
    def topic(self) -> str:
        return self.subscription.topic_name

    def describe(self) -> str:
        """The topic and its QoS, for the node's log."""
        qos = self.qos
        return (f"{self.topic} with QoS reliability={qos.reliability.name.lower()}, "
                f"durability={qos.durability.name.lower()}, history={qos.history.name.lower()}, depth={qos.depth}"
                f"{self._frames.describe_depth()}")

    def publisher_count(self) -> int:
        return self._node.count_publishers(self.topic)

    def destroy(self) -> None:
        """Unsubscribe (no frame reaches ``callback`` after this returns)."""
        self._cancel_poll()
        self._frames.destroy()

    def _on_message_lost(self, info: QoSMessageLostInfo) -> None:
        self._on_lost(info.total_count_change)
        if not self._warned_lost:
            self._warned_lost = True
            self._node.get_logger().warning(LOST_HINT.format(count=info.total_count_change, topic=self.topic))

    def _cancel_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._node.destroy_timer(self._poll_timer)
            self._poll_timer = None

    def _on_incompatible_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        if self._poll_timer is not None:
            return                      # already waiting for the names
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        deadline = time.monotonic() + QOS_NAME_WAIT_S
        self._poll_timer = self._node.create_timer(QOS_NAME_POLL_S, lambda: self._warn_incompatible(policy, deadline),
                                                   callback_group=MutuallyExclusiveCallbackGroup())

    def _warn_incompatible(self, policy: str, deadline: float) -> None:
        """Warn naming the incompatible publishers, once the graph knows their names (or the wait is over)."""
        offenders = []
        for info in self._node.get_publishers_info_by_topic(self.topic):
            compatibility, reason = qos_check_compatible(info.qos_profile, self.subscription.qos_profile)
            if compatibility == QoSCompatibility.ERROR:
                offenders.append((info.node_name, f"{info.node_namespace.rstrip('/')}/{info.node_name}: {reason}"))
        if (not offenders or any(name == UNKNOWN_NODE for name, _ in offenders)) and time.monotonic() < deadline:
            return
        self._cancel_poll()
        self._node.get_logger().warning(
            f"A publisher on {self.topic} offers QoS incompatible with this subscription "
            f"(policy {policy}); no images will arrive from it. {' '.join(text for _, text in offenders)} "
            f"Fix: set image_reliability to match the publisher (best_effort receives from both; it changes only "
            f"while the node is unconfigured: deactivate, clean up, set it, configure), or change the "
            f"publisher's QoS.")
