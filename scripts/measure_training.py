#!/usr/bin/env python3
"""Measure the training figures docs/training.md quotes that the training run itself does not log.

    python scripts/measure_training.py reader   # input pipeline: 256 px JPEG -> 224 crop, images/s per process
    python scripts/measure_training.py memory   # bytes autograd keeps for one MCCL step (ViT-B-16, 224 px, K=8)
    python scripts/measure_training.py flops    # FLOPs per image of one MCCL step (ViT-B-16, 224 px)
    python scripts/measure_training.py spacy    # spaCy parse vs Doc (de)serialisation speed (why not n_process)

Training throughput comes from `python -m training.train` itself (images/s in its log and TensorBoard).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"clip_model": "ViT-B-16", "clip_pretrained": None}  # random init: no download needed
IMAGE_SIZE = 224


def _task(labels_per_image: int, batch: int):
    from synseg_model import SynSeg, SynSegConfig
    from training.config import LossConfig
    from training.tasks import create_task
    from training.text_cache import TextEmbeddingCache

    model = SynSeg(SynSegConfig(**MODEL)).train()
    task = create_task("mccl", model, TextEmbeddingCache(model), LossConfig())
    data = {"image": torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE),
            "labels": [[f"thing {i} {j}" for j in range(labels_per_image)] for i in range(batch)],
            "label_mask": torch.ones(batch, labels_per_image, dtype=torch.bool)}
    task.label_embeddings(data)  # the text cache is warm in training
    return model, task, data


def measure_reader(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from train_helpers import write_shards, write_sidecars

    from training.data import ReaderOptions, ShardReader, expand_shards

    root = Path(tempfile.mkdtemp())
    write_sidecars(write_shards(root / "shards", shards=2, per_shard=256, size=(256, 341)), root / "labels")
    options = ReaderOptions(urls=tuple(expand_shards(str(root / "shards" / "*.tar"))), batch_size=32,
                            image_size=IMAGE_SIZE, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28),
                            max_labels=8, label_source="sidecar", labels_dir=str(root / "labels"))
    batches = iter(ShardReader(options))
    next(batches)
    start = time.perf_counter()
    count = sum(len(b["keys"]) for b in itertools.islice(batches, 12))
    elapsed = time.perf_counter() - start
    print(f"reader: {count} images in {elapsed:.2f} s = {count / elapsed:.0f} images/s per process")


def measure_memory(args: argparse.Namespace) -> None:
    model, task, data = _task(args.labels, args.batch)
    seen: set[tuple[int, int]] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen.add((storage.data_ptr(), storage.nbytes()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        task.training_forward(data)
    saved = sum(nbytes for _, nbytes in seen)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    print(f"memory: batch {args.batch}, K={args.labels}: autograd keeps {saved / 2**30:.2f} GiB (fp32); "
          f"parameters {total / 1e6:.1f} M, trainable {trainable / 1e6:.2f} M")


def measure_flops(args: argparse.Namespace) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    for labels in (3, 8):
        model, task, data = _task(labels, args.batch)
        with torch.no_grad(), FlopCounterMode(display=False) as encoder:
            model.encode_image(data["image"])
        with FlopCounterMode(display=False) as step:
            sum(task.training_forward(data).values()).backward()
        print(f"flops: K={labels}: image encoder {encoder.get_total_flops() / args.batch / 1e9:.1f}, "
              f"whole step (forward + backward) {step.get_total_flops() / args.batch / 1e9:.1f} GFLOP per image")


def measure_spacy(args: argparse.Namespace) -> None:
    from spacy.tokens import Doc

    from training.labels import load_spacy

    captions = [f"a young woman with {n} red apples standing in front of the old house at sunset"
                for n in range(args.captions)]
    nlp = load_spacy()
    start = time.perf_counter()
    docs = list(nlp.pipe(captions, batch_size=256))
    parse = time.perf_counter() - start
    start = time.perf_counter()
    blobs = [doc.to_bytes() for doc in docs]
    dump = time.perf_counter() - start
    start = time.perf_counter()
    for blob in blobs:
        Doc(nlp.vocab).from_bytes(blob)
    load = time.perf_counter() - start
    n = len(captions)
    print(f"spacy: parse {n / parse:.0f} captions/s, Doc.to_bytes {n / dump:.0f}/s, "
          f"Doc.from_bytes {n / load:.0f}/s (one process)")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("reader", "memory", "flops", "spacy"))
    parser.add_argument("--batch", type=int, default=4, help="images (memory, flops)")
    parser.add_argument("--labels", type=int, default=8, help="labels per image (memory)")
    parser.add_argument("--captions", type=int, default=2000, help="captions (spacy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    {"reader": measure_reader, "memory": measure_memory, "flops": measure_flops,
     "spacy": measure_spacy}[args.what](args)


if __name__ == "__main__":
    main()
