"""Extract caption labels for every shard: `python -m training.prepare_labels --shards PATTERN --out DIR`.

Writes one JSON sidecar per shard, `<out>/<shard name>.json` = {sample key: [label, ...]}, which the
training reader joins by key, and `<out>/_summary.json` with the counts of the run. Shards whose sidecar
exists are skipped, so an interrupted run resumes where it stopped (a sidecar appears atomically, only
once its shard is complete).

A damaged shard (not a tar, a bad header, cut short) gets a warning line of its own and no sidecar: the
next run retries it, so re-download it first. Captions longer than `max_chars` are cut before parsing.
Captions that cannot be labelled are set aside, counted and named by key in the summary (`set_aside`):
samples without a caption, captions that are not UTF-8, keys that carry two captions (which image a
caption belongs to is unknown), and captions that are not English (training/language.py). They get no
labels, so training treats them as samples without a caption.
Label settings (spaCy model, stop words, caption cleaning, the abstract-noun test) come from
training/data/labels.yaml; `--config FILE` changes some of them.

Captions are parsed by spaCy in batches (`nlp.pipe`). `--processes N` labels N shards at a time, each
process with its own pipeline and writing its own sidecars. (spaCy's `nlp.pipe(n_process=N)` would ship
every parsed Doc back to one parent process; serialising and deserialising a Doc costs about as much as
parsing it, so that parent caps the speed.)
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import webdataset as wds
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .data import expand_shards, sidecar_path
from .files import check_writable, write_json
from .labels import LabelConfig, LabelExtractor, load_label_config

logger = logging.getLogger(__name__)

CAPTION_EXTENSION = "txt"
SUMMARY_NAME = "_summary.json"  # beside the sidecars; the underscore keeps it apart from shard names
# What is set aside unlabelled, each counted and named by key in the summary.
SET_ASIDE = ("samples_without_caption", "captions_not_utf8", "duplicate_keys", "captions_not_english")
COUNTS = ("captions", "labels", "without_label", "captions_truncated", *SET_ASIDE)
_extractor: LabelExtractor | None = None  # one per labelling process (set by _init_worker)


@dataclass
class ShardCaptions:
    """What one shard holds: (key, caption) of its samples with one UTF-8 caption, the keys set aside while
    reading (`SET_ASIDE` kind -> keys), and the damage if any."""

    captions: list[tuple[str, str]] = field(default_factory=list)
    set_aside: dict[str, list[str]] = field(default_factory=dict)
    damage: str | None = None  # why reading stopped before the end of the archive

    @property
    def samples(self) -> int:
        """Samples read: with a caption or set aside."""
        return len(self.captions) + sum(map(len, self.set_aside.values()))


class _DamageTrackingInfo(tarfile.TarInfo):
    """Remembers why a tar stream stopped. tarfile ends its member loop *silently* on a bad header or on
    a stream that ends without the end-of-archive blocks; only a zero block is a proper end."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            archive.damage = "cut short: the archive ends before its end-of-archive blocks"
            raise
        except tarfile.HeaderError as exc:
            archive.damage = f"bad tar header at byte {archive.offset} ({exc})"
            raise


def _sort_captions(shard: ShardCaptions, raw: dict[str, list[bytes]]) -> None:
    """Fill `shard` from each sample key's caption files (in archive order)."""
    aside: dict[str, list[str]] = {kind: [] for kind in SET_ASIDE[:3]}
    for key, files in raw.items():
        if not files:
            aside["samples_without_caption"].append(key)
        elif len(files) > 1:
            aside["duplicate_keys"].append(key)
        else:
            try:
                shard.captions.append((key, files[0].decode("utf-8")))
            except UnicodeDecodeError:
                aside["captions_not_utf8"].append(key)
    shard.set_aside = aside


def read_captions(url: str) -> ShardCaptions:
    """Captions of one shard, read as a stream; only the caption members are read into memory.

    Samples are grouped by key as WebDataset does (member path up to the first dot of its file name). A
    shard that cannot be opened, is not a tar, or breaks off is reported in `damage`, with what was read
    before the break.
    """
    shard = ShardCaptions()
    raw: dict[str, list[bytes]] = {}  # sample key -> its caption files' bytes
    try:
        with wds.gopen(url) as stream:
            try:
                archive = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_DamageTrackingInfo)
            except tarfile.TarError as exc:
                shard.damage = f"not a tar archive ({exc})"
                return shard
            with archive:
                archive.damage = None
                for member in archive:
                    if not member.isfile():
                        continue
                    folder, _, name = member.name.rpartition("/")
                    stem, _, extension = name.partition(".")
                    files = raw.setdefault(f"{folder}/{stem}" if folder else stem, [])
                    if extension == CAPTION_EXTENSION:
                        files.append(archive.extractfile(member).read())
                shard.damage = archive.damage
    except (tarfile.TarError, EOFError) as exc:
        shard.damage = f"cut short or unreadable ({exc})"
    except OSError as exc:
        shard.damage = f"cannot be read ({exc})"
    finally:
        _sort_captions(shard, raw)
    return shard


def _init_worker(config: LabelConfig) -> None:
    global _extractor
    if _extractor is None or _extractor.cfg != config:  # a forked worker inherits the parent's extractor
        _extractor = LabelExtractor(config)


def label_shard(url: str, out: Path, batch_size: int) -> dict:
    """Label one shard and write its sidecar (in the calling process), unless the shard is damaged.

    Returns:
        the shard's counts (`COUNTS`), its `url`, `damage` (None, or why no sidecar was written),
        `samples_read`, and `set_aside` (kind -> keys, for the kinds that have any).
    """
    shard = read_captions(url)
    result = dict.fromkeys(COUNTS, 0) | {"url": url, "damage": shard.damage, "samples_read": shard.samples,
                                         "set_aside": {}}
    if shard.damage is not None:
        return result
    truncated_before = _extractor.captions_truncated
    labels, not_english = {}, []
    for found, key in _extractor.pipe(((c, k) for k, c in shard.captions), batch_size):
        if found is None:
            not_english.append(key)
        else:
            labels[key] = found
    write_json(sidecar_path(out, url), labels)
    set_aside = shard.set_aside | {"captions_not_english": not_english}
    return result | {"captions": len(labels), "labels": sum(map(len, labels.values())),
                     "without_label": sum(not found for found in labels.values()),
                     "captions_truncated": _extractor.captions_truncated - truncated_before,
                     **{kind: len(keys) for kind, keys in set_aside.items()},
                     "set_aside": {kind: keys for kind, keys in set_aside.items() if keys}}


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m training.prepare_labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True,
                        help="shard pattern: brace range, glob or pipe: URL ('cc12m/{00000..01242}.tar')")
    parser.add_argument("--out", required=True, type=Path, help="folder for the per-shard JSON sidecars")
    parser.add_argument("--config", type=Path, default=None,
                        help="label config YAML whose keys replace those of training/data/labels.yaml")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="cut captions to this many characters before parsing, 1 to 1000000 "
                             "(config: max_chars, 1000)")
    parser.add_argument("--spacy-model", default=None, help="installed spaCy English pipeline (config: spacy_model)")
    parser.add_argument("--stop-words", type=Path, default=None,
                        help="stop-word file, one word per line, '#' comments (config: stop_words)")
    parser.add_argument("--batch-size", type=_at_least_one, default=256, help="captions per spaCy batch (nlp.pipe)")
    parser.add_argument("--processes", type=_at_least_one, default=1, help="shards labelled in parallel processes")
    parser.add_argument("--overwrite", action="store_true", help="redo shards that already have a sidecar")
    return parser


def shard_urls(pattern: str) -> list[str]:
    """The shards of a pattern (`training.data.expand_shards`).

    Raises:
        ValueError: the pattern gives no shard, or it names only local files and none of them exists (a
            brace range in the wrong folder).
    """
    urls = expand_shards(pattern)
    local = [url for url in urls if not urlparse(url).scheme]
    if local and len(local) == len(urls) and not any(Path(url).is_file() for url in local):
        raise ValueError(f"shard pattern {pattern!r} matches no file: none of its {len(local)} shards exists "
                         f"(the first is {local[0]})")
    return urls


def _add_result(summary: dict, result: dict) -> None:
    if result["damage"] is not None:
        summary["shards_damaged"] += 1
        summary["damaged_shards"][result["url"]] = result["damage"]
        logger.warning("damaged shard %s after %d samples: %s; no sidecar written, the next run retries it "
                       "(re-download it first)", result["url"], result["samples_read"], result["damage"])
        return
    summary["shards_done"] += 1
    for name in COUNTS:
        summary[name] += result[name]
    for kind, keys in result["set_aside"].items():
        summary["set_aside"].setdefault(kind, {})[result["url"]] = keys


def _label_shards(todo: list[str], args: argparse.Namespace, cfg: LabelConfig, summary: dict) -> float:
    """Label the shards of `todo` into `summary`; returns the seconds it took."""
    start = time.perf_counter()
    jobs = [(url, args.out, args.batch_size) for url in todo]
    pool = multiprocessing.Pool(min(args.processes, len(todo)), _init_worker, (cfg,)) if args.processes > 1 else None
    try:
        results = pool.imap_unordered(_label_shard_job, jobs) if pool else map(_label_shard_job, jobs)
        with logging_redirect_tqdm(), tqdm(total=len(todo), unit="shard", desc="labels", dynamic_ncols=True) as bar:
            for result in results:
                _add_result(summary, result)
                bar.update(1)
                bar.set_postfix(captions_per_s=f"{summary['captions'] / (time.perf_counter() - start):.0f}")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Label every shard that has no sidecar yet; returns the counts of the run (also in `_summary.json`).

    A bad setting (a value out of range, a missing file, a spaCy pipeline that is not installed, a shard
    pattern that matches nothing, an output folder that cannot be written) ends with a one-line error and
    exit code 2 before any shard is read.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        cfg = load_label_config(args.config, {"max_chars": args.max_chars, "spacy_model": args.spacy_model,
                                              "stop_words": args.stop_words and str(args.stop_words)})
        urls = shard_urls(args.shards)
        check_writable(args.out, folder=True, name="--out")
        _init_worker(cfg)  # loads every model and word list once here, so that none fails inside a worker
    except ValueError as exc:
        parser.error(str(exc))
    todo = [url for url in urls if args.overwrite or not sidecar_path(args.out, url).is_file()]
    logger.info("%d shards, %d already labelled, %d to do", len(urls), len(urls) - len(todo), len(todo))
    summary = {"shards": len(urls), "shards_already_done": len(urls) - len(todo), "shards_done": 0,
               "shards_damaged": 0, **dict.fromkeys(COUNTS, 0), "captions_per_s": 0.0, "damaged_shards": {},
               "set_aside": {}, "config": dataclasses.asdict(cfg)}
    if not todo:
        return summary
    elapsed = _label_shards(todo, args, cfg, summary)
    summary["captions_per_s"] = summary["captions"] / max(elapsed, 1e-9)
    write_json(args.out / SUMMARY_NAME, summary)
    logger.info("%d captions labelled in %.1f s: %.0f captions/s; %.2f labels per caption, %d without label, "
                "%d cut to %d characters; set aside (keys in %s): %s; %d shards labelled, %d damaged%s",
                summary["captions"], elapsed, summary["captions_per_s"],
                summary["labels"] / max(1, summary["captions"]), summary["without_label"],
                summary["captions_truncated"], cfg.max_chars, args.out / SUMMARY_NAME,
                ", ".join(f"{summary[kind]} {kind}" for kind in SET_ASIDE), summary["shards_done"],
                summary["shards_damaged"], " (listed above; rerun after re-downloading them)" if
                summary["shards_damaged"] else "")
    return summary


def _label_shard_job(job: tuple[str, Path, int]) -> dict:
    return label_shard(*job)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
