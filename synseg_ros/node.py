"""The synseg node: camera images in, one mask per label of a vocabulary that can change at run time out.

    ros2 launch synseg_ros segment.launch.py image_topic:=/camera/image_raw      # configured and activated
    ros2 run synseg_ros synseg_node --ros-args -r image:=/camera/image_raw -p autostart:=true
    python -m synseg_ros.node --ros-args ...

A managed (lifecycle) node: ``configure`` checks the parameters, loads the model and warms it up; ``activate``
subscribes to ``image`` (sensor_msgs/Image) and starts publishing ``~/masks`` (synseg_ros/SegmentationMasks),
``~/label_image`` and ``~/overlay`` (sensor_msgs/Image); ``deactivate`` unsubscribes; ``cleanup`` releases the
model; ``shutdown`` works from any state and ends the process. ``/diagnostics`` reports the state throughout.
A worker thread segments the newest frame only, so a model slower than the camera drops stale frames
(counted) instead of queueing them.

This module is the lifecycle; its parts are their own modules: ``params`` (the parameter table and its
callbacks), ``image_input`` (the subscription and its QoS events), ``worker`` (the inference thread),
``outputs`` (the publishers of one frame's results) and ``diagnostics``.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args

from synseg_model.masks import MaskRule
from synseg_ros import params
from synseg_ros.diagnostics import DiagnosticsPublisher, NodeReport
from synseg_ros.executor import NodeExecutor
from synseg_ros.image_input import ImageInput
from synseg_ros.memory import configure_malloc, return_freed_memory
from synseg_ros.outputs import SegmentationOutputs
from synseg_ros.segmenter import Segmenter, SegmenterFactory, labels_off_card, load_segmenter, mask_rule_values
from synseg_ros.stats import FrameStats
from synseg_ros.worker import FrameWorker

STATS_WINDOW_S = 5.0
# How long a signal waits for a transition in progress (a model that loads, downloads or warms up) before the
# process ends without it: the node is gone within 2 s of Ctrl-C whatever it was doing.
INTERRUPT_GRACE_S = 1.0
# How often the main thread gives the memory freed meanwhile back to the kernel (synseg_ros.memory).
RETURN_MEMORY_EVERY_S = 60.0
WARMUP_FRAME = (480, 640, 3)        # one camera-sized frame through the model at configure
# The shutdown transition's reply is sent after its callback returns; the process ends this long after, so that
# the caller (`ros2 lifecycle set`) gets it instead of waiting forever for a reply that died with the process.
SHUTDOWN_REPLY_S = 0.5
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
        # Set first: rclpy destroys a node whose construction failed, and destroy_node needs it.
        self._worker: FrameWorker | None = None
        super().__init__("synseg", **kwargs)
        self._factory = segmenter_factory
        self._on_exit = on_exit
        self._segmenter: Segmenter | None = None
        self._input: ImageInput | None = None
        self._outputs: SegmentationOutputs | None = None
        self._last_error = ""
        self._warned_labels: set[str] = set()
        self.stopping = False           # set by main() on a signal: no transition starts after it
        self._loading = 0               # model loads and vocabulary encodings in progress (executor threads)
        self._loading_lock = threading.Lock()
        self._stats = FrameStats(window=STATS_WINDOW_S)
        self._diagnostics: DiagnosticsPublisher | None = None

        try:
            self._params = params.NodeParameters(self, self.state, self._encode_vocabulary,
                                                 self._apply_parameters, self._model_rule_values)
            self._params.check_start_up()
        except ValueError as exc:
            self.get_logger().fatal(f"Invalid start-up parameters: {exc}")
            raise
        self._diagnostics = DiagnosticsPublisher(self, self._settings["diagnostics_period"], self._report)
        # One-shot timers run in their own group, beside the transitions (default group) and the diagnostics.
        self._later_group = MutuallyExclusiveCallbackGroup()
        if self._settings["autostart"]:
            self._call_later(0.0, self._autostart, group=self.default_callback_group)
        else:
            self.get_logger().info("Unconfigured: `ros2 lifecycle set <node> configure`, then `activate`")

    @property
    def _settings(self) -> dict[str, Any]:
        """The current parameter values (a new dict after every change: read it once per use)."""
        return self._params.settings

    def _autostart(self) -> None:
        """configure + activate at start-up; a failure is fatal (the process exits with 1)."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal(f"autostart: configure failed: {self._last_error}")
            self._on_exit(1)
        elif not self.stopping and self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal(f"autostart: activate failed: {self._last_error}")
            self._on_exit(1)

    def busy(self) -> bool:
        """Whether a model is being loaded or a vocabulary encoded (in one of the executor's threads)."""
        return self._loading > 0

    @contextmanager
    def _busy_with(self) -> Iterator[None]:
        with self._loading_lock:
            self._loading += 1
        try:
            yield
        finally:
            with self._loading_lock:
                self._loading -= 1

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
        with self._busy_with():
            return self._configure()

    def _configure(self) -> TransitionCallbackReturn:
        settings = self._settings
        source = settings["checkpoint"] or "the offline default model"
        started = time.monotonic()
        try:
            self._params.check_all()
            self.get_logger().info(f"Loading the model from {source} (device={settings['device']}, "
                                   f"backend={settings['backend']})")
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
                self._warn_off_card(vocabulary, segmenter)
                segmenter.segment(np.zeros(WARMUP_FRAME, np.uint8))
            else:
                self.get_logger().warning(self._no_vocabulary())
        except Exception as exc:  # any failure to build the model fails the transition; say exactly which
            return self._fail(f"Failed to load the segmentation model from {source} (device={settings['device']}, "
                              f"backend={settings['backend']}, precision={settings['precision']}): "
                              f"{type(exc).__name__}: {exc}")
        self._segmenter = segmenter
        self._params.show_model_values()
        self._outputs = SegmentationOutputs(self, settings)
        self._last_error = ""
        self.get_logger().info(
            f"Configured in {time.monotonic() - started:.1f} s: {source} loaded in {loaded - started:.1f} s, "
            f"backend={segmenter.backend_name}, device={segmenter.device}, " + (
                f"vocabulary of {len(vocabulary)} labels encoded and the model warmed up" if vocabulary
                else "no vocabulary yet"))
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the images and start the worker."""
        self._worker = FrameWorker(self, self._segmenter, self._outputs, self._stats, lambda: self._settings,
                                   self._no_vocabulary())
        try:
            self._input = ImageInput(self, self._settings, self._worker.put, self._stats.add_lost)
        except Exception as exc:  # rclpy would swallow it and fail the transition without a word
            self._worker = None
            return self._fail(f"Failed to subscribe: {type(exc).__name__}: {exc}")
        self._worker.topic = self._input.topic
        self._worker.start()
        self.get_logger().info(f"Active: subscribed to {self._input.describe()}; publishing "
                               f"{self._outputs.describe()}; image conversion: {self._worker.conversion}")
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
            self._input = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None

    def _release(self) -> None:
        if self._outputs is not None:
            self._outputs.destroy()
            self._outputs = None
        self._segmenter = None
        self._params.forget_model_values()
        gc.collect()
        return_freed_memory()
        torch = sys.modules.get("torch")    # loaded only by a real model; give its GPU memory back too
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --------------------------------------------------------------------------- parameters, diagnostics

    def _no_vocabulary(self) -> str:
        return NO_VOCABULARY.format(node=self.get_fully_qualified_name())

    def _encode_vocabulary(self, labels: Sequence[str], templates: Sequence[str] | None) -> None:
        """Encode a new vocabulary while a model is loaded (the parameter callback; raising refuses the set)."""
        segmenter = self._segmenter
        if segmenter is None:
            return
        start = time.monotonic()
        # The segmenter encodes first and then swaps (labels, embeddings) in one assignment, so the worker
        # sees either the old or the new vocabulary for a whole frame.
        with self._busy_with():
            segmenter.set_vocabulary(list(labels), list(templates) if templates else None)
        self.get_logger().info(f"Vocabulary {list(labels)} encoded in {(time.monotonic() - start) * 1e3:.0f} ms")
        self._warn_off_card(labels, segmenter)

    def _warn_off_card(self, labels: Sequence[str], segmenter: Segmenter) -> None:
        """Once per label: a closed-world model (its card lists its classes) still masks a label it never met."""
        classes = segmenter.model_card.get("classes") or ()
        for label in labels_off_card(labels, segmenter.model_card):
            if label not in self._warned_labels:
                self._warned_labels.add(label)
                self.get_logger().warning(
                    f"Label {label!r} is not one of the {len(classes)} classes this model knows "
                    f"({', '.join(classes)}): its masks mean little. A model that reads any word: "
                    f"checkpoint:=clipseg-rd64-refined (docs/runtime.md, models by name)")

    def _model_rule_values(self) -> dict[str, float]:
        """The loaded model's own thresholds (its card's rule), by parameter name; empty with no model."""
        if self._segmenter is None:
            return {}
        rule = MaskRule.from_card(self._segmenter.model_card)
        return {"threshold": rule.threshold, "presence_threshold": rule.presence_threshold}

    def _apply_parameters(self, names: set[str]) -> None:
        if names & {"threshold", "presence_threshold"} and self._segmenter is not None:
            self._segmenter.set_mask_rule(*mask_rule_values(self._settings))
        if "diagnostics_period" in names and self._diagnostics is not None:
            self._diagnostics.set_period(self._settings["diagnostics_period"])

    def _report(self) -> NodeReport:
        """What /diagnostics says now."""
        settings, segmenter, image_input = self._settings, self._segmenter, self._input
        return NodeReport(
            state=self.state(), window_s=STATS_WINDOW_S, figures=self._stats.snapshot(), last_error=self._last_error,
            image_topic=image_input.topic if image_input is not None else "",
            image_publishers=image_input.publisher_count() if image_input is not None else 0,
            backend=str(segmenter.backend_name) if segmenter is not None else "",
            device=str(segmenter.device) if segmenter is not None else "",
            vocabulary=settings["vocabulary"] or (),
            threshold=segmenter.mask_rule.threshold if segmenter is not None else settings["threshold"],
            presence_threshold=segmenter.mask_rule.presence_threshold if segmenter is not None
            else settings["presence_threshold"])

    def destroy_node(self) -> None:
        """Stop the worker thread, then the node."""
        if self._worker is not None:
            self._worker.stop()
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


def main(argv: Sequence[str] | None = None, segmenter_factory: SegmenterFactory = load_segmenter) -> int:
    """Run the node until SIGINT, SIGTERM or its shutdown transition; returns the process exit code.

    The exit code is 1 when the start-up parameters are invalid or an autostart fails, else 0.

    Args:
        argv: command-line arguments without the program name (default ``sys.argv[1:]``), ROS arguments
            after ``--ros-args``.
        segmenter_factory: see ``SynSegNode``.
    """
    args = ["synseg_node", *(sys.argv[1:] if argv is None else argv)]
    try:
        get_args_parser().parse_args(remove_ros_args(args)[1:])
    except RuntimeError as exc:       # rclpy's RCLError: a --params-file that cannot be read, bad --ros-args
        print(f"[FATAL] [synseg]: {str(exc).split(', at ')[0]}", file=sys.stderr)
        return 1
    configure_malloc()      # again for `python -m synseg_ros.node`; its arena limit holds only from the executable
    # rclpy's own handlers would shut the context down the moment a signal arrives, under a worker that is
    # still publishing; here a signal only asks the main thread to stop the node in order, and a second one
    # (launch and `timeout` send SIGINT to the whole process group) changes nothing.
    done = threading.Event()
    exit_code = [0]

    def finish(code: int) -> None:
        exit_code[0] = max(exit_code[0], code)
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_handler(done))
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        try:
            node = SynSegNode(segmenter_factory, on_exit=finish)
        except ValueError:
            return 1  # already logged as fatal
        executor = NodeExecutor(num_threads=3)
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, done), name="synseg-executor", daemon=True)
        spinner.start()
        returned = time.monotonic()
        while not done.wait(timeout=1.0):
            if time.monotonic() - returned >= RETURN_MEMORY_EVERY_S:
                return_freed_memory()
                returned = time.monotonic()
        node.stopping = True
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while node.busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        if node.busy():     # the executor's shutdown would wait for it
            _exit_now(node, exit_code[0])
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


def _exit_now(node: SynSegNode, code: int) -> None:
    """End the process while a transition is still running in the executor's thread.

    That transition is a model's import, load, download or warm-up: minutes of work inside C code that no signal
    interrupts, and it holds the node, so neither it nor the context can be destroyed in order (rclpy refuses a
    handle in use). Nothing it holds outlives the process (the model has not been handed to the node), and DDS
    peers see the node leave when its participant's lease ends.
    """
    node.get_logger().info(f"Interrupted while {node.state()}: exiting without waiting for it to finish")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_handler(done: threading.Event) -> Callable[..., None]:
    """A signal handler that sets ``done`` once. Python runs a handler between two bytecodes of the main thread,
    so a second signal can arrive while the first handler is inside ``Event.set``, holding the event's lock:
    calling ``set`` again there would wait for that lock forever (or recurse). Later signals return at once."""
    fired = []

    def handler(*_: object) -> None:
        if fired:
            return
        fired.append(True)
        done.set()

    return handler


def _spin(executor: NodeExecutor, done: threading.Event) -> None:
    """Spin until the executor shuts down, then set ``done``.

    deactivate destroys the image subscription, with its message-lost event handler, in a transition's thread;
    rclpy's executor guards the subscriptions it adds to its wait set against that, not their event handlers,
    and raised InvalidHandle out of spin(), which ended the node (scripts/soak.py). The next wait set is built
    without the destroyed handler: spinning goes on.
    """
    try:
        while True:
            try:
                executor.spin()
                return
            except InvalidHandle:
                continue
    except ExternalShutdownException:
        pass
    finally:
        done.set()


if __name__ == "__main__":
    sys.exit(main())
