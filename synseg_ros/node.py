"""The synseg node: camera images in, one mask per label of a vocabulary that can change at run time out.

    ros2 run synseg_ros synseg_node --ros-args -r image:=/camera/image_raw -p vocabulary:="[person, chair]"
    python -m synseg_ros.node --ros-args ...

Subscribes ``image`` (sensor_msgs/Image); publishes ``~/masks`` (synseg_ros/SegmentationMasks),
``~/label_image`` and ``~/overlay`` (sensor_msgs/Image) and ``/diagnostics``. A worker thread segments the
newest frame only, so a model slower than the camera drops stale frames (counted) instead of queueing them.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
    qos_policy_name_from_kind,
)
from rclpy.time import Time
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from synseg_ros import conversions, params, rendering
from synseg_ros.frame_slot import LatestFrameSlot
from synseg_ros.interfaces import SegmentationMasks
from synseg_ros.stats import FrameStats

try:  # ROS 2's cv_bridge where installed; it is not on PyPI, so numpy conversion is the fallback.
    from cv_bridge import CvBridge, CvBridgeError
except ImportError:
    CvBridge = CvBridgeError = None

# Output topics publish reliably: a reliable publisher matches both reliable and best-effort subscribers.
OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
WARN_THROTTLE_S = 5.0
STATS_WINDOW_S = 5.0
WORKER_POLL_S = 0.2

SegmenterFactory = Callable[[Mapping[str, Any]], Any]


class ModelLoadError(RuntimeError):
    """The segmentation model could not be created; the node cannot run."""


def load_segmenter(settings: Mapping[str, Any]) -> Any:
    """The default factory: a ``synseg_model.Segmenter`` configured by the node's parameters."""
    # Imported here so that torch loads only when a real model is used (not for --help or test fakes).
    from synseg_model import Segmenter

    kwargs: dict[str, Any] = {"device": settings["device"], "backend": settings["backend"],
                              "threshold": settings["threshold"], "max_categories": settings["max_categories"]}
    if settings["input_size"]:
        kwargs["input_size"] = settings["input_size"]
    if settings["precision"] != "auto":
        kwargs["precision"] = settings["precision"]
    return Segmenter.from_checkpoint(settings["checkpoint"] or None, **kwargs)


class SynSegNode(Node):
    """Open-vocabulary segmentation of a camera stream.

    Args:
        segmenter_factory: builds the segmenter from the parameter values (tests pass a fake). The result
            needs ``set_vocabulary(labels, templates)``, ``segment(rgb) -> .labels, .probabilities (K, H, W),
            .scores (K,)``, ``threshold``, ``backend_name`` and ``device``.
        **kwargs: passed to ``rclpy.node.Node``.

    Raises:
        ModelLoadError: the model could not be loaded (logged as fatal first).
        ValueError: a start-up parameter value is invalid (logged as fatal first).
    """

    def __init__(self, segmenter_factory: SegmenterFactory = load_segmenter, **kwargs: Any) -> None:
        # Set first: rclpy destroys a node whose construction failed, and destroy_node needs them.
        self._stop = threading.Event()
        self._slot: LatestFrameSlot[Image] = LatestFrameSlot()
        self._worker: threading.Thread | None = None
        super().__init__("synseg", **kwargs)
        params.declare_parameters(self)
        self._settings = {spec.name: self._value(spec.name) for spec in params.PARAMETERS}
        self._check_startup_settings()
        self._segmenter = self._load_model(segmenter_factory)
        self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._apply_startup_vocabulary()

        self._stats = FrameStats(window=STATS_WINDOW_S)
        self._bridge = CvBridge() if CvBridge is not None else None
        self._image_qos = QoSProfile(
            depth=self._settings["image_queue_depth"], history=HistoryPolicy.KEEP_LAST,
            durability=DurabilityPolicy.VOLATILE,
            reliability=(ReliabilityPolicy.RELIABLE if self._settings["image_reliability"] == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT))
        self._masks_pub = self.create_publisher(SegmentationMasks, "~/masks", OUTPUT_QOS)
        self._label_pub = self.create_publisher(Image, "~/label_image", OUTPUT_QOS)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", OUTPUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        # Its own group, so that encoding a new vocabulary (a parameter callback) never delays image intake.
        self._image_sub = self.create_subscription(
            Image, "image", self._on_image, self._image_qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self.create_timer(self._settings["diagnostics_period"], self._publish_diagnostics)

        self._worker = threading.Thread(target=self._run_worker, name="synseg-worker", daemon=True)
        self._worker.start()
        qos = self._image_qos
        self.get_logger().info(
            f"Subscribed to {self._image_sub.topic_name} with QoS reliability={qos.reliability.name.lower()}, "
            f"durability={qos.durability.name.lower()}, history={qos.history.name.lower()}, depth={qos.depth}; "
            f"publishing {self._masks_pub.topic_name}, {self._label_pub.topic_name}, "
            f"{self._overlay_pub.topic_name} (reliable, depth {OUTPUT_QOS.depth}) and /diagnostics; "
            f"image conversion: {'cv_bridge' if self._bridge else 'numpy'}")

    # ----------------------------------------------------------------------------------------- start-up

    def _value(self, name: str) -> Any:
        """A parameter's value, None when it is declared without one (an unset prompt_templates)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _check_startup_settings(self) -> None:
        # The string lists go through the set-parameters path in _apply_startup_vocabulary instead.
        try:
            for name, value in self._settings.items():
                if name not in params.STRING_ARRAYS:
                    params.validate(name, value, self._settings)
        except ValueError as exc:
            self.get_logger().fatal(f"Invalid start-up parameters: {exc}")
            raise

    def _load_model(self, factory: SegmenterFactory) -> Any:
        settings = self._settings
        source = settings["checkpoint"] or "the offline default model"
        start = time.monotonic()
        try:
            segmenter = factory(settings)
        except Exception as exc:  # any failure to build the model is fatal; say exactly which
            self.get_logger().fatal(
                f"Failed to load the segmentation model from {source} (device={settings['device']}, "
                f"backend={settings['backend']}, precision={settings['precision']}): "
                f"{type(exc).__name__}: {exc}")
            raise ModelLoadError(str(exc)) from exc
        self.get_logger().info(f"Loaded {source} in {time.monotonic() - start:.1f} s: "
                               f"backend={segmenter.backend_name}, device={segmenter.device}")
        return segmenter

    def _apply_startup_vocabulary(self) -> None:
        """Run the start-up string lists through the same coercion, checks and encoding as later changes."""
        names = [name for name in params.STRING_ARRAYS if self._settings[name] is not None]
        result = self.set_parameters_atomically([self.get_parameter(name) for name in names])
        if not result.successful:
            self.get_logger().fatal(f"Invalid start-up parameters: {result.reason}")
            raise ValueError(result.reason)

    # --------------------------------------------------------------------------------------- parameters

    def _coerce_parameters(self, parameters: list[Parameter]) -> list[Parameter]:
        return [params.coerce(p) for p in parameters]

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """The one validating callback: rejects with a reason, or encodes a new vocabulary."""
        new = {**self._settings, **{p.name: p.value for p in parameters}}
        try:
            for p in parameters:
                params.validate(p.name, p.value, new)
            if any(p.name in params.STRING_ARRAYS for p in parameters):
                self._encode_vocabulary(new["vocabulary"], new["prompt_templates"])
        except Exception as exc:  # validation errors and anything the text encoder raises: keep the old value
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _encode_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None) -> None:
        start = time.monotonic()
        # The segmenter encodes first and then swaps (labels, embeddings) in one assignment, so the worker
        # sees either the old or the new vocabulary for a whole frame.
        self._segmenter.set_vocabulary(list(labels), list(templates) if templates else None)
        self.get_logger().info(f"Vocabulary {list(labels)} encoded in {(time.monotonic() - start) * 1e3:.0f} ms")

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        # A new dict, swapped in one assignment: the worker reads a consistent snapshot.
        self._settings = {**self._settings, **{p.name: p.value for p in parameters}}
        if any(p.name == "threshold" for p in parameters):
            self._segmenter.threshold = self._settings["threshold"]

    # ------------------------------------------------------------------------------------------- images

    def _on_image(self, msg: Image) -> None:
        self._stats.count("received")
        stamp = Time.from_msg(msg.header.stamp)
        if stamp.nanoseconds > 0:  # transport and deserialisation, from the camera's stamp to here
            self._stats.add_stage("receive", (self.get_clock().now() - stamp).nanoseconds * 1e-9)
        if self._slot.put(msg):
            self._stats.count("dropped")

    def _on_incompatible_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        topic = self._image_sub.topic_name
        reasons = []
        for info in self.get_publishers_info_by_topic(topic):
            compatibility, reason = qos_check_compatible(info.qos_profile, self._image_qos)
            if compatibility == QoSCompatibility.ERROR:
                reasons.append(f"{info.node_namespace.rstrip('/')}/{info.node_name}: {reason}")
        self.get_logger().warning(
            f"A publisher on {topic} offers QoS incompatible with this subscription "
            f"(policy {qos_policy_name_from_kind(event.last_policy_kind)}); no images will arrive from it. "
            f"{' '.join(reasons)} Fix: set image_reliability to match the publisher (best_effort receives "
            f"from both), or change the publisher's QoS.")

    def _run_worker(self) -> None:
        next_start = 0.0
        while not self._stop.is_set():
            msg = self._slot.take(timeout=WORKER_POLL_S)
            if msg is None:
                continue
            started = time.monotonic()
            try:
                self._process(msg)
            except Exception as exc:  # a bad frame or a model error must not stop the stream
                self._stats.count("failed")
                self.get_logger().error(f"Segmentation failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=WARN_THROTTLE_S)
            rate = self._settings["max_rate_hz"]
            if rate > 0:
                next_start = started + 1.0 / rate
                # Frames arriving while waiting replace each other in the slot and are counted as dropped.
                self._stop.wait(max(0.0, next_start - time.monotonic()))

    def _decode(self, msg: Image) -> np.ndarray:
        conversions.check_image_layout(msg.height, msg.width, msg.encoding, msg.step, len(msg.data),
                                       self._settings["max_image_pixels"])
        if self._bridge is not None:
            try:
                return np.asarray(self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            except CvBridgeError:  # an encoding name this distribution's cv_bridge lacks (e.g. "yuyv")
                pass
        return conversions.image_to_rgb(msg)

    def _process(self, msg: Image) -> None:
        settings = self._settings
        t0 = time.monotonic()
        try:
            rgb = self._decode(msg)
        except conversions.ImageFormatError as exc:
            self._stats.count("rejected")
            self.get_logger().warning(f"Rejected an image on {self._image_sub.topic_name}: {exc}",
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
        t1 = time.monotonic()
        result = self._segmenter.segment(rgb)
        t2 = time.monotonic()
        threshold = float(settings["threshold"])
        masks = result.probabilities > threshold
        self._publish(msg, rgb, result, masks, threshold, settings)
        t3 = time.monotonic()

        self._stats.count("processed")
        self._stats.add_stage("decode", t1 - t0)
        self._stats.add_stage("model", t2 - t1)
        self._stats.add_stage("publish", t3 - t2)
        stamp = Time.from_msg(msg.header.stamp)
        if stamp.nanoseconds > 0:  # unstamped images have no meaningful latency
            self._stats.add_latency((self.get_clock().now() - stamp).nanoseconds * 1e-9)

    def _publish(self, msg: Image, rgb: np.ndarray, result: Any, masks: np.ndarray, threshold: float,
                 settings: Mapping[str, Any]) -> None:
        header = msg.header
        if self._masks_pub.get_subscription_count() > 0:
            out = SegmentationMasks(header=header, labels=list(result.labels), threshold=threshold,
                                    scores=[float(s) for s in result.scores])
            out.masks = [Image(header=header, **conversions.mono8_fields(m)) for m in masks]
            if settings["publish_probabilities"]:
                levels = np.clip(result.probabilities * 255.0 + 0.5, 0, 255).astype(np.uint8)
                out.probabilities = [Image(header=header, **conversions.mono8_fields(p)) for p in levels]
            self._masks_pub.publish(out)
        want_labels = settings["publish_label_image"] and self._label_pub.get_subscription_count() > 0
        want_overlay = settings["publish_overlay"] and self._overlay_pub.get_subscription_count() > 0
        if not (want_labels or want_overlay):
            return
        label_map = rendering.label_image(result.probabilities, masks)
        if want_labels:
            self._label_pub.publish(Image(header=header, **conversions.mono8_fields(label_map)))
        if want_overlay:
            picture = rendering.overlay(rgb, list(result.labels), label_map, settings["overlay_alpha"])
            self._overlay_pub.publish(Image(header=header, **conversions.rgb_to_image_fields(picture)))

    # -------------------------------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        figures = self._stats.snapshot()
        topic = self._image_sub.topic_name
        if figures["input_rate_hz"] == 0.0:
            level = DiagnosticStatus.WARN
            summary = (f"no images on {topic} in the last {STATS_WINDOW_S:.0f} s "
                       f"({self.count_publishers(topic)} publishers)")
        else:
            level = DiagnosticStatus.OK
            summary = (f"{figures['input_rate_hz']:.1f} Hz in, {figures['processed_rate_hz']:.1f} Hz segmented, "
                       f"latency p50 {figures['latency_p50_ms']:.0f} ms")
        values = {**{k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in figures.items()},
                  "backend": str(self._segmenter.backend_name), "device": str(self._segmenter.device),
                  "vocabulary": ", ".join(self._settings["vocabulary"]),
                  "threshold": f"{self._settings['threshold']:.3f}", "image_topic": topic}
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: segmentation",
                                  message=summary, hardware_id=str(self._segmenter.device),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                               status=[status]))

    def destroy_node(self) -> None:
        """Stop the worker thread, then the node."""
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join()
        super().destroy_node()


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line help; the node itself is configured with ROS parameters (--ros-args -p name:=value)."""
    lines = [f"  {spec.name} (default {spec.default!r}{'' if spec.dynamic else ', read-only'}): "
             f"{spec.description}" for spec in params.PARAMETERS]
    return argparse.ArgumentParser(
        prog="synseg_node", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Open-vocabulary segmentation node (SynSeg). Configure it with ROS parameters, e.g.\n"
                    "  synseg_node --ros-args -r image:=/camera/image_raw -p vocabulary:=\"[person, chair]\"",
        epilog="parameters:\n" + "\n".join(lines))


def main(argv: Sequence[str] | None = None, segmenter_factory: SegmenterFactory = load_segmenter) -> int:
    """Run the node until shutdown; returns the process exit code (1 when the model or parameters fail).

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``), ROS arguments
            after ``--ros-args``.
        segmenter_factory: see ``SynSegNode``.
    """
    args = ["synseg_node", *(sys.argv[1:] if argv is None else argv)]
    get_args_parser().parse_args(remove_ros_args(args)[1:])
    with rclpy.init(args=args):
        try:
            node = SynSegNode(segmenter_factory)
        except (ModelLoadError, ValueError):
            return 1  # already logged as fatal
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.destroy_node()
    return 0


if __name__ == "__main__":
    sys.exit(main())
