"""The synseg node: camera images in, one mask per label of a vocabulary that can change at run time out.

    ros2 launch synseg_ros segment.launch.py image_topic:=/camera/image_raw      # configured and activated
    ros2 run synseg_ros synseg_node --ros-args -r image:=/camera/image_raw -p autostart:=true
    python -m synseg_ros.node --ros-args ...

A managed (lifecycle) node: ``configure`` checks the parameters, loads the model and warms it up; ``activate``
subscribes to ``image`` (sensor_msgs/Image, or its compressed transport; with depth see synseg_ros.frame_input)
and starts publishing ``~/masks`` (synseg_ros/SegmentationMasks), ``~/label_image`` and ``~/overlay``
(sensor_msgs/Image) and the detections of synseg_ros.robot_outputs; ``deactivate`` unsubscribes; ``cleanup``
releases the model; ``shutdown`` works from any state and ends the process. ``/diagnostics`` reports the state
throughout. A worker thread segments the newest frame only, so a model slower than the camera drops stale frames
(counted) instead of queueing them.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import signal
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
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
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
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from synseg_ros import conversions, params, rendering
from synseg_ros.frame_input import Frame, FrameInput
from synseg_ros.frame_slot import LatestFrameSlot
from synseg_ros.interfaces import SegmentationMasks
from synseg_ros.robot_outputs import RobotOutputs
from synseg_ros.segmenter import Segmentation, Segmenter, SegmenterFactory, load_segmenter
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
WARMUP_FRAME = (480, 640, 3)        # one camera-sized frame through the model at configure
# The graph learns a publisher's node name some time after its endpoint: how long an incompatible-QoS
# warning waits for the name, and how often it looks.
QOS_NAME_WAIT_S = 5.0
QOS_NAME_POLL_S = 0.1
# The shutdown transition's reply is sent after its callback returns; the process ends this long after, so that
# the caller (`ros2 lifecycle set`) gets it instead of waiting forever for a reply that died with the process.
SHUTDOWN_REPLY_S = 0.5
UNKNOWN_NODE = "_NODE_NAME_UNKNOWN_"
NO_VOCABULARY = ("No vocabulary: the model's card lists no classes; no frame is segmented until one is set, e.g. "
                 "ros2 param set {node} vocabulary \"[person, chair, door]\" (config/synseg.yaml suggests "
                 "starting vocabularies for indoor and outdoor robots)")


class SynSegNode(LifecycleNode):
    """Open-vocabulary segmentation of a camera stream, as a managed node.

    Args:
        segmenter_factory: builds the segmenter from the parameter values at ``configure`` (tests pass a fake).
        on_exit: called with the process exit code when the node is done: after ``shutdown`` (0) or a failed
            autostart (1).
        **kwargs: passed to ``rclpy.node.Node``.

    Raises:
        ValueError: a start-up parameter value is invalid (logged as fatal first).
    """

    def __init__(self, segmenter_factory: SegmenterFactory = load_segmenter,
                 on_exit: Callable[[int], None] = lambda code: None, **kwargs: Any) -> None:
        # Set first: rclpy destroys a node whose construction failed, and destroy_node needs them.
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        super().__init__("synseg", **kwargs)
        self._factory = segmenter_factory
        self._on_exit = on_exit
        self._segmenter: Segmenter | None = None
        self._image_sub = None
        self._input: FrameInput | None = None
        self._outputs: tuple[Any, Any, Any] | None = None     # masks, label image and overlay publishers
        self._robot: RobotOutputs | None = None
        self._slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self._masks = conversions.MaskBuffers()
        self._mask_images: list[Image] = []
        self._last_error = ""
        self._diag_timer = None
        self._stats = FrameStats(window=STATS_WINDOW_S)
        self._bridge = CvBridge() if CvBridge is not None else None

        params.declare_parameters(self)
        self._settings = {spec.name: self._value(spec.name) for spec in params.PARAMETERS}
        self.add_pre_set_parameters_callback(self._coerce_parameters)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._check_startup_parameters()

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", OUTPUT_QOS)
        # Their own groups: diagnostics go on while a transition loads the model (default group), and
        # one-shot timers run beside both.
        self._diag_timer = self.create_timer(self._settings["diagnostics_period"], self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        self._later_group = MutuallyExclusiveCallbackGroup()
        if self._settings["autostart"]:
            self._call_later(0.0, self._autostart, group=self.default_callback_group)
        else:
            self.get_logger().info("Unconfigured: `ros2 lifecycle set <node> configure`, then `activate`")

    # ----------------------------------------------------------------------------------------- start-up

    def _value(self, name: str) -> Any:
        """A parameter's value, None when it is declared without one (an unset prompt_templates)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _check_startup_parameters(self) -> None:
        """Run the start-up values through the coercion and checks of later changes, before any model loads."""
        settable = [spec.name for spec in params.PARAMETERS
                    if spec.changes != params.START_UP and self._settings[spec.name] is not None]
        result = self.set_parameters_atomically([self.get_parameter(name) for name in settable])
        reason = result.reason
        if result.successful:
            try:
                for spec in params.PARAMETERS:
                    if spec.changes == params.START_UP:
                        params.validate(spec.name, self._settings[spec.name], self._settings)
            except ValueError as exc:
                reason = str(exc)
        if reason:
            self.get_logger().fatal(f"Invalid start-up parameters: {reason}")
            raise ValueError(reason)

    def _autostart(self) -> None:
        """configure + activate at start-up; a failure is fatal (the process exits with 1)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal(f"autostart: configure failed: {self._last_error}")
            self._on_exit(1)
        elif self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal(f"autostart: activate failed: {self._last_error}")
            self._on_exit(1)

    def _call_later(self, delay: float, callback: Callable[[], None], group: Any = None) -> None:
        """Run ``callback`` once, ``delay`` seconds from now, in the executor."""
        timer = None

        def fire() -> None:
            timer.cancel()
            self.destroy_timer(timer)
            callback()

        timer = self.create_timer(delay, fire, callback_group=group or self._later_group)

    # -------------------------------------------------------------------------------------- lifecycle

    def state(self) -> str:
        """The lifecycle state: unconfigured, inactive, active, finalized, or a transition (configuring, ...)."""
        return self._state_machine.current_state[1]

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Check every parameter together, load the model, encode the vocabulary, warm up, create publishers."""
        settings = self._settings
        source = settings["checkpoint"] or "the offline default model"
        started = time.monotonic()
        try:
            for name, value in settings.items():
                if value is not None:
                    params.validate(name, value, settings)
            segmenter = self._factory(settings)
            loaded = time.monotonic()
            self.get_logger().info(f"Model: {segmenter.model_card.get('summary', '(no model card)')}")
            vocabulary = settings["vocabulary"] or list(segmenter.model_card.get("classes") or [])
            if vocabulary and not settings["vocabulary"]:  # unset: the card's classes, checked as a set is
                result = self.set_parameters([Parameter("vocabulary", value=vocabulary)])[0]
                if not result.successful:
                    raise ValueError(f"the model card's classes: {result.reason}")
            if vocabulary:
                segmenter.set_vocabulary(vocabulary, settings["prompt_templates"])
                segmenter.segment(np.zeros(WARMUP_FRAME, np.uint8))
            else:
                self.get_logger().warning(NO_VOCABULARY.format(node=self.get_fully_qualified_name()))
        except Exception as exc:  # any failure to build the model fails the transition; say exactly which
            return self._fail(f"Failed to load the segmentation model from {source} (device={settings['device']}, "
                              f"backend={settings['backend']}, precision={settings['precision']}): "
                              f"{type(exc).__name__}: {exc}")
        self._segmenter = segmenter
        self._outputs = (self.create_publisher(SegmentationMasks, "~/masks", OUTPUT_QOS),
                         self.create_publisher(Image, "~/label_image", OUTPUT_QOS),
                         self.create_publisher(Image, "~/overlay", OUTPUT_QOS))
        self._robot = RobotOutputs.create(self, settings, OUTPUT_QOS)
        self._last_error = ""
        self.get_logger().info(
            f"Configured in {time.monotonic() - started:.1f} s: {source} loaded in {loaded - started:.1f} s, "
            f"backend={segmenter.backend_name}, device={segmenter.device}, " + (
                f"vocabulary of {len(vocabulary)} labels encoded and the model warmed up" if vocabulary
                else "no vocabulary yet"))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the images and start the worker."""
        settings = self._settings
        qos = QoSProfile(depth=settings["image_queue_depth"], history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.VOLATILE,
                         reliability=(ReliabilityPolicy.RELIABLE if settings["image_reliability"] == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT))
        self._stop.clear()
        self._slot = LatestFrameSlot()
        try:
            self._input = FrameInput(self, settings, qos, self._on_image,
                                     SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        except Exception as exc:  # rclpy would swallow it and fail the transition without a word
            return self._fail(f"Failed to subscribe: {type(exc).__name__}: {exc}")
        self._image_sub = self._input.subscription
        self._worker = threading.Thread(target=self._run_worker, name="synseg-worker", daemon=True)
        self._worker.start()
        masks, labels, overlay = self._outputs
        self.get_logger().info(
            f"Active: subscribed to {self._input.describe()} with QoS reliability="
            f"{qos.reliability.name.lower()}, durability={qos.durability.name.lower()}, "
            f"history={qos.history.name.lower()}, depth={qos.depth}; publishing {masks.topic_name}, "
            f"{labels.topic_name}, {overlay.topic_name}"
            f"{', ' + self._robot.describe() if self._robot else ''} (reliable, depth {OUTPUT_QOS.depth}); "
            f"image conversion: {'cv_bridge' if self._bridge else 'numpy'}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the worker; no masks are published after this returns."""
        self._stop_processing()
        self.get_logger().info("Inactive: unsubscribed, model kept")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and the publishers."""
        self._release()
        self.get_logger().info("Unconfigured: model released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop, release, and let the process end."""
        self._stop_processing()
        self._release()
        self.get_logger().info(f"Finalized (shut down from {state.label})")
        self._call_later(SHUTDOWN_REPLY_S, lambda: self._on_exit(0))
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: drop everything and go back to unconfigured."""
        self._stop_processing()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, message: str) -> TransitionCallbackReturn:
        self._last_error = message
        self.get_logger().error(message)
        return TransitionCallbackReturn.FAILURE

    def _stop_processing(self) -> None:
        if self._input is not None:
            self._input.destroy()
            self._input = self._image_sub = None
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _release(self) -> None:
        for publisher in self._outputs or ():
            self.destroy_publisher(publisher)
        self._outputs = None
        if self._robot is not None:
            self._robot.destroy()
            self._robot = None
        self._segmenter = None
        self._masks = conversions.MaskBuffers()
        self._mask_images = []
        gc.collect()
        torch = sys.modules.get("torch")    # loaded only by a real model; give its GPU memory back too
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --------------------------------------------------------------------------------------- parameters

    def _coerce_parameters(self, parameters: list[Parameter]) -> list[Parameter]:
        return [params.coerce(p) for p in parameters]

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """The one validating callback: rejects with a reason, or encodes a new vocabulary."""
        new = {**self._settings, **{p.name: p.value for p in parameters}}
        try:
            for p in parameters:
                spec = params.SPECS.get(p.name)
                if spec is not None and spec.changes == params.UNCONFIGURED and self.state() != "unconfigured":
                    raise ValueError(f"{p.name} can change only while the node is unconfigured (it is "
                                     f"{self.state()}): deactivate and clean it up first; the new value "
                                     f"applies at the next configure")
                params.validate(p.name, p.value, new)
            if (self._segmenter is not None and new["vocabulary"]
                    and any(p.name in params.STRING_ARRAYS for p in parameters)):
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
        names = {p.name for p in parameters}
        if "threshold" in names and self._segmenter is not None:
            self._segmenter.threshold = self._settings["threshold"]
        if "diagnostics_period" in names and self._diag_timer is not None:
            self._diag_timer.timer_period_ns = int(self._settings["diagnostics_period"] * 1e9)

    # ------------------------------------------------------------------------------------------- images

    def _on_image(self, frame: Frame) -> None:
        self._stats.count("received")
        stamp = Time.from_msg(frame.header.stamp)
        if stamp.nanoseconds > 0:  # transport and deserialisation, from the camera's stamp to here
            self._stats.add_stage("receive", (self.get_clock().now() - stamp).nanoseconds * 1e-9)
        if self._slot.put(frame):
            self._stats.count("dropped")

    def _on_incompatible_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        self._warn_incompatible_qos(qos_policy_name_from_kind(event.last_policy_kind),
                                    time.monotonic() + QOS_NAME_WAIT_S)

    def _warn_incompatible_qos(self, policy: str, deadline: float) -> None:
        """Warn naming the incompatible publishers, once the graph knows their names (or the wait is over)."""
        subscription = self._image_sub
        if subscription is None:
            return
        offenders = []
        for info in self.get_publishers_info_by_topic(subscription.topic_name):
            compatibility, reason = qos_check_compatible(info.qos_profile, subscription.qos_profile)
            if compatibility == QoSCompatibility.ERROR:
                offenders.append((info.node_name, f"{info.node_namespace.rstrip('/')}/{info.node_name}: {reason}"))
        if (not offenders or any(name == UNKNOWN_NODE for name, _ in offenders)) and time.monotonic() < deadline:
            self._call_later(QOS_NAME_POLL_S, lambda: self._warn_incompatible_qos(policy, deadline))
            return
        self.get_logger().warning(
            f"A publisher on {subscription.topic_name} offers QoS incompatible with this subscription "
            f"(policy {policy}); no images will arrive from it. {' '.join(text for _, text in offenders)} "
            f"Fix: set image_reliability to match the publisher (best_effort receives from both), or change "
            f"the publisher's QoS.")

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

    def _decode(self, msg: Image | CompressedImage) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return conversions.compressed_to_rgb(msg.data, self._settings["max_image_pixels"])
        conversions.check_image_layout(msg.height, msg.width, msg.encoding, msg.step, len(msg.data),
                                       self._settings["max_image_pixels"])
        if self._bridge is not None:
            try:
                return np.asarray(self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            except CvBridgeError:  # an encoding name this distribution's cv_bridge lacks (e.g. "yuyv")
                pass
        return conversions.image_to_rgb(msg)

    def _process(self, frame: Frame) -> None:
        msg = frame.image
        settings = self._settings
        if not settings["vocabulary"]:
            self.get_logger().warning(NO_VOCABULARY.format(node=self.get_fully_qualified_name()),
                                      throttle_duration_sec=WARN_THROTTLE_S)
            return
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
        self._publish(frame, rgb, result, float(settings["threshold"]), settings)
        t3 = time.monotonic()

        self._stats.count("processed")
        self._stats.add_stage("decode", t1 - t0)
        self._stats.add_stage("model", t2 - t1)
        self._stats.add_stage("publish", t3 - t2)
        stamp = Time.from_msg(msg.header.stamp)
        if stamp.nanoseconds > 0:  # unstamped images have no meaningful latency
            latency = (self.get_clock().now() - stamp).nanoseconds * 1e-9
            self._stats.add_latency(latency)
            self._stats.add_stage("overhead", latency - (t2 - t1))

    def _publish(self, frame: Frame, rgb: np.ndarray, result: Segmentation, threshold: float,
                 settings: Mapping[str, Any]) -> None:
        header, robot = frame.header, self._robot
        masks_pub, label_pub, overlay_pub = self._outputs
        want_masks = masks_pub.get_subscription_count() > 0
        want_labels = settings["publish_label_image"] and label_pub.get_subscription_count() > 0
        want_overlay = settings["publish_overlay"] and overlay_pub.get_subscription_count() > 0
        if robot is not None:
            robot.publish_label_info(header, result.labels, threshold)
        want_robot = robot is not None and robot.wanted()
        if not (want_masks or want_labels or want_overlay or want_robot):
            return
        masks = self._masks.fill(result.probabilities, threshold)
        if want_robot:
            robot.publish(frame, result, masks, settings)
        if want_masks:
            out = SegmentationMasks(header=header, labels=list(result.labels), threshold=threshold,
                                    scores=[float(s) for s in result.scores], masks=self._mask_messages(header))
            if settings["publish_probabilities"]:
                levels = np.clip(result.probabilities * 255.0 + 0.5, 0, 255).astype(np.uint8)
                out.probabilities = [Image(header=header, **conversions.mono8_fields(p)) for p in levels]
            masks_pub.publish(out)
        if not (want_labels or want_overlay):
            return
        label_map = rendering.label_image(result.probabilities, masks)
        if want_labels:
            label_pub.publish(Image(header=header, **conversions.mono8_fields(label_map)))
        if want_overlay:
            picture = rendering.overlay(rgb, list(result.labels), label_map, settings["overlay_alpha"])
            overlay_pub.publish(Image(header=header, **conversions.rgb_to_image_fields(picture)))

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

    # -------------------------------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        figures = self._stats.snapshot()
        state = self.state()
        segmenter, subscription = self._segmenter, self._image_sub
        if state != "active" or subscription is None:
            level = DiagnosticStatus.ERROR if self._last_error else DiagnosticStatus.OK
            summary = f"{state}: not segmenting" + (f"; {self._last_error}" if self._last_error else "")
        elif figures["input_rate_hz"] == 0.0:
            level = DiagnosticStatus.WARN
            summary = (f"no images on {subscription.topic_name} in the last {STATS_WINDOW_S:.0f} s "
                       f"({self.count_publishers(subscription.topic_name)} publishers)")
        else:
            level = DiagnosticStatus.OK
            summary = (f"{figures['input_rate_hz']:.1f} Hz in, {figures['processed_rate_hz']:.1f} Hz segmented, "
                       f"latency p50 {figures['latency_p50_ms']:.0f} ms")
        device = str(segmenter.device) if segmenter is not None else ""
        values = {"state": state,
                  **{k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in figures.items()},
                  "backend": str(segmenter.backend_name) if segmenter is not None else "", "device": device,
                  "vocabulary": ", ".join(self._settings["vocabulary"] or ()),
                  "threshold": f"{self._settings['threshold']:.3f}",
                  "image_topic": subscription.topic_name if subscription is not None else ""}
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: segmentation",
                                  message=summary, hardware_id=device,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()),
                                               status=[status]))

    def destroy_node(self) -> None:
        """Stop the worker thread, then the node."""
        self._stop.set()
        if self._worker is not None:
            self._slot.close()
            self._worker.join()
        super().destroy_node()


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line help; the node itself is configured with ROS parameters (--ros-args -p name:=value)."""
    lines = [f"  {spec.name} (default {spec.default!r}; changes {spec.changes}): {spec.description}"
             for spec in params.PARAMETERS]
    return argparse.ArgumentParser(
        prog="synseg_node", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Open-vocabulary segmentation node (SynSeg), a managed (lifecycle) node. Configure it with "
                    "ROS parameters, e.g.\n  synseg_node --ros-args -r image:=/camera/image_raw "
                    "-p vocabulary:=\"[person, chair]\" -p autostart:=true\nWithout autostart it waits "
                    "unconfigured: ros2 lifecycle set /synseg configure; ros2 lifecycle set /synseg activate",
        epilog="parameters:\n" + "\n".join(lines))


def keep_freed_memory() -> None:
    """Let glibc keep the memory of freed frames instead of returning it to the kernel.

    Every frame allocates and frees buffers of megabytes (the image, the masks, their messages). By default
    glibc serves them with mmap and unmaps them on free, so the next frame page-faults its memory back in,
    which costs milliseconds per frame; ROS 2's real-time guidance sets the same two options. No-op where
    the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3      # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 << 20)         # the largest value glibc accepts: 32 MB
    libc.mallopt(m_trim_threshold, 512 << 20)


def main(argv: Sequence[str] | None = None, segmenter_factory: SegmenterFactory = load_segmenter) -> int:
    """Run the node until SIGINT, SIGTERM or its shutdown transition; returns the process exit code.

    The exit code is 1 when the start-up parameters are invalid or an autostart fails, else 0.

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``), ROS arguments
            after ``--ros-args``.
        segmenter_factory: see ``SynSegNode``.
    """
    args = ["synseg_node", *(sys.argv[1:] if argv is None else argv)]
    get_args_parser().parse_args(remove_ros_args(args)[1:])
    keep_freed_memory()
    # rclpy's own handlers would shut the context down the moment a signal arrives, under a worker that is
    # still publishing; here a signal only asks the main thread to stop the node in order, and a second one
    # (launch and `timeout` send SIGINT to the whole process group) changes nothing.
    done = threading.Event()
    exit_code = [0]

    def finish(code: int) -> None:
        exit_code[0] = max(exit_code[0], code)
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        try:
            node = SynSegNode(segmenter_factory, on_exit=finish)
        except ValueError:
            return 1  # already logged as fatal
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, done), name="synseg-executor", daemon=True)
        spinner.start()
        while not done.wait(timeout=1.0):
            pass
        executor.shutdown()
        # A daemon thread that is still inside rclpy's C++ code when the interpreter finalises aborts the
        # process ("terminate called without an active exception"): the spinner must be out first.
        spinner.join(timeout=5.0)
        if node.state() in ("unconfigured", "inactive", "active"):
            node.trigger_shutdown()         # stops the worker and releases the model, in this order
        node.destroy_node()
        return exit_code[0]
    finally:
        rclpy.try_shutdown()
        # The node is gone and the process only exits from here. Python puts back the default action (death
        # by the signal) of its own handlers while it finalises; ignored signals stay ignored, so a late one
        # cannot turn the exit code into -2.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _spin(executor: MultiThreadedExecutor, done: threading.Event) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        done.set()


if __name__ == "__main__":
    sys.exit(main())
