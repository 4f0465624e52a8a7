"""The synseg node's ``/diagnostics``: one status, published every ``diagnostics_period`` seconds in every state.

``node_status`` turns what the node reports (``NodeReport``) into a ``diagnostic_msgs/DiagnosticStatus``:
its level (ERROR after a failed configure, WARN when active and no images arrive, else OK), a one-line
summary and the figures of ``FrameStats`` as key/value pairs. ``DiagnosticsPublisher`` owns the publisher and
the timer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import Header

from synseg_ros.outputs import OUTPUT_QOS


@dataclass
class NodeReport:
    """What the node knows at one moment: its lifecycle state, model, input and the figures of FrameStats."""

    state: str
    window_s: float                         # the window the rates are measured over
    figures: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""
    image_topic: str = ""                   # empty while not subscribed
    image_publishers: int = 0
    backend: str = ""
    device: str = ""
    vocabulary: Sequence[str] = ()
    threshold: float = 0.0                  # the mask rule in force (the card's, or the parameters')
    presence_threshold: float = 0.0


# The share of input frames the middleware may lose over the window before the status is a warning.
LOST_WARN_SHARE = 0.10


def node_status(name: str, report: NodeReport) -> DiagnosticStatus:
    """The DiagnosticStatus of ``report``, named ``name``."""
    figures = report.figures
    if report.state != "active" or not report.image_topic:
        level = DiagnosticStatus.ERROR if report.last_error else DiagnosticStatus.OK
        summary = f"{report.state}: not segmenting" + (f"; {report.last_error}" if report.last_error else "")
    elif figures.get("input_lost_share", 0.0) > LOST_WARN_SHARE:
        level = DiagnosticStatus.WARN
        summary = (f"{100 * figures['input_lost_share']:.0f}% of the frames on {report.image_topic} lost in the "
                   f"middleware in the last {report.window_s:.0f} s (the node's log says why)")
    elif figures["input_rate_hz"] == 0.0:
        level = DiagnosticStatus.WARN
        summary = (f"no images on {report.image_topic} in the last {report.window_s:.0f} s "
                   f"({report.image_publishers} publishers)")
    else:
        level = DiagnosticStatus.OK
        summary = (f"{figures['input_rate_hz']:.1f} Hz in, {figures['processed_rate_hz']:.1f} Hz segmented, "
                   f"latency p50 {figures['latency_p50_ms']:.0f} ms")
    values = {"state": report.state,
              **{k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in figures.items()},
              "backend": report.backend, "device": report.device, "vocabulary": ", ".join(report.vocabulary),
              "threshold": f"{report.threshold:.3f}", "presence_threshold": f"{report.presence_threshold:.3f}",
              "image_topic": report.image_topic}
    return DiagnosticStatus(level=level, name=name, message=summary, hardware_id=report.device,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


class DiagnosticsPublisher:
    """Publishes ``node_status(report())`` on ``/diagnostics`` every ``period`` seconds.

    Its timer has its own callback group, so that diagnostics go on while a transition loads the model.
    """

    def __init__(self, node: LifecycleNode, period: float, report: Callable[[], NodeReport]) -> None:
        self._node = node
        self._report = report
        self._name = f"{node.get_fully_qualified_name()}: segmentation"
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        self._timer = node.create_timer(period, self.publish, callback_group=MutuallyExclusiveCallbackGroup())

    def set_period(self, period: float) -> None:
        """Publish every ``period`` seconds from now on."""
        self._timer.timer_period_ns = int(period * 1e9)

    def publish(self) -> None:
        """Publish the current status once."""
        status = node_status(self._name, self._report())
        self._pub.publish(DiagnosticArray(header=Header(stamp=self._node.get_clock().now().to_msg()),
                                          status=[status]))
