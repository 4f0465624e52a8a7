"""Category labels from captions: spaCy noun chunks and nouns, cleaned as the paper describes (Sec. 5.1:
non-referential terms such as direction and unit nouns filtered out).

A caption is first cut to `max_chars` and cleaned: HTML entities decoded, control characters dropped,
photo credits and stock boilerplate removed, a `<PERSON>` fused into a word removed ("<PERSON>-style
garden" -> "garden"), spaced separators (" | ", " - ") and hashtags made sentence breaks, and CC12M's name
placeholder `<PERSON>` read as "person".

A noun chunk is split at conjunctions and separators ("actor and film director" -> actor | film director).
The head of each part is its last noun, once trailing nouns that name no region are trimmed: stop-listed
words ("mountain view" -> mountain, "stock photo" -> nothing), quantities before "of" ("a couple of"),
objects of event prepositions ("during the match") and verbs the tagger read as nouns ("a single sheep
grazes" -> sheep). A part whose head is abstract by WordNet's lexicographer categories gives no label
("their support", "breast cancer awareness"; see concreteness.py). The label is the part up to its head,
without determiners, numerals, adverbs, possessives and stop-listed modifiers, lower-cased, with the head
lemmatised ("two very red bicycles" -> "red bicycle"). Nouns outside every chunk are added as their lemma,
under the same tests, and so are nouns the tagger read as adjectives ("a ring and a square").
"""
from __future__ import annotations

import dataclasses
import html
import re
import typing
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .concreteness import ConcretenessConfig, NounConcreteness
from .config import read_yaml_mapping
from .language import EnglishTest, LanguageConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent / "data" / "labels.yaml"
PERSON_PLACEHOLDER = "<PERSON>"
PERSON_LABEL = "person"
SPACY_MAX_LENGTH = 1_000_000  # spaCy refuses longer texts (the default Language.max_length)

# Parts of speech that never belong to a label: articles, numbers, pronouns (incl. "his", "their"),
# the possessive "'s", adverbs ("very"), punctuation and symbols.
_DROPPED_POS = frozenset({"DET", "NUM", "PRON", "PART", "PUNCT", "SYM", "X", "ADP", "CCONJ", "AUX", "ADV"})
_NOUN_POS = frozenset({"NOUN", "PROPN"})
_COMPOUND_POS = _NOUN_POS | {"ADJ"}  # a word before a noun that may form a WordNet compound ("hot dog")
_NOMINAL_DEPS = frozenset({"nsubj", "nsubjpass", "dobj", "pobj", "conj", "appos", "ROOT"})  # a noun's roles
# The parser's components that extraction needs; named-entity recognition is not used.
_UNUSED_PIPES = ("ner",)
# Alt-text joins fields with spaced separators ("a square | free download", "a cross - stock image") and
# appends hashtags; read as words they derail the tagger ("|" as a noun, "square" as its adjective), so each
# becomes a sentence break.
_FIELD_BREAK = re.compile(r"\s+[|•–—-]+\s+|\s+(?=#\w)")
_LETTER = re.compile(r"[^\W\d_]")
# A placeholder glued to a word ("<PERSON>-style", "pro-<PERSON>") names no one in the picture.
_FUSED_PERSON = re.compile(rf"{re.escape(PERSON_PLACEHOLDER)}-?(?=[^\W\d_])"
                           rf"|(?<=[^\W\d_])-?{re.escape(PERSON_PLACEHOLDER)}")


@dataclass
class LabelConfig:
    """Label extraction settings; defaults in training/data/labels.yaml (documented there)."""

    spacy_model: str
    stop_words: str
    max_chars: int
    remove_patterns: list[str]
    of_quantities: list[str]
    event_prepositions: list[str]
    concreteness: ConcretenessConfig
    language: LanguageConfig


def _merge(base: dict, update: dict, cls: type, folder: Path, source: str, prefix: str = "") -> None:
    """Write `update` over `base` for the fields of dataclass `cls`; relative paths resolve from `folder`."""
    hints = typing.get_type_hints(cls)
    for key, value in update.items():
        if key not in hints:
            raise ValueError(f"{source}: unknown key {prefix + key!r} (known: {', '.join(hints)})")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {prefix + key!r} must be a mapping")
            _merge(base.setdefault(key, {}), value, hints[key], folder, source, f"{prefix}{key}.")
        elif key in ("stop_words", "wordnet") and value is not None:
            base[key] = str(folder / Path(value).expanduser())
        else:
            base[key] = value


def load_label_config(path: str | Path | None = None, overrides: dict | None = None) -> LabelConfig:
    """The packaged defaults (training/data/labels.yaml), with the keys of the file `path`, then `overrides`
    (top-level keys, e.g. from the command line; None values are ignored; paths relative to the working
    folder) written over them.

    Raises:
        ValueError: unreadable file, unknown key, or a value of the wrong type or range (names the key).
    """
    tree: dict = {}
    sources = [DEFAULT_CONFIG] + ([Path(path)] if path is not None else [])
    for source in sources:
        _merge(tree, read_yaml_mapping(source), LabelConfig, source.resolve().parent, str(source))
    source = str(sources[-1])
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    if overrides:
        source += " + command line"
        _merge(tree, overrides, LabelConfig, Path.cwd(), source)
    try:
        cfg = LabelConfig(**{**tree, "concreteness": ConcretenessConfig(**tree["concreteness"]),
                             "language": LanguageConfig(**tree["language"])})
    except TypeError as exc:
        raise ValueError(f"label config {source}: {exc}") from None
    _check(cfg, source)
    return cfg


def _check(cfg: LabelConfig, source: str) -> None:
    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{source}: {key}: {why}")

    need(isinstance(cfg.max_chars, int) and 1 <= cfg.max_chars <= SPACY_MAX_LENGTH, "max_chars",
         f"must be an integer from 1 to {SPACY_MAX_LENGTH} (spaCy's longest text), got {cfg.max_chars!r}")
    for key in ("remove_patterns", "of_quantities", "event_prepositions"):
        need(isinstance(getattr(cfg, key), list), key, "must be a list")
    for pattern in cfg.remove_patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"{source}: remove_patterns: {pattern!r} is not a regular expression ({exc})") from None
    c = cfg.concreteness
    need(isinstance(c.enabled, bool), "concreteness.enabled", "must be true or false")
    need(isinstance(c.sense_prior, (int, float)) and c.sense_prior >= 0, "concreteness.sense_prior", "must be >= 0")
    need(isinstance(c.min_concrete_share, (int, float)) and 0 <= c.min_concrete_share <= 1,
         "concreteness.min_concrete_share", "must be in [0, 1]")
    for key in ("concrete", "abstract", "keep", "drop"):
        need(isinstance(getattr(c, key), list), f"concreteness.{key}", "must be a list")
    lang = cfg.language
    need(isinstance(lang.enabled, bool), "language.enabled", "must be true or false")
    need(isinstance(lang.min_letters, int) and lang.min_letters >= 0, "language.min_letters", "must be an integer >= 0")
    need(isinstance(lang.min_english_probability, (int, float)) and 0 <= lang.min_english_probability <= 1,
         "language.min_english_probability", "must be in [0, 1]")


def load_stop_words(path: str | Path) -> frozenset[str]:
    """Read a stop-word file: one word per line, `#` comments, blank lines ignored.

    Raises:
        ValueError: when the file does not exist or lists no word.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"stop-word file not found: {path}")
    words = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        word = line.split("#", 1)[0].strip().lower()
        if word:
            words.add(word)
    if not words:
        raise ValueError(f"stop-word file {path} lists no word")
    return frozenset(words)


def load_spacy(model: str | None = None):
    """Load the English spaCy pipeline (None: the default config's) with only the components extraction needs.

    Raises:
        ValueError: when the pipeline is not installed (names the pip package to install).
    """
    import spacy

    model = model or load_label_config().spacy_model
    try:
        return spacy.load(model, disable=list(_UNUSED_PIPES))
    except OSError as exc:
        raise ValueError(f"spaCy pipeline {model!r} is not installed; "
                         f"pip install {model.replace('_', '-')}") from exc


def cut_caption(caption: str, max_chars: int) -> str:
    """The caption cut to at most `max_chars` characters, not inside a word when a space allows it."""
    if len(caption) <= max_chars:
        return caption
    cut = caption[:max_chars]
    if caption[max_chars].isspace():
        return cut
    space = cut.rfind(" ")
    return cut[:space] if space > 0 else cut


def _drop_control(text: str) -> str:
    """Control characters become spaces, format characters (zero-width, soft hyphen) vanish."""
    if text.isprintable():
        return text
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Zs") else
                   "" if unicodedata.category(ch)[0] == "C" else ch for ch in text)


def clean_caption(caption: str, remove: Iterable[re.Pattern]) -> str:
    """A raw caption made ready for parsing (see the module docstring); `remove`: compiled credit patterns."""
    text = caption
    for _ in range(2):  # entities escaped twice ("&amp;amp;") are common in scraped alt-text
        if "&" not in text:
            break
        text = html.unescape(text)
    text = _FUSED_PERSON.sub("", _drop_control(text))
    for pattern in remove:
        text = pattern.sub(" ", text)
    text = _FIELD_BREAK.sub(" . ", text)
    return " ".join(text.replace(PERSON_PLACEHOLDER, PERSON_LABEL).split())


def _has_letter(token) -> bool:
    return _LETTER.search(token.text) is not None


def _possessive_tokens(chunk) -> set[int]:
    """Indices of the possessor phrases inside a chunk ("the old man's" in "the old man's dog")."""
    dropped = set()
    for token in chunk:
        if token.dep_ == "poss":
            dropped.update(t.i for t in token.subtree)
    return dropped


def _is_inword_hyphen(token) -> bool:
    """A hyphen with no space on either side ("t-shirt"), unlike ' - ' between words."""
    return (token.text == "-" and not token.whitespace_ and token.i > 0
            and not token.doc[token.i - 1].whitespace_)


def _is_separator(token) -> bool:
    """Conjunctions, punctuation and symbols split a chunk ("salt & pepper", "ground | free"), but not a
    hyphen inside a word."""
    if token.pos_ == "CCONJ":
        return True
    return not any(c.isalnum() for c in token.text) and not _is_inword_hyphen(token)


def _segments(chunk) -> Iterator[list]:
    """The runs of a chunk's tokens between separators."""
    segment: list = []
    for token in chunk:
        if _is_separator(token):
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)
    if segment:
        yield segment


class LabelExtractor:
    """Caption -> labels with one loaded spaCy pipeline, stop list and abstract-noun test.

    Example:
        >>> extractor = LabelExtractor()
        >>> extractor("a pair of shoes")
        ['shoe']
    """

    def __init__(self, config: LabelConfig | None = None) -> None:
        self.cfg = config if config is not None else load_label_config()
        self.nlp = load_spacy(self.cfg.spacy_model)
        if self.cfg.max_chars > self.nlp.max_length:
            raise ValueError(f"max_chars {self.cfg.max_chars} exceeds spaCy's max_length {self.nlp.max_length}")
        self.stop_words = load_stop_words(self.cfg.stop_words)
        self.concreteness = NounConcreteness(self.cfg.concreteness) if self.cfg.concreteness.enabled else None
        self.is_english = EnglishTest(self.cfg.language) if self.cfg.language.enabled else None
        self._remove = [re.compile(p, re.IGNORECASE) for p in self.cfg.remove_patterns]
        self._of_quantities = frozenset(w.lower() for w in self.cfg.of_quantities)
        self._event_prepositions = frozenset(w.lower() for w in self.cfg.event_prepositions)
        self.captions_truncated = 0  # captions longer than max_chars, counted by `prepare`

    def prepare(self, caption: str) -> str:
        """Cut and clean one raw caption (counts it in `captions_truncated` when it was cut)."""
        if len(caption) > self.cfg.max_chars:
            self.captions_truncated += 1
            caption = cut_caption(caption, self.cfg.max_chars)
        return clean_caption(caption, self._remove)

    def __call__(self, caption: str) -> list[str] | None:
        """Labels of one caption; None when it is set aside as not English."""
        return next(self.pipe([(caption, None)]))[0]

    def pipe(self, items: Iterable[tuple[str, Any]],
             batch_size: int = 256) -> Iterator[tuple[list[str] | None, Any]]:
        """Labels of many captions, in order, parsed in batches (`nlp.pipe`).

        Args:
            items: (caption, context) pairs; the context (e.g. the sample key) is passed through.
            batch_size: captions per spaCy batch.
        Yields:
            (labels, context) per caption, in input order; labels is None for a caption set aside as not
            English (training/language.py), which is not parsed.
        """
        def texts() -> Iterator[tuple[str, tuple[bool, Any]]]:
            for caption, context in items:
                text = self.prepare(caption)
                english = self.is_english is None or self.is_english(text)
                yield (text if english else ""), (english, context)

        for doc, (english, context) in self.nlp.pipe(texts(), as_tuples=True, batch_size=batch_size):
            yield (self.extract(doc) if english else None), context

    def extract(self, doc) -> list[str]:
        """Labels of one parsed caption, in caption order, without duplicates.

        Args:
            doc: a spaCy `Doc` parsed by a pipeline with tagger, parser and lemmatizer.
        Returns:
            the labels (possibly empty), e.g. ["person", "dog", "beach"].
        """
        labels: list[str] = []
        covered: set[int] = set()
        for chunk in doc.noun_chunks:
            covered.update(t.i for t in chunk)
            labels.extend(self._chunk_labels(chunk))
        for token in doc:
            if token.i in covered:
                continue
            if token.pos_ in _NOUN_POS and self._is_label_noun(token):
                labels.append(token.lemma_.lower())
            elif token.pos_ == "ADJ" and self._is_adjective_noun(token):
                labels.append(token.lower_)
        return list(dict.fromkeys(label for label in labels if len(label) > 1))

    def _is_stop(self, token) -> bool:
        return token.lower_ in self.stop_words or token.lemma_.lower() in self.stop_words

    def _blocks_label(self, token) -> bool:
        """A noun that never heads a label: stop-listed, a number, a quantity before "of" ("a couple of"),
        or the object of an event preposition ("during the match")."""
        if token.like_num or self._is_stop(token):
            return True
        if (token.lemma_.lower() in self._of_quantities
                and any(child.dep_ == "prep" and child.lower_ == "of" for child in token.children)):
            return True
        return token.dep_ == "pobj" and token.head.lower_ in self._event_prepositions

    def _is_abstract(self, token) -> bool:
        """The WordNet test (concreteness.py) on a noun, or on its compound with the word before it."""
        if self.concreteness is None:
            return False
        lemma = token.lemma_.lower()
        before = token.doc[token.i - 1] if token.i > 0 else None
        compound = f"{before.lower_}_{lemma}" if before is not None and before.pos_ in _COMPOUND_POS else None
        return self.concreteness.is_abstract_noun(lemma, token.lower_, compound)

    def _is_label_noun(self, token) -> bool:
        """Whether a noun outside every chunk is a label."""
        return _has_letter(token) and not self._blocks_label(token) and not self._is_abstract(token)

    def _is_adjective_noun(self, token) -> bool:
        """A noun the tagger read as an adjective, out of every chunk: it takes a noun's place in the sentence
        ("with a square", "a ring and a little square"; not "a young and beautiful woman", where "young"
        modifies "woman"), and `_reads_as_noun`."""
        return token.dep_ in _NOMINAL_DEPS and self._reads_as_noun(token)

    def _reads_as_noun(self, token) -> bool:
        """An adjective that follows a determiner (adjectives between allowed) and that WordNet knows as a
        concrete noun."""
        if self.concreteness is None or self._is_stop(token):
            return False
        before = token.i - 1
        while before >= 0 and token.doc[before].pos_ == "ADJ":
            before -= 1
        if before < 0 or token.doc[before].pos_ != "DET":
            return False
        return self.concreteness.is_abstract(token.lower_) is False

    def _dropped(self, token, possessive: set[int]) -> bool:
        return (token.i in possessive or token.pos_ in _DROPPED_POS or token.like_num
                or self._is_stop(token) or not _has_letter(token))

    def _segment_head(self, segment: list, possessive: set[int]):
        """The head of a chunk segment: its last noun once trailing stop-listed nouns and verbs read as
        nouns are trimmed ("mountain view" -> mountain, "a single sheep grazes" -> sheep), or None when that
        noun is abstract ("breast cancer awareness": the chunk names an abstraction) or there is none."""
        after_verb = False  # the token after this one was a verb read as a noun
        for token in reversed(segment):
            if after_verb and token.pos_ == "ADJ" and self._reads_as_noun(token):
                return token  # "a square lying", "a mechanic repairs": both words misread
            after_verb = False
            if (token.pos_ not in _NOUN_POS or not _has_letter(token) or token.i in possessive
                    or (token.i + 1 < len(token.doc) and _is_inword_hyphen(token.doc[token.i + 1]))):
                continue  # not a noun, or part of a hyphenated modifier ("hand-drawn")
            if self._blocks_label(token):
                continue
            if self.concreteness is not None and self.concreteness.is_misread_verb(token.lower_):
                after_verb = True
                continue
            return None if self._is_abstract(token) else token
        return None

    def _chunk_labels(self, chunk) -> list[str]:
        """Labels of one noun chunk: one per segment between conjunctions and separators."""
        possessive = _possessive_tokens(chunk)
        labels = []
        for segment in _segments(chunk):
            head = self._segment_head(segment, possessive)
            if head is not None:
                labels.append(self._segment_label(segment, head, possessive))
        return labels

    def _segment_label(self, segment: list, head, possessive: set[int]) -> str:
        """The label of a chunk segment: its kept modifiers before the head, then the head's lemma."""
        words: list[str] = []
        glue = False  # the previous token was a hyphen inside a word ("t-shirt")
        for token in segment:
            if token.i == head.i:
                break
            if _is_inword_hyphen(token) and words:
                glue = True
                continue
            if self._dropped(token, possessive):
                pass
            elif glue:
                words[-1] += "-" + token.lower_
            else:
                words.append(token.lower_)
            glue = False
        lemma = head.lemma_.lower()
        if glue:
            return " ".join([*words[:-1], words[-1] + "-" + lemma])
        return " ".join([*words, lemma])

