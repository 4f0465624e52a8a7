"""The synseg node's inference thread: it segments the newest frame and hands the result to the outputs.

The subscription callback only ``put``s a frame into a one-frame slot; the worker thread takes the newest,
decodes it, runs the model and publishes. A model slower than the camera thus drops stale frames (counted)
instead of queueing them, and the executor's threads stay free for parameter and lifecycle calls.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np
from rclpy.lifecycle import LifecycleNode
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image

from synseg_ros import conversions
from synseg_ros.frame_input import Frame
from synseg_ros.frame_slot import LatestFrameSlot
from synseg_ros.outputs import SegmentationOutputs
from synseg_ros.segmenter import Segmenter
from synseg_ros.stats import FrameStats

try:  # ROS 2's cv_bridge where installed; it is not on PyPI, so numpy conversion is the fallback.
    from cv_bridge import CvBridge, CvBridgeError
except ImportError:
    CvBridge = CvBridgeError = None

WARN_THROTTLE_S = 5.0
POLL_S = 0.2


class ReasonThrottle:
    """Whether a warning may be logged now, once per ``period`` for each kind of reason. rclpy's own throttle
    counts per line of code, so one frequent reason would hide every other reason logged from the same line.
    A reason's kind is its text without its numbers ("image is 10x10" and "image is 12x12" are one kind)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: dict[str, float] = {}

    def allows(self, reason: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        kind = re.sub(r"\d+", "#", reason)
        if now - self._last.get(kind, float("-inf")) < self.period:
            return False
        self._last[kind] = now
        return True


class FrameWorker:
    """Segments frames given to ``put`` on its own thread, newest first, from ``start`` to ``stop``.

    Args:
        node: the node whose logger and clock it uses.
        segmenter: the model.
        outputs: where each frame's result is published.
        stats: counters and timings shared with the subscription and the diagnostics.
        settings: returns the node's current parameter values (a new dict after every change).
        no_vocabulary: the warning to log (throttled) while the vocabulary is empty.
    """

    def __init__(self, node: LifecycleNode, segmenter: Segmenter, outputs: SegmentationOutputs, stats: FrameStats,
                 settings: Callable[[], Mapping[str, Any]], no_vocabulary: str) -> None:
        self._node = node
        self._logger = node.get_logger()
        self._segmenter = segmenter
        self._outputs = outputs
        self._stats = stats
        self._settings = settings
        self._no_vocabulary = no_vocabulary
        self._slot: LatestFrameSlot[Frame] = LatestFrameSlot()
        self._stop = threading.Event()
        self._bridge = CvBridge() if CvBridge is not None else None
        self._thread = threading.Thread(target=self._run, name="synseg-worker", daemon=True)
        self.topic = ""                 # the image topic, for warnings; set by the node once subscribed
        self._rejections = ReasonThrottle(WARN_THROTTLE_S)

    @property
    def conversion(self) -> str:
        """How images are decoded: cv_bridge or numpy."""
        return "cv_bridge" if self._bridge is not None else "numpy"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking frames and wait for the one in progress; nothing is published after this returns."""
        self._stop.set()
        self._slot.close()
        if self._thread.is_alive():
            self._thread.join()

    def put(self, frame: Frame) -> None:
        """The subscription callback: count the frame and leave it for the worker (replacing an untaken one)."""
        self._stats.count("received")
        stamp = Time.from_msg(frame.header.stamp)
        if stamp.nanoseconds > 0:  # transport and deserialisation, from the camera's stamp to here
            self._stats.add_stage("receive", (self._node.get_clock().now() - stamp).nanoseconds * 1e-9)
        if self._slot.put(frame):
            self._stats.count("dropped")

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = self._slot.take(timeout=POLL_S)
            if frame is None:
                continue
            started = time.monotonic()
            try:
                self._process(frame)
            except Exception as exc:  # a bad frame or a model error must not stop the stream
                self._stats.count("failed")
                self._logger.error(f"Segmentation failed: {type(exc).__name__}: {exc}",
                                   throttle_duration_sec=WARN_THROTTLE_S)
            rate = self._settings()["max_rate_hz"]
            if rate > 0:
                # Frames arriving while waiting replace each other in the slot and are counted as dropped.
                self._stop.wait(max(0.0, started + 1.0 / rate - time.monotonic()))

    def _decode(self, msg: Image | CompressedImage, max_pixels: int) -> np.ndarray:
        if isinstance(msg, CompressedImage):
            return conversions.compressed_to_rgb(msg.data, max_pixels)
        conversions.check_image_layout(msg.height, msg.width, msg.encoding, msg.step, len(msg.data), max_pixels)
        if self._bridge is not None:
            try:
                return np.asarray(self._bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
            except CvBridgeError:  # an encoding name this distribution's cv_bridge lacks (e.g. "yuyv")
                pass
        return conversions.image_to_rgb(msg)

    def _process(self, frame: Frame) -> None:
        msg, settings = frame.image, self._settings()
        if not settings["vocabulary"]:
            self._logger.warning(self._no_vocabulary, throttle_duration_sec=WARN_THROTTLE_S)
            return
        t0 = time.monotonic()
        try:
            rgb = self._decode(msg, settings["max_image_pixels"])
        except conversions.ImageFormatError as exc:
            self._stats.count("rejected")
            if self._rejections.allows(str(exc)):
                self._logger.warning(f"Rejected an image on {self.topic}: {exc}")
            return
        t1 = time.monotonic()
        result = self._segmenter.segment(rgb)
        t2 = time.monotonic()
        self._outputs.publish(frame, rgb, result, settings)
        t3 = time.monotonic()

        self._stats.count("processed")
        self._stats.add_stage("decode", t1 - t0)
        self._stats.add_stage("model", t2 - t1)
        self._stats.add_stage("publish", t3 - t2)
        stamp = Time.from_msg(msg.header.stamp)
        if stamp.nanoseconds > 0:  # unstamped images have no meaningful latency
            latency = (self._node.get_clock().now() - stamp).nanoseconds * 1e-9
            self._stats.add_latency(latency)
            self._stats.add_stage("overhead", latency - (t2 - t1))
