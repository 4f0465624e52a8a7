#!/usr/bin/env python3
"""Measure the candidate CPU paths of SynSeg and print a markdown table: the measurement behind
``synseg_model.backends.CPU_BACKEND``.

Candidates: torch eager fp32, torch channels-last fp32, torch bf16 autocast, ONNX Runtime fp32 (and
torch.compile fp32 with --compile). Runs are interleaved (one of each per round) so that load from other
processes hits every candidate alike. Each candidate is also checked against eager fp32 on the same random
inputs: largest probability difference and the share of pixels whose mask (p > 0.5) agrees.

    .venv/bin/python scripts/measure_cpu_paths.py --model synseg-vit-b-16 --size 352 --categories 10
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from typing import Callable

import torch

from synseg_model.backends import BackendOptions, SegmentationModule, build_backend
from synseg_model.benchmark import build_model, device_name


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="synseg-vit-b-16",
                        help="architecture name (random init) or checkpoint .safetensors")
    parser.add_argument("--size", type=int, default=352, help="input size in pixels")
    parser.add_argument("--categories", type=int, default=10, help="K, the number of text embeddings")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (one run of every candidate each)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each candidate first")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to build)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def candidates(model, size: int, categories: int, compile: bool, cache_dir: str) -> dict[str, Callable]:
    cpu = torch.device("cpu")
    module = SegmentationModule(model, size).eval()
    options = BackendOptions(max_categories=max(categories, 2), cache_dir=cache_dir)
    eager = build_backend("torch", module, cpu, options)
    bf16 = build_backend("torch", module, cpu, BackendOptions(precision="bf16"))
    ort = build_backend("onnxruntime", module, cpu, options)
    channels_last = copy.deepcopy(module).to(memory_format=torch.channels_last)

    def run_channels_last(images, text):
        with torch.no_grad():
            return channels_last(images.contiguous(memory_format=torch.channels_last), text)

    found = {"torch eager fp32": eager, "torch channels-last fp32": run_channels_last,
             "torch bf16 autocast": bf16, "onnxruntime fp32": ort}
    if compile:
        found["torch.compile fp32"] = build_backend("torch", module, cpu, BackendOptions(compile=True))
    return found


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    model = build_model(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(1, 3, args.size, args.size, generator=generator)
    text = torch.randn(args.categories, model.text_dim, generator=generator)
    with tempfile.TemporaryDirectory() as cache_dir:
        runs = candidates(model, args.size, args.categories, args.compile, cache_dir)
        reference = torch.sigmoid(runs["torch eager fp32"](images, text))
        times: dict[str, list[float]] = {name: [] for name in runs}
        quality = {}
        for name, run in runs.items():
            for _ in range(args.warmup):
                probs = torch.sigmoid(run(images, text).float())
            quality[name] = ((probs - reference).abs().max().item(),
                             ((probs > 0.5) == (reference > 0.5)).float().mean().item())
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run(images, text)
                times[name].append(1000 * (time.perf_counter() - start))
    print(f"\n{args.model} (random init), {args.size} px, K={args.categories}, batch 1, "
          f"{torch.get_num_threads()} threads, {device_name(torch.device('cpu'))}, "
          f"torch {torch.__version__}; {args.rounds} interleaved rounds\n")
    print("| path | p50 ms | min ms | max prob diff vs eager fp32 | mask agreement |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, ts in times.items():
        diff, agree = quality[name]
        print(f"| {name} | {statistics.median(ts):.0f} | {min(ts):.0f} | {diff:.2e} | {100 * agree:.3f}% |")


if __name__ == "__main__":
    main()
