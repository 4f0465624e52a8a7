"""Prebuild the compiled models a Segmenter would otherwise build on its first start.

    python -m synseg_model.build_engines --checkpoint clipseg-rd64-refined --sizes 352 --max-categories 32

Builds one artifact per input size into the engine cache (TensorRT engines on CUDA; ONNX graphs with
``--backend onnxruntime``), keyed exactly as ``Segmenter`` looks them up, then checks each against eager
fp32 at K = 1 and K = max (largest probability difference, mask agreement at 0.5). Start the Segmenter
with the same checkpoint, size, ``max_categories``, precision and ``cache_dir`` to load them.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm

from .backends import (
    DEFAULT_MAX_CATEGORIES,
    PRECISIONS,
    BackendOptions,
    BackendUnavailable,
    SegmentationModule,
    agreement_with_eager,
    build_backend,
    tensorrt_status,
)
from .benchmark import build_model
from .engine_cache import default_cache_dir
from .factory import load_checkpoint
from .runtime import resolve_device


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synseg_model.build_engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None,
                        help="a model name (python -m synseg_model.pretrained list), hf-hub:ORG/REPO[@REV] or a "
                             ".safetensors file; default: the shipped default model")
    source.add_argument("--model", default=None, help="architecture name or config YAML, random weights (tests)")
    parser.add_argument("--sizes", default="352", help="comma-separated input sizes in pixels")
    parser.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES,
                        help="largest K the engines accept")
    parser.add_argument("--backend", default="tensorrt", choices=("tensorrt", "onnxruntime"))
    parser.add_argument("--precision", default=None, choices=tuple(PRECISIONS),
                        help="default: fp16 for tensorrt, fp32 for onnxruntime")
    parser.add_argument("--device", default=None, help="default: cuda for tensorrt, cpu for onnxruntime")
    parser.add_argument("--cache-dir", default=None, help=f"engine cache (default {default_cache_dir()})")
    parser.add_argument("--min-agreement", type=float, default=0.99,
                        help="fail when the masks agree with eager fp32 on fewer pixels than this")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sys.exit(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.max_categories < 1:
        sys.exit("--sizes and --max-categories must be positive")
    try:
        device = resolve_device(args.device or ("cuda" if args.backend == "tensorrt" else "cpu"))
    except ValueError as exc:
        sys.exit(f"cannot build {args.backend} engines here: {exc}")
    if args.backend == "tensorrt" and tensorrt_status()[0] is None:
        sys.exit(f"cannot build tensorrt engines here: {tensorrt_status()[1]}")
    try:
        model = build_model(args.model) if args.model else load_checkpoint(args.checkpoint)
    except ValueError as exc:  # CheckpointError (unknown name, offline and not cached...), bad architecture
        sys.exit(f"cannot load the model: {exc}")
    model = model.to(device).eval()
    options = BackendOptions(max_categories=args.max_categories, precision=args.precision, cache_dir=args.cache_dir)
    failed = False
    for size in tqdm(sizes, desc="engines", unit="size"):
        module = SegmentationModule(model, size).eval()
        start = time.perf_counter()
        try:
            backend = build_backend(args.backend, module, device, options)
        except BackendUnavailable as exc:
            sys.exit(f"cannot build {args.backend} engines here: {exc}")
        seconds = time.perf_counter() - start
        for k in sorted({1, args.max_categories}):
            diff, agree = agreement_with_eager(backend, module, k)
            ok = agree >= args.min_agreement
            failed |= not ok
            print(f"{'ok  ' if ok else 'FAIL'} {backend.describe()} {size} px K={k}: max |p - p_fp32| = {diff:.2e}, "
                  f"masks agree on {100 * agree:.3f}% of pixels ({seconds:.1f} s to build/load) -> {backend.path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
