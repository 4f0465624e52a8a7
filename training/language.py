"""Is a caption English? The label parser is an English pipeline: on other languages it gives junk labels
("ein roter hund läuft" -> "ein roter hund"), so such captions are set aside unparsed.

The test is py3langid (a maintained fork of langid.py: a naive Bayes classifier over byte n-grams, 97
languages, its model inside the pip package, offline, CPU, numpy only). A caption is set aside when its
probability of being English is below `min_english_probability`. Very short captions carry too few n-grams
to tell ("a cat" scores as Galician, "tea" as Romanian), so captions with fewer than `min_letters` letters
are not judged and stay.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

LANGUAGE_PACKAGE = "py3langid"  # pip package py3langid==0.4.0
ENGLISH = "en"  # ISO 639-1 code, as py3langid names its classes


@dataclass
class LanguageConfig:
    """The language test: section `language` of the label config (training/data/labels.yaml)."""

    enabled: bool  # false: every caption is parsed
    min_letters: int  # captions with fewer letters are not judged (kept)
    min_english_probability: float  # a caption judged less likely English than this is set aside


class EnglishTest:
    """Whether a (cleaned) caption is English enough to parse.

    Example:
        >>> test = EnglishTest(cfg)   # cfg: a LanguageConfig
        >>> test("a red dog runs across the meadow"), test("ein roter hund läuft über die wiese"), test("a cat")
        (True, False, True)
    """

    def __init__(self, cfg: LanguageConfig) -> None:
        try:
            langid = importlib.import_module(f"{LANGUAGE_PACKAGE}.langid")
        except ImportError:
            raise ValueError(f"the language test needs the pip package {LANGUAGE_PACKAGE}==0.4.0 (or set "
                             "language.enabled: false in the label config)") from None
        # norm_probs: scores become probabilities over the 97 languages, so one threshold fits all captions
        self._identifier = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        self.cfg = cfg

    def english_probability(self, text: str) -> float:
        """The classifier's probability that `text` is English, in [0, 1]."""
        return dict(self._identifier.rank(text)).get(ENGLISH, 0.0)

    def __call__(self, text: str) -> bool:
        """False only for a caption long enough to judge and unlikely to be English."""
        if sum(map(str.isalpha, text)) < self.cfg.min_letters:
            return True
        return self.english_probability(text) >= self.cfg.min_english_probability
