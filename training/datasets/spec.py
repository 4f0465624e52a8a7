"""Dataset specs: what a benchmark is (files, classes, background rule, templates), read from YAML.

A spec is data, not code: the seven built-in benchmarks live in ``specs/<name>.yaml`` and any other
dataset in the same layouts (e.g. a held-out synthetic split) is evaluated by passing the path of its own
spec file wherever a dataset name is accepted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from training.config import read_yaml_mapping

_HERE = Path(__file__).resolve().parent
SPEC_DIR = _HERE / "specs"
LAYOUTS_FILE = _HERE / "layouts.yaml"
TEMPLATES_FILE = _HERE / "templates.yaml"
PROTOCOL_FILE = _HERE / "protocol.yaml"
REFERENCE_FILE = _HERE / "reference_results.yaml"

CLASS_NAME_VARIANTS = ("mmseg", "readable")
UNLABELED_RULES = ("ignore", "background")
_PATH_FIELDS = ("img_dir", "ann_dir", "img_suffix", "label_suffix", "split", "recursive")


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark split as described by a spec YAML.

    Attributes:
        name: dataset key (``voc``, ``context59``, ... or the name given in a custom spec).
        classes: class names in label order (label value ``i`` after ``reduce_zero_label`` is ``classes[i]``),
            mmsegmentation's spelling for the built-in benchmarks.
        img_dir, ann_dir: image / label folders relative to the dataset root.
        img_suffix, label_suffix: a sample with stem ``s`` is ``img_dir/s+img_suffix``, ``ann_dir/s+label_suffix``.
        split: file listing the stems (relative to the root), or None to use every image in ``img_dir``.
        recursive: with no split file, also search the sub-folders of ``img_dir`` (stem = ``sub/name``).
        reduce_zero_label: label 0 is ignored and labels 1..K become 0..K-1 (mmseg's rule: VOC20, Context59).
        background: ``classes[0]`` is a background that is never prompted; it gets the constant score
            ``bg_thresh`` at prediction time.
        unlabeled: how stored label 255 is scored: ``ignore`` (not scored) or ``background`` (scored as
            ``classes[0]``; needs ``background``). COCO-Object's published numbers use ``background``: GroupViT's
            converter, whose files TCL evaluates, writes its unlabeled pixels as 0.
        templates: name of the default template set in ``templates.yaml``.
        readable: replacements that turn ``classes`` into the readable variant.
        default_root: where the dataset sits below a common data folder (mmseg's ``data/`` layout).
        description: one line for humans.
        source: the YAML file this spec came from.
    """

    name: str
    classes: tuple[str, ...]
    img_dir: str
    ann_dir: str
    img_suffix: str
    label_suffix: str
    split: str | None = None
    recursive: bool = False
    reduce_zero_label: bool = False
    background: bool = False
    unlabeled: str = "ignore"
    templates: str = "tcl"
    readable: Mapping[str, str] = field(default_factory=dict)
    default_root: str | None = None
    layout: str | None = None
    description: str = ""
    source: Path | None = None

    def __post_init__(self) -> None:
        # Checked here rather than in the YAML reader so that dataclasses.replace (evaluation overrides) is too.
        if self.unlabeled not in UNLABELED_RULES:
            raise ValueError(f"{self.source}: key 'unlabeled' must be one of {UNLABELED_RULES}, "
                             f"got {self.unlabeled!r}")
        if self.unlabeled == "background" and not self.background:
            raise ValueError(f"{self.source}: 'unlabeled: background' needs 'background: true' "
                             "(label 255 is then scored as classes[0])")

    @property
    def num_classes(self) -> int:
        """Number of classes scored, background included when the dataset has one."""
        return len(self.classes)

    def class_names(self, variant: str = "mmseg") -> list[str]:
        """All class names in label order, in the ``mmseg`` or ``readable`` spelling."""
        if variant not in CLASS_NAME_VARIANTS:
            raise ValueError(f"class name variant must be one of {CLASS_NAME_VARIANTS}, got {variant!r}")
        if variant == "mmseg":
            return list(self.classes)
        return [self.readable.get(name, name) for name in self.classes]

    def prompt_names(self, variant: str = "mmseg") -> list[str]:
        """The class names a model is prompted with: all of them, minus the background when there is one."""
        names = self.class_names(variant)
        return names[1:] if self.background else names


def list_datasets() -> list[str]:
    """Names of the built-in dataset specs."""
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def load_layouts() -> dict[str, dict[str, Any]]:
    """The named on-disk layouts of ``layouts.yaml`` (defaults for a spec's path fields)."""
    return read_yaml_mapping(LAYOUTS_FILE)


def _check_type(path: Path, key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    if not isinstance(value, kind):
        raise ValueError(f"{path}: key {key!r} must be {kind}, got {type(value).__name__} {value!r}")


def _spec_from_dict(data: dict[str, Any], path: Path) -> DatasetSpec:
    known = {f.name for f in fields(DatasetSpec)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    merged: dict[str, Any] = {}
    layout = data.get("layout")
    if layout is not None:
        layouts = load_layouts()
        if layout not in layouts:
            raise ValueError(f"{path}: key 'layout' must be one of {sorted(layouts)} or null, got {layout!r}")
        merged.update(layouts[layout])
    merged.update(data)
    merged.setdefault("name", path.stem)
    for key in ("name", "img_dir", "ann_dir", "img_suffix", "label_suffix", "classes"):
        if merged.get(key) is None:
            raise ValueError(f"{path}: missing key {key!r} (give it, or a 'layout' that provides it)")
    for key in ("name", "img_dir", "ann_dir", "img_suffix", "label_suffix", "unlabeled", "templates", "description"):
        if key in merged:
            _check_type(path, key, merged[key], str)
    for key in ("recursive", "reduce_zero_label", "background"):
        if key in merged:
            _check_type(path, key, merged[key], bool)
    if merged.get("split") is not None:
        _check_type(path, "split", merged["split"], str)
    classes = merged["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{path}: key 'classes' must be a non-empty list of non-empty strings")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: key 'classes' has duplicate names")
    readable = merged.get("readable") or {}
    _check_type(path, "readable", readable, dict)
    stray = sorted(set(readable) - set(classes))
    if stray:
        raise ValueError(f"{path}: key 'readable' renames classes that are not in 'classes': {stray}")
    if merged.get("background") and merged.get("reduce_zero_label"):
        raise ValueError(f"{path}: 'background' and 'reduce_zero_label' exclude each other "
                         "(label 0 is either scored as background or ignored)")
    if merged.get("background") and len(classes) < 2:
        raise ValueError(f"{path}: a dataset with background needs at least one other class")
    merged["classes"] = tuple(classes)
    merged["readable"] = dict(readable)
    return DatasetSpec(**merged, source=path)


def load_dataset_spec(name_or_path: str | Path) -> DatasetSpec:
    """Load a dataset spec by built-in name (see :func:`list_datasets`) or from a YAML file.

    Raises:
        ValueError: unknown name, unreadable file, unknown or missing keys, inconsistent values.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ValueError(f"dataset spec file not found: {candidate}")
        path = candidate
    else:
        path = SPEC_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown dataset {str(name_or_path)!r}: use one of {list_datasets()} "
                             "or the path of a spec YAML")
    return _spec_from_dict(read_yaml_mapping(path), path)


def list_template_sets() -> list[str]:
    """Names of the template sets in ``templates.yaml``."""
    return sorted(read_yaml_mapping(TEMPLATES_FILE))


def load_templates(name: str) -> list[str]:
    """The prompt templates of one set (``tcl``, ``simple``), each with one ``{}`` for the class name."""
    sets = read_yaml_mapping(TEMPLATES_FILE)
    if name not in sets:
        raise ValueError(f"unknown template set {name!r}: {TEMPLATES_FILE} has {sorted(sets)}")
    templates = sets[name]
    if not isinstance(templates, list) or not templates:
        raise ValueError(f"{TEMPLATES_FILE}: set {name!r} must be a non-empty list")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"{TEMPLATES_FILE}: set {name!r}: template {template!r} needs exactly one '{{}}'")
    return list(templates)


def load_protocol() -> dict[str, Any]:
    """The protocol defaults of ``protocol.yaml`` (short side, crop, stride, bg_thresh, ...)."""
    return read_yaml_mapping(PROTOCOL_FILE)


def load_reference_results() -> dict[str, Any]:
    """Published mIoU rows and the dataset behind each table column (``reference_results.yaml``)."""
    return read_yaml_mapping(REFERENCE_FILE)
