"""Extract caption labels for every shard: `python -m training.prepare_labels --shards PATTERN --out DIR`.

Writes one JSON sidecar per shard, `<out>/<shard name>.json` = {sample key: [label, ...]}, which the
training reader joins by key. Shards whose sidecar exists are skipped, so an interrupted run resumes
where it stopped (a sidecar appears atomically, only once its shard is complete).

Captions are parsed by spaCy in batches (`nlp.pipe`). `--processes N` labels N shards at a time, each
process with its own pipeline and writing its own sidecars. (spaCy's `nlp.pipe(n_process=N)` would ship
every parsed Doc back to one parent process; serialising and deserialising a Doc costs about as much as
parsing it, so that parent caps the speed.)
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from .data import expand_shards, sidecar_path
from .labels import DEFAULT_SPACY_MODEL, DEFAULT_STOP_WORDS, LabelExtractor

logger = logging.getLogger(__name__)

CAPTION_EXTENSION = "txt"
_extractor: LabelExtractor | None = None  # one per labelling process (set by _init_worker)


def read_captions(url: str) -> list[tuple[str, str]]:
    """(key, caption) of every sample in one shard; only the caption members are read into memory.

    A broken shard yields the captions read before the break, with a warning.
    """
    def warn(exc: Exception) -> bool:
        logger.warning("shard %s: %r (the rest of this shard is skipped)", url, exc)
        return False

    samples = wds.tarfile_to_samples(handler=warn, select_files=lambda name: name.endswith(f".{CAPTION_EXTENSION}"))
    captions = []
    for sample in samples(iter([{"url": url}])):
        raw = sample.get(CAPTION_EXTENSION, b"")
        captions.append((sample["__key__"], raw.decode("utf-8", errors="replace")))
    return captions


def write_sidecar(path: Path, labels: dict[str, list[str]]) -> None:
    """Write a sidecar atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _init_worker(spacy_model: str, stop_words: Path) -> None:
    global _extractor
    _extractor = LabelExtractor(spacy_model, stop_words)


def label_shard(url: str, out: Path, batch_size: int) -> dict[str, int]:
    """Label one shard and write its sidecar (in the calling process). Returns caption/label counts."""
    captions = read_captions(url)
    labels = {key: found for found, key in _extractor.pipe(((c, k) for k, c in captions), batch_size)}
    write_sidecar(sidecar_path(out, url), labels)
    return {"captions": len(labels), "labels": sum(map(len, labels.values())),
            "without_label": sum(not found for found in labels.values())}


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m training.prepare_labels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True,
                        help="shard pattern: brace range, glob or pipe: URL ('cc12m/{00000..01242}.tar')")
    parser.add_argument("--out", required=True, type=Path, help="folder for the per-shard JSON sidecars")
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL, help="installed spaCy English pipeline")
    parser.add_argument("--stop-words", type=Path, default=DEFAULT_STOP_WORDS,
                        help="stop-word file (one word per line, '#' comments)")
    parser.add_argument("--batch-size", type=int, default=256, help="captions per spaCy batch (nlp.pipe)")
    parser.add_argument("--processes", type=int, default=1, help="shards labelled in parallel processes")
    parser.add_argument("--overwrite", action="store_true", help="redo shards that already have a sidecar")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Label every shard that has no sidecar yet; returns counts and the measured captions per second."""
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1 or args.processes < 1:
        raise ValueError("--batch-size and --processes must be at least 1")
    urls = expand_shards(args.shards)
    args.out.mkdir(parents=True, exist_ok=True)
    todo = [url for url in urls if args.overwrite or not sidecar_path(args.out, url).is_file()]
    logger.info("%d shards, %d already labelled, %d to do", len(urls), len(urls) - len(todo), len(todo))
    summary = {"shards": len(urls), "shards_done": 0, "captions": 0, "without_label": 0, "labels": 0,
               "captions_per_s": 0.0}
    if not todo:
        return summary
    start = time.perf_counter()
    init = (args.spacy_model, args.stop_words)
    jobs = [(url, args.out, args.batch_size) for url in todo]
    pool = multiprocessing.Pool(min(args.processes, len(todo)), _init_worker, init) if args.processes > 1 else None
    try:
        if pool is None:
            _init_worker(*init)
        results = pool.imap_unordered(_label_shard_job, jobs) if pool else map(_label_shard_job, jobs)
        with tqdm(total=len(todo), unit="shard", desc="labels", dynamic_ncols=True) as bar:
            for counts in results:
                for name, value in counts.items():
                    summary[name] += value
                summary["shards_done"] += 1
                bar.update(1)
                bar.set_postfix(captions_per_s=f"{summary['captions'] / (time.perf_counter() - start):.0f}")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.perf_counter() - start
    summary["captions_per_s"] = summary["captions"] / max(elapsed, 1e-9)
    logger.info("%d captions in %.1f s: %.0f captions/s; %.2f labels per caption, %d captions without label",
                summary["captions"], elapsed, summary["captions_per_s"],
                summary["labels"] / max(1, summary["captions"]), summary["without_label"])
    return summary


def _label_shard_job(job: tuple[str, Path, int]) -> dict[str, int]:
    return label_shard(*job)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
