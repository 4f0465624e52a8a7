"""Caption -> label extraction (spaCy) and the prepare_labels CLI."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from training.labels import LabelExtractor, load_stop_words
from training.prepare_labels import main as prepare_labels


@pytest.fixture(scope="module")
def extractor() -> LabelExtractor:
    return LabelExtractor()


@pytest.mark.parametrize("caption, expected", [
    ("<PERSON> and his dog at the beach", ["person", "dog", "beach"]),
    ("a pair of shoes", ["shoe"]),
    ("view from the front of the house", ["house"]),
    ("3 cats sitting on 2 chairs in 2019", ["cat", "chair"]),
    ("two young women walking down the street with their bags", ["young woman", "street", "bag"]),
    ("stock photo of a red car isolated on white background", ["red car"]),
    ("vector illustration of the southwest corner of a room", ["corner", "room"]),
    ("the old man's dog", ["dog"]),
    ("T-shirt with a print", ["t-shirt", "print"]),
    ("a ring on top of sandy ground | free download", ["ring", "sandy ground"]),
])
def test_extracts_expected_labels(extractor, caption, expected):
    assert extractor(caption) == expected


@pytest.mark.parametrize("caption", ["it is so beautiful", "stock photo", "view from the top", "2019"])
def test_caption_without_usable_noun_gives_no_label(extractor, caption):
    assert extractor(caption) == []


def test_person_placeholder_never_leaks(extractor):
    labels = extractor("<PERSON> attends the premiere of the film")
    assert "person" in labels
    assert not any("<" in label or ">" in label for label in labels)


def test_pipe_keeps_order_and_context(extractor):
    items = [("a pair of shoes", "k1"), ("it is so beautiful", "k2"), ("<PERSON> with a cat", "k3")]
    assert list(extractor.pipe(items, batch_size=2)) == [(["shoe"], "k1"), ([], "k2"), (["person", "cat"], "k3")]


def test_stop_words_file_is_read_and_checked(tmp_path):
    words = load_stop_words()
    assert {"southwest", "pair", "front", "photo", "image", "stock", "vector", "illustration", "view",
            "background", "cm"} <= words
    custom = tmp_path / "stop.txt"
    custom.write_text("# comment\n\nFoo  # trailing comment\n")
    assert load_stop_words(custom) == frozenset({"foo"})
    custom.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no word"):
        load_stop_words(custom)
    with pytest.raises(ValueError, match="not found"):
        load_stop_words(tmp_path / "missing.txt")


def _caption_shard(path, captions: dict[str, str]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, caption in captions.items():
            for ext, data in (("txt", caption.encode()), ("jpg", b"not read")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_prepare_labels_writes_sidecars_and_resumes(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _caption_shard(shards / "00000.tar", {"000000000": "a pair of shoes", "000000001": "it is so beautiful"})
    _caption_shard(shards / "00001.tar", {"000010000": "<PERSON> and his dog at the beach"})
    out = tmp_path / "labels"
    summary = prepare_labels(["--shards", str(shards / "{00000..00001}.tar"), "--out", str(out)])
    assert summary["shards_done"] == 2 and summary["captions"] == 3 and summary["without_label"] == 1
    assert summary["captions_per_s"] > 0
    assert json.loads((out / "00000.json").read_text()) == {"000000000": ["shoe"], "000000001": []}
    assert json.loads((out / "00001.json").read_text()) == {"000010000": ["person", "dog", "beach"]}
    # Resumable per shard: a finished shard is not redone, a missing sidecar is (here by two processes).
    _caption_shard(shards / "00002.tar", {"000020000": "a pair of shoes"})
    (out / "00001.json").unlink()
    (out / "00000.json").write_text('{"sentinel": []}')
    again = prepare_labels(["--shards", str(shards / "*.tar"), "--out", str(out), "--processes", "2"])
    assert again["shards_done"] == 2 and again["captions"] == 2
    assert json.loads((out / "00000.json").read_text()) == {"sentinel": []}
    assert json.loads((out / "00001.json").read_text()) == {"000010000": ["person", "dog", "beach"]}
    assert json.loads((out / "00002.json").read_text()) == {"000020000": ["shoe"]}
