"""The synseg node's parameters: one table with descriptors and ranges, and the checks behind it.

``PARAMETERS`` is the single place a parameter is defined (name, default, description, range, when it can
change). ``coerce`` repairs what YAML makes of a typed value, in a parameter file, ``-p name:=value`` or
``ros2 param set`` alike: ``"person"`` -> a string, ``"[1, 2]"`` -> integers, ``"[]"`` -> booleans,
``threshold 1`` -> an integer. ``validate`` holds the checks of the node's one set-parameters callback, types
included (every parameter is declared with dynamic typing so that a wrong type is rejected by that callback
with a reason, not by rclpy with its type numbers), and runs on start-up values as on later changes.
``NodeParameters`` declares the table on a node, installs the callbacks and keeps the current values.
rclpy is imported only where a node or its messages are used: the table, ``coerce_value`` and ``validate`` also
serve the bag tool (synseg_ros.segment_bag), which runs without ROS.
"""
from __future__ import annotations

import array
import difflib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
    from rclpy.node import Node
    from rclpy.parameter import Parameter

from synseg_model.options import PRECISIONS as MODEL_PRECISIONS
from synseg_model.options import duplicate_labels

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", *MODEL_PRECISIONS)      # auto: the backend chooses
RELIABILITIES = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")
# A label image stores label i as the value i in one byte, 0 meaning none.
MAX_LABELS = 255

# When a parameter may change (ParamSpec.changes):
ANY_STATE = "any state"                 # at run time, in every lifecycle state
UNCONFIGURED = "while unconfigured"     # needs a model reload: applies at the next configure
START_UP = "at start-up"                # read-only
_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a floating-point number",
               str: "a string", list: "a list of strings"}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its default and what its descriptor says."""

    name: str
    default: Any
    description: str
    changes: str = ANY_STATE
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None

    @property
    def python_type(self) -> type:
        """bool, int, float, str or list (of strings)."""
        return list if self.default is None else type(self.default)

    def descriptor(self) -> ParameterDescriptor:
        """The rcl_interfaces ParameterDescriptor declared for this parameter."""
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        constraints = [f"one of: {', '.join(self.choices)}"] if self.choices else []
        if self.name == "vocabulary":
            constraints.append("non-empty, no blank or duplicate labels, at most max_categories labels")
        if self.changes == UNCONFIGURED:
            constraints.append("changes only while the node is unconfigured; applies at the next configure")
        desc = ParameterDescriptor(name=self.name, description=self.description,
                                   read_only=self.changes == START_UP,
                                   additional_constraints="; ".join(constraints),
                                   # Types are checked by the node's callback (validate), with a reason.
                                   dynamic_typing=True)
        if self.int_range is not None:
            desc.integer_range = [IntegerRange(from_value=self.int_range[0], to_value=self.int_range[1], step=1)]
        if self.float_range is not None:
            desc.floating_point_range = [FloatingPointRange(from_value=self.float_range[0],
                                                            to_value=self.float_range[1], step=0.0)]
        return desc


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("vocabulary", None,
              "Labels to segment, e.g. \"[person, chair]\". Unset, configure takes the classes the model's card "
              "lists (the offline default model's); a model without (CLIPSeg) waits for one. Changing it "
              "re-encodes the text off the image path and applies it between two frames; every masks message "
              "names the labels it used."),
    ParamSpec("prompt_templates", None,
              "Prompt templates with {} for the label, averaged per label (unset: the model's own templates)."),
    ParamSpec("threshold", -1.0, "Activation above which a pixel is in a present label's mask; negative: the "
              "model's own (its card's calibrated mask_rule; 0.5 for a model without one), which the parameter "
              "then shows while the model is loaded (-1 again after cleanup).",
              float_range=(-1.0, 1.0)),
    ParamSpec("presence_threshold", -1.0,
              "Presence score (the mean of a label's highest 1% of activations) a label needs to get a mask at all; "
              "below it the mask is empty. Negative: the model's own (its card's; 0, every label present, for a "
              "model without one), shown as for threshold.", float_range=(-1.0, 1.0)),
    ParamSpec("checkpoint", "", "The model: a name (python -m synseg_model.pretrained list, e.g. "
              "clipseg-rd64-refined), hf-hub:ORG/REPO[@REVISION] or a .safetensors file; empty: the offline "
              "default model.", changes=UNCONFIGURED),
    ParamSpec("device", "auto", "Where the model runs: auto (CUDA when available), cuda, cpu or cuda:N.",
              changes=UNCONFIGURED),
    ParamSpec("backend", "auto", "Inference backend (auto, torch, tensorrt, onnxruntime, ...; "
              "what the installed synseg_model offers).", changes=UNCONFIGURED),
    ParamSpec("precision", "auto", "Numeric precision; auto lets the backend choose.", changes=UNCONFIGURED,
              choices=PRECISIONS),
    ParamSpec("input_size", 0, "Side in pixels the model sees; 0: the model's native size.",
              changes=UNCONFIGURED, int_range=(0, 4096)),
    ParamSpec("max_categories", 32, "Largest vocabulary accepted.", changes=UNCONFIGURED,
              int_range=(1, MAX_LABELS)),
    ParamSpec("publish_overlay", True, "Publish ~/overlay: rgb8 image with coloured masks and their labels."),
    ParamSpec("publish_label_image", True,
              "Publish ~/label_image: mono8, 0 = none, i = the i-th label (highest activation wins)."),
    ParamSpec("publish_probabilities", False,
              "Fill the probabilities field of ~/masks with mono8 activation maps."),
    ParamSpec("overlay_alpha", 0.5, "Opacity of the mask colours in the overlay.", float_range=(0.0, 1.0)),
    ParamSpec("max_rate_hz", 0.0, "Most frames segmented per second; 0: as fast as the model runs.",
              float_range=(0.0, 1000.0)),
    ParamSpec("max_image_pixels", 3840 * 2160, "Larger input images are rejected with a warning.",
              int_range=(1, 1 << 28)),
    ParamSpec("image_reliability", "best_effort",
              "Reliability of the image subscription (REP-2003 sensor data is best_effort).",
              changes=UNCONFIGURED, choices=RELIABILITIES),
    ParamSpec("image_queue_depth", 1, "History depth of the image subscription.", changes=UNCONFIGURED,
              int_range=(1, 100)),
    ParamSpec("image_transport", "raw",
              "raw: subscribe to image (sensor_msgs/Image); compressed: to image/compressed "
              "(sensor_msgs/CompressedImage, JPEG or PNG, as image_transport's compressed plugin sends it).",
              changes=UNCONFIGURED, choices=TRANSPORTS),
    ParamSpec("min_region_pixels", 100,
              "Smallest connected region of a mask (in pixels) that becomes a detection on ~/detections "
              "(and ~/detections_3d).", int_range=(1, 1 << 26)),
    ParamSpec("use_depth", False,
              "Also subscribe to depth (sensor_msgs/Image, 16UC1 mm or 32FC1 m, registered to the colour image) "
              "and camera_info (its sensor_msgs/CameraInfo), synchronised with the image, and publish "
              "~/detections_3d and ~/points.", changes=UNCONFIGURED),
    ParamSpec("depth_slop", 0.05,
              "Seconds the stamps of image, depth and camera_info may differ to be taken as one frame "
              "(message_filters.ApproximateTimeSynchronizer).", changes=UNCONFIGURED, float_range=(0.0, 10.0)),
    ParamSpec("max_depth", 10.0, "Depth in metres beyond which a depth pixel is invalid (as are 0 and NaN).",
              float_range=(0.01, 1000.0)),
    ParamSpec("point_decimation", 4,
              "3-D uses every n-th pixel in each direction: ~/points has at most 1/n^2 of the pixels, and "
              "~/detections_3d is computed from the same points.", int_range=(1, 64)),
    ParamSpec("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", float_range=(0.1, 60.0)),
    ParamSpec("autostart", False, "Configure and activate at start-up (the launch file sets it); a start-up "
              "configure that fails then ends the process with exit code 1. False: wait unconfigured for "
              "`ros2 lifecycle set`.", changes=START_UP),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
STRING_ARRAYS = ("vocabulary", "prompt_templates")


def declare_parameters(node: Any) -> None:
    """Declare every parameter of the table on ``node`` (an rclpy Node), with its descriptor, and warn about
    given names the table does not have (with the closest one it has).

    Raises:
        ValueError: naming every start-up value outside its descriptor's range (rclpy refuses them while
            declaring), with the range.
    """
    from rclpy.exceptions import InvalidParameterValueException

    errors = []
    # rclpy keeps the values given at start-up (-p, parameter files) in this attribute until they are declared.
    overrides = getattr(node, "_parameter_overrides", {})
    for spec in PARAMETERS:
        # `vocabulary: null`, as `ros2 param dump` writes an unset list, leaves it unset (rcl passes "null" on).
        given = overrides.get(spec.name)
        unset = given is not None and coerce_value(spec.name, given.value) is None
        try:
            node.declare_parameter(spec.name, spec.default, spec.descriptor(), ignore_override=unset)
        except InvalidParameterValueException:     # only a start-up value outside the descriptor's range
            low, high = spec.int_range or spec.float_range
            errors.append(f"{spec.name} must be between {low} and {high}, got {given.value}")
    # Values given for names nobody declares stay there too, and rclpy says nothing about them.
    for name in sorted(overrides):
        if not node.has_parameter(name) and name not in SPECS:
            close = difflib.get_close_matches(name, list(SPECS), n=1)
            node.get_logger().warning(f"Unknown parameter '{name}' ignored" +
                                      (f": did you mean '{close[0]}'?" if close else ""))
    if errors:
        raise ValueError("; ".join(errors))


def parse_label_list(text: str) -> list[str]:
    """``"[person, 'traffic light']"`` or ``"person, chair"`` -> a list of labels (what YAML could not parse)."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    return [item.strip().strip("'\"").strip() for item in body.split(",")] if body.strip() else []


# YAML's null as the string rcl passes on at start-up, and as `ros2 param load` sends it at run time (it sends
# every value as the YAML of str(value), and str(None) is "None").
YAML_NULLS = ("null", "Null", "NULL", "~", "None")


def coerce_value(name: str, value: Any) -> Any:
    """Repair the types YAML infers (``ros2 param set``, ``-p``, parameter files) before anything checks them.

    - YAML's null for a string array (``vocabulary: null``, as ``ros2 param dump`` writes an unset one; rcl's
      parser passes it on as the string "null", ``ros2 param load`` as "None"): unset;
    - a string for a string array: parsed as a list (``"person"``, ``"[person, 3]"``);
    - an empty list of any type for a string array: an empty list (rejected later, with a reason);
    - string-array entries: surrounding whitespace removed;
    - an integer for a floating-point parameter: converted.
    Everything else is returned unchanged (``validate`` rejects what is still of the wrong type).
    """
    spec = SPECS.get(name)
    if spec is None:
        return value
    if name in STRING_ARRAYS:
        if isinstance(value, str) and value.strip() in YAML_NULLS:
            return None
        if isinstance(value, str):
            return parse_label_list(value)
        if isinstance(value, (list, tuple, array.array)) and len(value) == 0:
            return []
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value]
    if spec.float_range is not None and type(value) is int:     # noqa: E721 - not a bool
        return float(value)
    return value


def coerce(param: Parameter) -> Parameter:
    """``coerce_value`` for an rclpy Parameter: the same parameter, or a new one of the repaired type."""
    from rclpy.parameter import Parameter

    value = coerce_value(param.name, param.value)
    if value is param.value:
        return param
    kind = (Parameter.Type.NOT_SET if value is None else
            Parameter.Type.STRING_ARRAY if isinstance(value, list) else Parameter.Type.DOUBLE)
    return Parameter(param.name, kind, value)


def check_labels(name: str, value: Any, max_count: int | None) -> list[str]:
    """Validate a vocabulary-like string list and return it.

    Raises:
        ValueError: not a list of strings (with a hint for what YAML turned into booleans or numbers),
            empty, blank or duplicate entries (``synseg_model.options.duplicate_labels``), or more than
            ``max_count`` entries.
    """
    # rclpy hands numeric and boolean arrays over as array.array or lists.
    items = list(value) if isinstance(value, (list, tuple, array.array)) else None
    if items is None or not all(isinstance(v, str) for v in items):
        items = items if items is not None else [value]
        hint = ""
        if items and all(isinstance(v, bool) for v in items):
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote them, e.g. \"['yes', 'no']\")"
        elif items and all(isinstance(v, (int, float)) for v in items):
            hint = " (YAML reads these as numbers: quote them, e.g. \"['1', '2']\")"
        raise ValueError(f"{name} must be a list of strings, got {items!r}{hint}")
    labels = items
    if not labels:
        raise ValueError(f"{name} must not be empty")
    blank = [i for i, label in enumerate(labels) if not label.strip()]
    if blank:
        raise ValueError(f"{name} has blank entries at positions {blank}")
    if duplicate := duplicate_labels(labels):
        raise ValueError(f"{name} has duplicate entries (one text to CLIP): {duplicate[0]!r} and {duplicate[1]!r}")
    if max_count is not None and len(labels) > max_count:
        raise ValueError(f"{name} has {len(labels)} entries, more than max_categories={max_count}")
    return labels


def check_type(spec: ParamSpec, value: Any) -> None:
    """ValueError unless ``value`` (after ``coerce``) has the parameter's type; booleans are not integers."""
    expected = spec.python_type
    if value is None:
        raise ValueError(f"{spec.name} cannot be unset")
    if expected is list:
        return                          # string lists: check_labels explains what is wrong with them
    if type(value) is not expected:     # noqa: E721 - bool is a subclass of int, and must not pass for one
        raise ValueError(f"{spec.name} expects {_TYPE_NAMES[expected]}, got {type(value).__name__} {value!r}")


def check_checkpoint(value: str) -> None:
    """A checkpoint given as a file path must exist, and one given as a name must be registered (both checked
    without torch, so the error comes at once); hf-hub:ORG/REPO names are resolved at configure."""
    from synseg_model.pretrained import HF_PREFIX, REGISTRY

    if not value or value.startswith(HF_PREFIX) or value in REGISTRY or os.path.isfile(value):
        return
    if os.sep in value or os.path.splitext(value)[1]:        # meant as a file
        raise ValueError(f"checkpoint {value}: no such file")
    raise ValueError(f"checkpoint {value!r} is no model name ({', '.join(REGISTRY)}), no hf-hub:ORG/REPO and no "
                     f"file")


def validate(name: str, value: Any, settings: Mapping[str, Any]) -> None:
    """Check one new parameter value (coerced) against the table and the other settings.

    Ranges and read-only flags are enforced by rclpy from the descriptors; this adds what they cannot say.

    Raises:
        ValueError: with the reason the set is rejected.
    """
    spec = SPECS.get(name)
    if spec is None:
        return
    check_type(spec, value)
    if name == "vocabulary":
        check_labels(name, value, int(settings["max_categories"]))
    elif name == "prompt_templates":
        for template in check_labels(name, value, None):
            if "{}" not in template:
                raise ValueError(f"prompt template {template!r} has no {{}} where the label goes")
    elif spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
    elif name == "device" and not (value in DEVICES or str(value).startswith("cuda:")):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
    elif name == "checkpoint":
        check_checkpoint(value)
    elif name == "max_categories" and len(settings["vocabulary"] or ()) > value:
        raise ValueError(f"max_categories={value} is less than the {len(settings['vocabulary'])} labels of the "
                         f"vocabulary")


# Called with the new vocabulary and templates when either changes while a model is loaded; raises to refuse.
VocabularyHook = Callable[[Sequence[str], "Sequence[str] | None"], None]


class NodeParameters:
    """The table declared on a node, its coercing, validating and applying callbacks, and the current values.

    Args:
        node: the node to declare the parameters on.
        state: returns the node's lifecycle state (reload parameters change only while unconfigured).
        on_vocabulary: encodes a new vocabulary before the set succeeds (``VocabularyHook``); raising refuses
            the set with the exception's message.
        on_applied: called with the names of the parameters a successful set changed.
        model_values: the loaded model's own values of the parameters whose negative value means "the model's
            own" (its thresholds), by name; empty while no model is loaded.
    """

    def __init__(self, node: Node, state: Callable[[], str], on_vocabulary: VocabularyHook,
                 on_applied: Callable[[set[str]], None],
                 model_values: Callable[[], Mapping[str, float]] = dict) -> None:
        self._node = node
        self._state = state
        self._on_vocabulary = on_vocabulary
        self._on_applied = on_applied
        self._model_values = model_values
        self.shown: set[str] = set()        # parameters showing the loaded model's own value, not one a user set
        self._showing: set[str] = set()     # those the set in progress fills in
        declare_parameters(node)
        # Replaced (never mutated) on every change: a reader on another thread sees a consistent snapshot.
        self.settings: dict[str, Any] = {spec.name: self._value(spec.name) for spec in PARAMETERS}
        node.add_pre_set_parameters_callback(self._coerce)
        node.add_on_set_parameters_callback(self._check)
        node.add_post_set_parameters_callback(self._apply)

    def _value(self, name: str) -> Any:
        """A parameter's value, None when it is declared without one (an unset prompt_templates)."""
        from rclpy.exceptions import ParameterUninitializedException

        try:
            return self._node.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def check_start_up(self) -> None:
        """Run the start-up values through the coercion and checks of later changes, before any model loads.

        Raises:
            ValueError: with the reason a value is invalid.
        """
        settable = [spec.name for spec in PARAMETERS
                    if spec.changes != START_UP and self.settings[spec.name] is not None]
        result = self._node.set_parameters_atomically([self._node.get_parameter(name) for name in settable])
        if not result.successful:
            raise ValueError(result.reason)
        for spec in PARAMETERS:
            if spec.changes == START_UP:
                validate(spec.name, self.settings[spec.name], self.settings)

    def check_all(self) -> None:
        """Validate every value that is set, together (at configure). Raises ValueError."""
        for name, value in self.settings.items():
            if value is not None:
                validate(name, value, self.settings)

    def show_model_values(self) -> None:
        """Fill the parameters that ask for the loaded model's own value (negative) with it, so that
        `ros2 param get` shows what is in force."""
        self._set_all([name for name in self._model_values() if self.settings[name] < 0])

    def forget_model_values(self) -> None:
        """Back to -1 ("the model's own") where a parameter showed the released model's value."""
        self._set_all(sorted(self.shown))

    def _set_all(self, names: list[str]) -> None:
        from rclpy.parameter import Parameter

        results = self._node.set_parameters([Parameter(name, value=-1.0) for name in names])
        failed = [f"{name}: {result.reason}" for name, result in zip(names, results) if not result.successful]
        if failed:
            raise ValueError("; ".join(failed))

    def _coerce(self, parameters: list[Parameter]) -> list[Parameter]:
        """Types first; then a negative threshold becomes the loaded model's own value."""
        from rclpy.parameter import Parameter

        own = self._model_values()
        coerced = [coerce(p) for p in parameters]
        self._showing = {p.name for p in coerced if p.name in own and p.value is not None and p.value < 0}
        return [Parameter(p.name, value=own[p.name]) if p.name in self._showing else p for p in coerced]

    def _check(self, parameters: list[Parameter]) -> SetParametersResult:
        """The one validating callback: rejects with a reason, or encodes a new vocabulary."""
        from rcl_interfaces.msg import SetParametersResult

        new = {**self.settings, **{p.name: p.value for p in parameters}}
        state = self._state()
        try:
            for p in parameters:
                spec = SPECS.get(p.name)
                if spec is not None and spec.changes == UNCONFIGURED and state != "unconfigured":
                    raise ValueError(f"{p.name} can change only while the node is unconfigured (it is {state}): "
                                     f"deactivate and clean it up first; the new value applies at the next "
                                     f"configure")
                validate(p.name, p.value, new)
            if new["vocabulary"] and any(p.name in STRING_ARRAYS for p in parameters):
                self._on_vocabulary(new["vocabulary"], new["prompt_templates"])
        except Exception as exc:  # validation errors and anything the text encoder raises: keep the old value
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply(self, parameters: list[Parameter]) -> None:
        names = {p.name for p in parameters}
        self.shown = (self.shown - names) | (self._showing & names)
        self.settings = {**self.settings, **{p.name: p.value for p in parameters}}
        self._on_applied({p.name for p in parameters})
