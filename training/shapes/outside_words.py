"""The shapes world's list of words outside it, for L_outside (``training.outside``): WordNet's most frequent
concrete nouns (animals, artifacts, body parts, food, plants) that the world's captions never use and the
probes (``config/shapes/probes.yaml``) do not hold, so that the words scored as outside the world are never
trained on. ``python -m training.shapes outside-words`` writes ``config/shapes/outside_words.txt``.

People are left out (their nouns would bring ethnic and religious words into a list of negatives), and so
are natural objects, places and substances: their nouns ("pond", "lake", "beach", "timber") name the
world's own backgrounds in other words.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from training.concreteness import _read_lexnames, default_wordnet_dir
from training.shapes.config import REPO_ROOT
from training.shapes.robot import PROBES, load_probes
from training.shapes.world import World, load_world

OUTSIDE_WORDS = REPO_ROOT / "config" / "shapes" / "outside_words.txt"
CATEGORIES = ("noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.plant")


def world_vocabulary(world: World) -> set[str]:
    """Every word of the world's file (caption templates, class words, colours, positions...), and its singular."""
    words: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, str):
            words.update(re.findall(r"[a-z]+", value.lower()))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(world.spec)
    return words | {w[:-1] for w in words if w.endswith("s")}


def outside_words(count: int, world: World, probes_file: Path = PROBES) -> list[str]:
    """The ``count`` most frequent qualifying nouns (WordNet's sense-tag counts), most frequent first."""
    folder = default_wordnet_dir()
    categories = _read_lexnames(folder)
    concrete, total = Counter(), Counter()
    for line in (folder / "index.sense").read_text(encoding="utf-8").splitlines():
        key, _offset, _number, tags = line.split()
        lemma, _, rest = key.partition("%")
        if rest[:1] != "1" or not lemma.isalpha():              # nouns of one plain word
            continue
        total[lemma] += int(tags)
        if categories.get(rest[2:4]) in CATEGORIES:
            concrete[lemma] += int(tags)
    probes = load_probes("dev", probes_file).words + load_probes("test", probes_file).words
    excluded = world_vocabulary(world) | set(probes)
    kept = [w for w, n in concrete.items() if 2 * n > total[w] and len(w) >= 3 and w not in excluded
            and w.rstrip("s") not in excluded and world.class_of_label(w) is None]
    return sorted(kept, key=lambda w: (-concrete[w], w))[:count]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the words outside the shapes world that L_outside trains "
                                                 "on (none in its captions or the probes).")
    parser.add_argument("--out", type=Path, default=OUTSIDE_WORDS)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--world", type=Path, default=None, help="world YAML (default config/shapes/world.yaml)")
    args = parser.parse_args(argv)
    words = outside_words(args.count, load_world(args.world))
    args.out.write_text("# python -m training.shapes outside-words: nouns outside the shapes world "
                        "(training.shapes.outside_words)\n" + "\n".join(words) + "\n")
    print(f"wrote {len(words)} words to {args.out}")
