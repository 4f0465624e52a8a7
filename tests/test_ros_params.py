"""The node's parameters: the table and its checks (no rclpy context), then the node built in the test process
with the fake model: start-up values and run-time sets."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from rclpy.parameter import Parameter

from synseg_ros import params
from synseg_ros.segmenter import FakeSegmenter
from tests.ros_processes import REPO_ROOT, child_env


@pytest.mark.parametrize("value, reason", [
    ([], "must not be empty"), (["a", ""], "blank"), (["Chair", "chair "], "duplicate"),
    (["x"] * 2, "duplicate"), ([True, False], "quote them"), ([3, 4], "quote them"),
    ([f"c{i}" for i in range(5)], "max_categories=4"), (["traffic light", "Traffic  light"], "duplicate"),
])
def test_vocabulary_checks(value, reason):
    with pytest.raises(ValueError, match=reason):
        params.check_labels("vocabulary", value, max_count=4)


def test_parameter_checks_import_no_torch():
    """The node checks its parameters with synseg_model's rules before, or without, loading a model: the rules
    must not pull in torch (seconds at every start, also for the fake model)."""
    code = "import sys, synseg_ros.params; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), check=True, timeout=60)


def test_prompt_templates_need_a_placeholder():
    settings = {"max_categories": 4}
    params.validate("prompt_templates", ["a photo of a {}."], settings)
    with pytest.raises(ValueError, match="no {}"):
        params.validate("prompt_templates", ["a photo"], settings)


@pytest.mark.parametrize("text, labels", [("[person, 'traffic light']", ["person", "traffic light"]),
                                          ("person", ["person"]), ("person, chair", ["person", "chair"]),
                                          ("[]", [])])
def test_parse_label_list(text, labels):
    assert params.parse_label_list(text) == labels


def test_coerce_repairs_what_yaml_infers():
    assert params.coerce(Parameter("vocabulary", value="[person, 3]")).value == ["person", "3"]
    empty = params.coerce(Parameter("vocabulary", Parameter.Type.BOOL_ARRAY, []))
    assert empty.type_ == Parameter.Type.STRING_ARRAY and empty.value == []
    assert params.coerce(Parameter("vocabulary", value=[" cup "])).value == ["cup"]
    threshold = params.coerce(Parameter("threshold", value=1))
    assert threshold.type_ == Parameter.Type.DOUBLE and threshold.value == 1.0
    booleans = Parameter("vocabulary", value=[True, False])
    assert params.coerce(booleans) is booleans          # left for the validating callback to reject
    for null in ("null", "None"):          # YAML's null, as rcl passes it on and as `ros2 param load` sends it
        unset = params.coerce(Parameter("prompt_templates", value=null))
        assert unset.type_ == Parameter.Type.NOT_SET    # not the one template 'null' (refused later when set)
    with pytest.raises(ValueError, match="vocabulary cannot be unset"):
        params.validate("vocabulary", params.coerce(Parameter("vocabulary", value="~")).value, {})


def test_every_parameter_has_a_described_descriptor():
    for spec in params.PARAMETERS:
        descriptor = spec.descriptor()
        assert descriptor.description and descriptor.read_only == (spec.changes == params.START_UP)
        assert descriptor.dynamic_typing          # types are checked by validate, with a reason
        assert bool(descriptor.integer_range) == (spec.int_range is not None)
        assert bool(descriptor.floating_point_range) == (spec.float_range is not None)


def test_config_file_sets_only_declared_valid_parameters():
    with open(REPO_ROOT / "config" / "synseg.yaml") as f:
        values = yaml.safe_load(f)["/**"]["ros__parameters"]
    assert set(values) <= set(params.SPECS), set(values) - set(params.SPECS)
    settings = {spec.name: spec.default for spec in params.PARAMETERS} | values
    for name, value in values.items():
        spec = params.SPECS[name]
        params.validate(name, params.coerce(Parameter(name, value=value)).value, settings)
        if spec.default is not None:
            assert isinstance(value, type(spec.default)), name
        if spec.float_range:
            assert spec.float_range[0] <= value <= spec.float_range[1], name
        if spec.int_range:
            assert spec.int_range[0] <= value <= spec.int_range[1], name


@pytest.mark.parametrize("name, value, reason", [
    ("threshold", "abc", "threshold expects a floating-point number, got str 'abc'"),
    ("max_categories", 2.5, "max_categories expects an integer"),
    ("publish_overlay", 1, "publish_overlay expects a boolean"),
    ("threshold", None, "cannot be unset"),
    ("checkpoint", "/no/such/model.safetensors", "no such file"),
])
def test_wrong_values_are_explained(name, value, reason):
    settings = {spec.name: spec.default for spec in params.PARAMETERS}
    with pytest.raises(ValueError, match=reason):
        params.validate(name, value, settings)


def test_max_categories_cannot_drop_below_the_vocabulary():
    settings = {spec.name: spec.default for spec in params.PARAMETERS}
    params.validate("max_categories", 1, settings)                    # unset: the model card's classes, later
    with pytest.raises(ValueError, match="less than the 3 labels"):
        params.validate("max_categories", 2, {**settings, "vocabulary": ["a", "b", "c"]})


# --- the node in this process (rclpy) -------------------------------------------------------------------------

def make_node(overrides: list[Parameter] | None = None, factory=None):
    from synseg_ros.node import SynSegNode

    factory = factory or (lambda settings: FakeSegmenter(settings))
    return SynSegNode(factory, parameter_overrides=overrides or [])


@pytest.mark.ros
def test_parameters_are_declared_with_descriptors(ros_context):
    node = make_node()
    try:
        descriptors = node.describe_parameters([spec.name for spec in params.PARAMETERS])
        by_name = {d.name: d for d in descriptors}
        assert by_name["vocabulary"].description and not by_name["vocabulary"].read_only
        assert "applies at the next configure" in by_name["checkpoint"].additional_constraints
        assert by_name["autostart"].read_only
        assert by_name["threshold"].floating_point_range[0].to_value == 1.0
        assert by_name["max_categories"].integer_range[0].to_value == params.MAX_LABELS
        assert node.get_parameter("vocabulary").type_ == Parameter.Type.NOT_SET   # configure: the card's classes
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_start_up_values_are_coerced_as_run_time_sets_are(ros_context):
    """`-p threshold:=1` or `max_rate_hz: 5` in a parameter file are integers for float parameters."""
    node = make_node([Parameter("vocabulary", value="[person, chair]"), Parameter("threshold", value=1),
                      Parameter("max_rate_hz", value=5), Parameter("diagnostics_period", value=2)])
    try:
        assert node.get_parameter("vocabulary").value == ["person", "chair"]
        assert node.get_parameter("vocabulary").type_ == Parameter.Type.STRING_ARRAY
        for name, value in (("threshold", 1.0), ("max_rate_hz", 5.0), ("diagnostics_period", 2.0)):
            parameter = node.get_parameter(name)
            assert (parameter.type_, parameter.value) == (Parameter.Type.DOUBLE, value), name
    finally:
        node.destroy_node()


@pytest.mark.ros
@pytest.mark.parametrize("override, reason", [
    (Parameter("vocabulary", value=["cup", "cup"]), "duplicate"),
    (Parameter("vocabulary", value=[True, False]), "YAML reads yes/no/on/off/true/false as booleans"),
    (Parameter("image_reliability", value="sometimes"), "one of"),
    (Parameter("threshold", value="abc"), "threshold expects a floating-point number"),
    (Parameter("checkpoint", value="/nope/model.safetensors"), "checkpoint /nope/model.safetensors: no such file"),
    (Parameter("checkpoint", value="clipseg-rd46"), "checkpoint 'clipseg-rd46' is no model name"),
    (Parameter("autostart", value="yes please"), "autostart expects a boolean"),
    (Parameter("max_categories", value=0), "max_categories must be between 1 and 255, got 0"),
    (Parameter("overlay_alpha", value=3.0), "overlay_alpha must be between 0.0 and 1.0, got 3.0"),
])
def test_invalid_start_up_parameters_are_fatal_before_any_model_loads(ros_context, capfd, override, reason):
    loads = []
    with pytest.raises(ValueError, match=reason):
        make_node([override], factory=lambda settings: loads.append(settings))
    err = capfd.readouterr().err
    assert "Invalid start-up parameters" in err and reason in err
    assert "ros2 param set" not in err                   # it was not a `ros2 param set`
    assert not loads


@pytest.mark.ros
def test_every_start_up_value_out_of_range_is_named_in_one_fatal_line(ros_context, capfd):
    with pytest.raises(ValueError):
        make_node([Parameter("max_categories", value=0), Parameter("diagnostics_period", value=100.0)])
    fatal = [line for line in capfd.readouterr().err.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "max_categories must be between 1 and 255" in fatal[0]
    assert "diagnostics_period must be between 0.1 and 60.0, got 100.0" in fatal[0]


@pytest.mark.ros
def test_a_parameter_name_the_node_does_not_have_is_warned_about(ros_context, capfd):
    node = make_node([Parameter("treshold", value=0.3)])
    node.destroy_node()
    assert "Unknown parameter 'treshold' ignored: did you mean 'threshold'?" in capfd.readouterr().err


def test_checking_a_model_name_does_not_import_torch():
    """An unknown name is refused at once: checking it costs no torch import (about 10-25 s here)."""
    code = ("import sys; from synseg_ros import params; params.check_checkpoint('clipseg-rd64-refined'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env=child_env(), check=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.ros
def test_a_missing_parameter_file_is_one_fatal_line(capfd, tmp_path):
    from synseg_ros.node import main

    assert main(["--ros-args", "--params-file", str(tmp_path / "nowhere.yaml")]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "[FATAL]" in err and str(tmp_path / "nowhere.yaml") in err
    assert "Traceback" not in err


@pytest.mark.ros
def test_run_time_type_errors_say_what_is_expected(ros_context):
    node = make_node()
    try:
        result = node.set_parameters([Parameter("threshold", value="abc")])[0]
        assert not result.successful and "expects a floating-point number" in result.reason
        assert node.set_parameters([Parameter("threshold", value=1)])[0].successful   # `threshold 1`
        assert node.get_parameter("threshold").value == 1.0
    finally:
        node.destroy_node()
