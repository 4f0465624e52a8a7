"""The shapes world's definition: classes, colours, sizes and caption vocabulary, read from YAML."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ConfigError, build_config, need, read_yaml_mapping
from training.metrics import IGNORE_INDEX

DEFAULT_WORLD = Path(__file__).resolve().parents[2] / "config" / "shapes" / "world.yaml"


# The world file's schema, every key required (config/shapes/world.yaml explains each). It checks the file;
# the generator reads the file's own mapping (`World.spec`), so that a scene depends on nothing but the file.
@dataclass
class StuffClass:
    texture: str  # a procedural texture of training/shapes/textures.py
    params: dict  # that texture's parameters
    words: list[str]  # how captions name it


@dataclass
class ShapeClass:
    plural: str


@dataclass
class ShapeParams:
    rotation_deg: float
    ring_inner: float
    star_inner: float
    cross_arm: float


@dataclass
class SizeWords:
    small: float
    large: float


@dataclass
class Closeup:
    prob: float
    radius: list[float]
    jitter: float


@dataclass
class CaptionStyle:
    mention_color: float
    mention_size: float
    mention_position: float
    mention_background: float
    drop_some_shapes: float
    background_only: float
    capitalize: float
    counts: list[str]
    pair_phrase: float
    templates: list[str]
    templates_no_stuff: list[str]
    templates_stuff_only: list[str]
    stuff_joiners: list[str]
    positions: dict[str, list[str]]
    suffixes: list[str]


@dataclass
class WorldSpec:
    image_size: int
    jpeg_quality: int
    stuff: dict[str, StuffClass]
    split_background_prob: float
    split_min_fraction: float
    shapes: dict[str, ShapeClass]
    shape_params: ShapeParams
    colors: dict[str, list[int]]
    color_jitter: float
    min_color_distance: float
    radius: list[float]
    size_words: SizeWords
    shapes_per_image: dict  # shape count -> probability
    min_visible_fraction: float
    placement_tries: int
    closeup: Closeup
    hard_negative_fraction: float
    hard_negative_group: list[int]
    captions: CaptionStyle


@dataclass(frozen=True)
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
        ConfigError: an unreadable file, an unknown, missing or mistyped key, or a class name used twice.
    """
    path = Path(path) if path is not None else DEFAULT_WORLD
    spec = read_yaml_mapping(path)
    world = build_config(WorldSpec, spec, str(path))
    names = list(world.stuff) + list(world.shapes)
    try:
        need(len(set(names)) == len(names), "stuff", f"class names must be unique, got {names}")
        need(len(names) < IGNORE_INDEX, "shapes", f"at most {IGNORE_INDEX} classes fit a uint8 label map")
        need(all(isinstance(n, int) and n >= 1 for n in world.shapes_per_image), "shapes_per_image",
             "maps shape counts (integers from 1) to probabilities")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return World(spec=spec, source=str(path))
