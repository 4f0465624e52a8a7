"""The shapes world's definition: classes, colours, sizes and caption vocabulary, read from YAML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from training.metrics import IGNORE_INDEX

DEFAULT_WORLD = Path(__file__).resolve().parents[2] / "config" / "shapes" / "world.yaml"

_REQUIRED_KEYS = (
    "image_size", "jpeg_quality", "stuff", "split_background_prob", "split_min_fraction", "shapes",
    "shape_params", "colors", "color_jitter", "min_color_distance", "radius", "size_words",
    "shapes_per_image", "min_visible_fraction", "placement_tries", "closeup", "hard_negative_fraction",
    "hard_negative_group", "captions",
)


@dataclasses.dataclass(frozen=True)
class World:
    """A parsed world YAML.

    Class indices: the stuff classes first (in file order), then the shape classes; these indices are the
    values of every label map the generator writes.
    """

    spec: dict[str, Any]
    source: str

    @property
    def image_size(self) -> int:
        return int(self.spec["image_size"])

    @property
    def stuff_names(self) -> list[str]:
        return list(self.spec["stuff"])

    @property
    def shape_names(self) -> list[str]:
        return list(self.spec["shapes"])

    @property
    def class_names(self) -> list[str]:
        """All class names, index = label value."""
        return self.stuff_names + self.shape_names

    def class_index(self, name: str) -> int:
        return self.class_names.index(name)

    def class_of_label(self, label: str) -> str | None:
        """The class a caption label names, by its last word ("big purple circle" -> circle, "the lawn" ->
        grass, "wooden plank" -> wood), or None ("person", "photo"). Labels are lemmatised, so the caption
        words of each class are matched by their last word, singular as well."""
        words = label.lower().split()
        return self._head_words().get(words[-1]) if words else None

    def _head_words(self) -> dict[str, str]:
        heads = {}
        for name, stuff in self.spec["stuff"].items():
            for phrase in [name, *stuff["words"]]:
                last = phrase.lower().split()[-1]
                heads[last] = name
                if last.endswith("s") and not last.endswith("ss"):  # "bricks", "planks": labels are singular
                    heads[last[:-1]] = name
        for name, shape in self.spec["shapes"].items():
            heads[name] = heads[shape["plural"]] = name
        return heads

    def __getitem__(self, key: str) -> Any:
        return self.spec[key]


def load_world(path: str | Path | None = None) -> World:
    """Read a world YAML (default: ``config/shapes/world.yaml``).

    Raises:
        ValueError: a required key is missing, or a class name is used twice.
    """
    path = Path(path) if path is not None else DEFAULT_WORLD
    with open(path) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    missing = [k for k in _REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    names = list(spec["stuff"]) + list(spec["shapes"])
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names must be unique, got {names}")
    if len(names) >= IGNORE_INDEX:
        raise ValueError(f"{path}: at most {IGNORE_INDEX} classes fit a uint8 label map")
    for name, stuff in spec["stuff"].items():
        for key in ("texture", "params", "words"):
            if key not in stuff:
                raise ValueError(f"{path}: stuff class {name!r} lacks {key!r}")
    return World(spec=spec, source=str(path))
