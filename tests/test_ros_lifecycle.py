"""The node's managed lifecycle, driven through its lifecycle services from a probe node in the same process.

configure loads the model (the factory), activate subscribes and publishes, deactivate stops, cleanup releases
the model, shutdown ends; reload parameters change only while unconfigured; /diagnostics reports the state.
"""
from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from synseg_ros.executor import NodeExecutor
from synseg_ros.segmenter import FakeSegmenter
from tests.ros_helpers import Probe, image_msg, wait_until

pytestmark = pytest.mark.ros


class Spinning:
    """A SynSegNode spun by its own executor thread, as main() does."""

    def __init__(self, factory, overrides: list[Parameter], namespace: str) -> None:
        from synseg_ros.node import SynSegNode

        self.exit_codes: list[int] = []
        self.node = SynSegNode(factory, on_exit=self.exit_codes.append, namespace=namespace,
                               parameter_overrides=overrides)
        self.executor = NodeExecutor(num_threads=3)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def states_reported(probe: Probe, node: str) -> list[str]:
    return [kv.value for array in probe.messages("/diagnostics") for status in array.status
            if status.name == f"{node}: segmentation" for kv in status.values if kv.key == "state"]


@pytest.mark.slow
def test_whole_cycle_twice_masks_only_while_active_model_released_by_cleanup(ros_context):
    from synseg_ros.msg import SegmentationMasks

    built: list[weakref.ref] = []
    settings_seen: list[dict] = []

    def factory(settings):
        settings_seen.append(dict(settings))
        segmenter = FakeSegmenter(settings)
        built.append(weakref.ref(segmenter))
        return segmenter

    spinning = Spinning(factory, [Parameter("vocabulary", value=["red", "green"]),
                                  Parameter("diagnostics_period", value=0.1)], namespace="/cycle")
    probe = Probe("probe_cycle", "/cycle/image", {"/cycle/synseg/masks": SegmentationMasks,
                                                   "/diagnostics": DiagnosticArray}, target="/cycle/synseg")
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 255

    def masks_now() -> list:
        """Publish frames for a while; the masks messages that came back."""
        probe.clear("/cycle/synseg/masks")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            probe.image_pub.publish(image_msg(rgb, "rgb8", probe.now()))
            time.sleep(0.05)
        return probe.messages("/cycle/synseg/masks")

    try:
        probe.wait_for_node(active=False)
        assert probe.get_state() == "unconfigured" and not built
        assert not masks_now()
        for cycle, max_categories in ((1, 4), (2, 3)):
            # Reload parameters change while unconfigured and apply at the next configure.
            assert probe.set_parameter("max_categories", max_categories).successful
            assert probe.change_state("configure")
            assert probe.get_state() == "inactive" and len(built) == cycle
            assert settings_seen[-1]["max_categories"] == max_categories
            result = probe.set_parameter("max_categories", 8)
            assert not result.successful and "unconfigured" in result.reason
            assert not masks_now(), "masks while inactive"

            assert probe.change_state("activate")
            wait_until(lambda: probe.image_pub.get_subscription_count() > 0, what="the image subscription")
            wait_until(lambda: masks_now(), what="masks while active")
            assert list(probe.messages("/cycle/synseg/masks")[-1].labels) == ["red", "green"]

            assert probe.change_state("deactivate")
            wait_until(lambda: probe.image_pub.get_subscription_count() == 0, what="the subscription to go")
            assert not masks_now(), "masks after deactivate"

            assert probe.change_state("cleanup")
            gc.collect()
            assert built[-1]() is None, "cleanup kept the model"
            assert probe.get_state() == "unconfigured"
        wait_until(lambda: {"unconfigured", "inactive", "active"} <= set(states_reported(probe, "/cycle/synseg")),
                   what="diagnostics reporting every state")
        assert probe.change_state("shutdown")
        assert probe.get_state() == "finalized"
        wait_until(lambda: spinning.exit_codes == [0], what="the exit code, once the reply is out")
    finally:
        probe.close()
        spinning.close()


def test_failed_configure_stays_unconfigured_and_says_why(ros_context):
    from synseg_ros.node import SynSegNode

    def broken(settings):
        raise FileNotFoundError("no such checkpoint: /nope.safetensors")

    node = SynSegNode(broken, parameter_overrides=[])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert node.state() == "unconfigured"
        assert "no such checkpoint" in node._last_error
    finally:
        node.destroy_node()


@pytest.mark.slow
def test_default_model_lifecycle_timings(ros_context):
    """The real offline default model through configure, activate, deactivate and cleanup (timed)."""
    from synseg_ros.node import SynSegNode
    from synseg_ros.segmenter import load_segmenter

    built: list[weakref.ref] = []

    def factory(settings):
        segmenter = load_segmenter(settings)
        built.append(weakref.ref(segmenter.model))
        return segmenter

    node = SynSegNode(factory, parameter_overrides=[Parameter("device", value="cpu")])
    timings = {}
    try:
        for transition in ("configure", "activate", "deactivate", "cleanup"):
            start = time.monotonic()
            assert getattr(node, f"trigger_{transition}")() == TransitionCallbackReturn.SUCCESS, transition
            timings[transition] = time.monotonic() - start
        gc.collect()
        assert built[0]() is None, "cleanup kept the model"
    finally:
        node.destroy_node()
    print("lifecycle with the default model: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timings.items()))
