"""The synseg node built in the test process with a fake model: start-up, parameters, QoS warnings."""
from __future__ import annotations

import time

import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from tests.ros_fakes import FakeSegmenter
from tests.ros_helpers import TIMEOUT_S

pytestmark = pytest.mark.ros


def make_node(overrides: list[Parameter] | None = None, factory=None):
    from synseg_ros.node import SynSegNode

    factory = factory or (lambda settings: FakeSegmenter(settings, delay=0.0))
    return SynSegNode(factory, parameter_overrides=overrides or [])


def test_parameters_are_declared_with_descriptors(ros_context):
    from synseg_ros import params

    node = make_node()
    try:
        descriptors = node.describe_parameters([spec.name for spec in params.PARAMETERS])
        by_name = {d.name: d for d in descriptors}
        assert by_name["vocabulary"].description and not by_name["vocabulary"].read_only
        assert by_name["checkpoint"].read_only and by_name["device"].read_only
        assert by_name["threshold"].floating_point_range[0].to_value == 1.0
        assert by_name["max_categories"].integer_range[0].to_value == params.MAX_LABELS
        assert node.get_parameter("vocabulary").value == params.DEFAULT_VOCABULARY
    finally:
        node.destroy_node()


def test_start_up_vocabulary_from_a_string_is_parsed(ros_context):
    node = make_node([Parameter("vocabulary", value="[person, chair]")])
    try:
        assert node.get_parameter("vocabulary").value == ["person", "chair"]
        assert node.get_parameter("vocabulary").type_ == Parameter.Type.STRING_ARRAY
    finally:
        node.destroy_node()


@pytest.mark.parametrize("override, reason", [(Parameter("vocabulary", value=["cup", "cup"]), "duplicate"),
                                              (Parameter("image_reliability", value="sometimes"), "one of")])
def test_invalid_start_up_parameters_are_fatal(ros_context, capfd, override, reason):
    with pytest.raises(ValueError, match=reason):
        make_node([override])
    assert "Invalid start-up parameters" in capfd.readouterr().err


def test_model_that_fails_to_load_is_a_clear_fatal_error(ros_context, capfd):
    from synseg_ros.node import ModelLoadError

    def broken(settings):
        raise FileNotFoundError("no such checkpoint: /nope.safetensors")

    with pytest.raises(ModelLoadError):
        make_node([Parameter("checkpoint", value="/nope.safetensors")], factory=broken)
    err = capfd.readouterr().err
    assert "FATAL" in err and "Failed to load the segmentation model from /nope.safetensors" in err
    assert "no such checkpoint" in err


def test_incompatible_image_publisher_is_warned_about(ros_context, capfd):
    """A reliable subscription never hears a best-effort camera: the node must say so."""
    node = make_node([Parameter("image_reliability", value="reliable")])
    camera = node.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        seen = ""
        deadline = time.monotonic() + TIMEOUT_S
        while "incompatible" not in seen and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            seen += capfd.readouterr().err
        assert "offers QoS incompatible" in seen and "RELIABILITY" in seen, seen
        assert "image_reliability" in seen          # the warning says how to fix it
    finally:
        node.destroy_publisher(camera)
        executor.shutdown()
        node.destroy_node()
