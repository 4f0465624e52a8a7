"""Web-style captions for shapes-world scenes.

Captions name shapes with counts, colours, sizes and places, and the stuff behind them, with the noise real
alt-text has: stock-photo phrasing, "a pair of", missing objects, synonyms, suffixes, odd capitalisation.
Labels for training are *not* taken from here: they come from the spaCy extraction over these captions.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.shapes.render import Scene
from training.shapes.world import World


def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _position(center: tuple[float, float], size: int, rng: np.random.Generator, world: World) -> str:
    x, y = center
    third = size / 3
    if x < third:
        key = "left"
    elif x > 2 * third:
        key = "right"
    elif y < third:
        key = "top"
    elif y > 2 * third:
        key = "bottom"
    else:
        key = "center"
    return str(rng.choice(world["captions"]["positions"][key]))


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _things_phrase(scene: Scene, rng: np.random.Generator, world: World) -> str | None:
    cap = world["captions"]
    size = world.image_size
    shapes = [s for s, v in zip(scene.spec.shapes, scene.visible) if v > 0]
    if not shapes:
        return None
    if len(shapes) >= 3 and rng.random() < cap["drop_some_shapes"]:
        keep = rng.choice(len(shapes), int(rng.integers(1, len(shapes))), replace=False)
        shapes = [shapes[i] for i in sorted(keep)]
    say_color = rng.random() < cap["mention_color"]
    groups = Counter((s.name, s.color if say_color else "") for s in shapes)
    small, large = world["size_words"]["small"] * size, world["size_words"]["large"] * size
    parts = []
    for (name, color), n in groups.items():
        members = [s for s in shapes if s.name == name and (not color or s.color == color)]
        if n == 1:
            shape = members[0]
            words = []
            if rng.random() < cap["mention_size"]:
                if shape.radius < small:
                    words.append(str(rng.choice(["small", "tiny", "little"])))
                elif shape.radius > large:
                    words.append(str(rng.choice(["large", "big"])))
            if color:
                words.append(color)
            phrase = _article(" ".join(words + [name]))
            if rng.random() < cap["mention_position"]:
                phrase += " " + _position(shape.center, size, rng, world)
        else:
            plural = world["shapes"][name]["plural"]
            if n == 2 and rng.random() < cap["pair_phrase"]:
                count = "a pair of"
            else:
                count = cap["counts"][n] if n < len(cap["counts"]) else "many"
            phrase = " ".join(w for w in (count, color, plural) if w)
        parts.append(phrase)
    order = rng.permutation(len(parts))
    return _join([parts[i] for i in order])


def _stuff_phrase(scene: Scene, rng: np.random.Generator, world: World) -> str:
    words = [str(rng.choice(world["stuff"][name]["words"])) for name in scene.spec.stuff]
    if len(words) == 1:
        return words[0]
    joiner = str(rng.choice(world["captions"]["stuff_joiners"]))
    return joiner.format(a=words[0], b=words[1])


def make_caption(scene: Scene, rng: np.random.Generator, world: World) -> str:
    """One noisy web-style caption for a rendered scene."""
    cap = world["captions"]
    things = _things_phrase(scene, rng, world)
    if things is None or rng.random() < cap["background_only"]:
        template = str(rng.choice(cap["templates_stuff_only"]))
    elif rng.random() < cap["mention_background"]:
        template = str(rng.choice(cap["templates"]))
    else:
        template = str(rng.choice(cap["templates_no_stuff"]))
    text = template.format(things=things, stuff=_stuff_phrase(scene, rng, world))
    text += str(rng.choice(cap["suffixes"]))
    if rng.random() < cap["capitalize"]:
        text = text[0].upper() + text[1:]
    return text
