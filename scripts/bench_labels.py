"""Throughput of caption labelling, per process: `python scripts/bench_labels.py`.

Prints a table for the packaged label config and for the same config without its filters (no language
test, no WordNet test, no credit patterns): the time per caption spent outside the spaCy parse (language
test, cleaning and label extraction), and captions per second two ways: the extractor alone
(`LabelExtractor.pipe`) and `python -m training.prepare_labels` end to end (tar read, labels, sidecar), on
`--processes` shards of `--count` captions labelled by as many processes (the rate is then given in total
and per process, and per CPU second of the labelling processes: the rate of one process on a core of its own).
The target is at least 300 captions/s per process with the filters. The parse dominates, so the wall-clock
rates follow the CPU: on a shared machine they drop with its load, while the first and last columns hardly do.

Captions: the labelled alt-text set (tests/fixtures/labels_alt_text.yaml), `--join` of them at a time joined
by ", " (default 3: about 130 characters, 43 for `--join 1`), or your own file with `--captions FILE` (one
caption per line, used as they are). Each figure is the best of `--repeats` runs, since the machine may be
shared; all runs are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import prepare_labels  # noqa: E402
from training.labels import LabelConfig, LabelExtractor, load_label_config  # noqa: E402

GOLD = REPO / "tests" / "fixtures" / "labels_alt_text.yaml"


def _captions(args: argparse.Namespace) -> list[str]:
    if args.captions:
        base = [line.strip() for line in args.captions.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        gold = [item["caption"] for item in yaml.safe_load(GOLD.read_text(encoding="utf-8"))]
        base = [", ".join(gold[(i + k * 7) % len(gold)] for k in range(args.join)) for i in range(len(gold))]
    return [base[i % len(base)] for i in range(args.count)]


def _write_shard(path: Path, captions: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, caption in enumerate(captions):
            data = caption.encode()
            info = tarfile.TarInfo(f"{i:09d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (prepare_labels' labelling processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _best_rate(run, count: int, repeats: int) -> tuple[float, list[float], float]:
    """Best captions per wall second, all of them, and best captions per CPU second (what one process
    reaches on a core of its own: unlike wall time, hardly moved by other jobs on a shared machine)."""
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), _cpu_seconds()
        run()
        rates.append(count / (time.perf_counter() - start))
        cpu_rates.append(count / max(_cpu_seconds() - cpu, 1e-9))
    return max(rates), rates, max(cpu_rates)


def _without_filters(cfg: LabelConfig) -> LabelConfig:
    return dataclasses.replace(cfg, remove_patterns=[],
                               concreteness=dataclasses.replace(cfg.concreteness, enabled=False),
                               language=dataclasses.replace(cfg.language, enabled=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=Path, default=None, help="file with one caption per line")
    parser.add_argument("--count", type=int, default=5000, help="captions per run")
    parser.add_argument("--join", type=int, default=3, help="labelled captions joined into one benchmark caption")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the best is reported)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--processes", type=int, default=1,
                        help="prepare_labels end to end: this many shards of --count captions, this many processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    captions = _captions(args)
    mean_chars = statistics.fmean(map(len, captions))
    cfg = load_label_config()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.processes):
            _write_shard(Path(tmp) / f"{index:05d}.tar", captions)
        for name, config in (("spaCy + stop list (filters off)", _without_filters(cfg)),
                             ("packaged config (all filters)", cfg)):
            start = time.perf_counter()
            extractor = LabelExtractor(config)
            load_s = time.perf_counter() - start
            docs = list(extractor.nlp.pipe([extractor.prepare(c) for c in captions], batch_size=args.batch_size))
            start = time.perf_counter()
            for caption, doc in zip(captions, docs):
                extractor.prepare(caption)
                extractor.extract(doc)
            own_us = (time.perf_counter() - start) / len(captions) * 1e6
            items = [(c, None) for c in captions]
            pipe_best, pipe_all, _ = _best_rate(lambda: list(extractor.pipe(items, args.batch_size)),
                                             len(captions), args.repeats)
            config_file = Path(tmp) / "labels.yaml"
            config_file.write_text(yaml.safe_dump({"remove_patterns": config.remove_patterns,
                                                   "concreteness": {"enabled": config.concreteness.enabled},
                                                   "language": {"enabled": config.language.enabled}}))
            cli = ["--shards", str(Path(tmp) / "*.tar"), "--out", str(Path(tmp) / "labels"), "--overwrite",
                   "--config", str(config_file), "--batch-size", str(args.batch_size),
                   "--processes", str(args.processes)]
            cli_best, cli_all, cli_cpu = _best_rate(lambda: prepare_labels.main(cli),
                                                    len(captions) * args.processes, args.repeats)
            rows.append((name, load_s, own_us, pipe_best, pipe_all, cli_best, cli_all, cli_cpu))
    print(f"\n{len(captions)} captions per shard (mean {mean_chars:.0f} characters), prepare_labels on "
          f"{args.processes} shard(s) with --processes {args.processes}, best of {args.repeats}\n")
    print(f"| {'setting':<34} | load s | clean + extract us/caption | pipe captions/s "
          "| prepare_labels captions/s | per process | per CPU second |")
    print(f"|{'-' * 36}|--------|----------------------------|-----------------|---------------------------|"
          "-------------|----------------|")
    for name, load_s, own_us, pipe_best, _, cli_best, _, cli_cpu in rows:
        print(f"| {name:<34} | {load_s:6.1f} | {own_us:26.0f} | {pipe_best:15.0f} | {cli_best:25.0f} "
              f"| {cli_best / args.processes:11.0f} | {cli_cpu:14.0f} |")
    print("\nall runs:")
    for name, _, _, _, pipe_all, _, cli_all, _ in rows:
        print(f"  {name}: pipe {[round(r) for r in pipe_all]}, prepare_labels {[round(r) for r in cli_all]}")


if __name__ == "__main__":
    main()
