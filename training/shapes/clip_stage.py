"""Stage 1: train the shapes world's small CLIP with open_clip_train, the library's own trainer.

The architecture is an open_clip model-config JSON of this project, registered with
``open_clip.add_model_config`` before ``open_clip_train.main.main(argv)`` runs in this process.

A phase reads either the shards' own captions (``captions: full``) or copies of the shards whose text is
the caption's labels from the spaCy extraction joined by commas (``captions: nouns``, e.g. "pink circle,
sand"): a curriculum that starts contrastive learning on what the captions name before their noise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import open_clip
import torch

from synseg_model import load_checkpoint
from training.shapes import gate
from training.shapes.config import Phase, Stage1Config, resolve
from training.shapes.data_stage import DataFolders, shard_pattern

logger = logging.getLogger(__name__)

def register_model_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Register an open_clip architecture JSON; returns (model name, architecture dict)."""
    path = resolve(path)
    open_clip.add_model_config(path)
    return path.stem, json.loads(path.read_text())


def write_noun_shards(train_dir: Path, labels_dir: Path, out_dir: Path) -> Path:
    """Copies of the shards of ``train_dir`` whose ``txt`` is the caption's labels joined by commas.

    Labels are the ``training.prepare_labels`` sidecars in ``labels_dir``; a sample without labels keeps its
    caption. Returns ``out_dir`` (with its ``sizes.json``).
    """
    import webdataset as wds

    sizes = json.loads((train_dir / "sizes.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(sizes):
        sidecar = labels_dir / f"{Path(name).stem}.json"
        if not sidecar.is_file():
            raise FileNotFoundError(f"{sidecar}: no labels for shard {name} (run training.prepare_labels)")
        labels = json.loads(sidecar.read_text())
        with wds.TarWriter(str(out_dir / name)) as sink:
            for sample in wds.WebDataset(str(train_dir / name), shardshuffle=False):
                words = labels.get(sample["__key__"])
                text = ", ".join(words) if words else sample["txt"].decode()
                sink.write({"__key__": sample["__key__"], "jpg": sample["jpg"], "txt": text})
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return out_dir


def _flags(options: dict[str, Any]) -> list[str]:
    """``{key: value}`` -> ``--key value`` (True: a bare flag; lists: several values)."""
    argv: list[str] = []
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key}")
        elif isinstance(value, list):
            argv += [f"--{key}"] + [str(v) for v in value]
        elif value is not False and value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def build_argv(cfg: Stage1Config, phase: Phase, model_name: str, pattern: str, num_samples: int, logs: Path,
               name: str, init: Path | None) -> list[str]:
    """open_clip_train's command line for one phase of a stage-1 config."""
    batch = cfg.batch_size
    argv = [
        "--model", model_name, "--train-data", pattern, "--dataset-type", "webdataset",
        "--train-num-samples", str(num_samples - num_samples % batch),
        "--batch-size", str(batch), "--epochs", str(phase.epochs), "--workers", str(cfg.workers),
        "--seed", str(cfg.seed), "--logs", str(logs), "--name", name,
    ]
    if init is not None:
        argv += ["--pretrained", str(init)]
    return argv + _flags(cfg.open_clip_train) + _flags(phase.args)


def train_clip(cfg: Stage1Config, train_dir: Path, out_dir: Path, labels_dir: Path | None = None,
               reuse: bool = False) -> Path:
    """Run open_clip_train's phases on the shards in ``train_dir``; returns the last phase's final checkpoint.

    Each phase is one open_clip_train run under ``out_dir/<phase name>`` that starts from the previous
    phase's weights (``--pretrained``; a fresh optimiser and schedule). Earlier runs of the same names are
    removed first (open_clip_train refuses to overwrite an experiment). Phases with ``captions: nouns``
    need ``labels_dir`` (the spaCy sidecars of the shards). With ``reuse``, leading phases that finished
    with the same open_clip_train command line and architecture (``argv.json``) are not run again (an
    interrupted run goes on from its last finished phase; a changed setting runs its phase and every later
    one again).
    """
    import open_clip_train.data
    import open_clip_train.main

    model_name, arch = register_model_config(cfg.model_config)
    shards = {"full": train_dir}
    if any(p.captions == "nouns" for p in cfg.phases):
        if labels_dir is None:
            raise ValueError("a phase with captions: nouns needs the labels folder (training.prepare_labels)")
        nouns = out_dir / "noun_shards"
        done = reuse and (nouns / "sizes.json").is_file()
        shards["nouns"] = nouns if done else write_noun_shards(train_dir, labels_dir, nouns)
    num_samples = shard_pattern(train_dir)[1]
    if num_samples < cfg.batch_size:
        raise ValueError(f"{train_dir}: {num_samples} samples, fewer than one batch of {cfg.batch_size}")
    # The library reads these module constants when it builds the webdataset pipeline.
    buffer = cfg.sample_shuffle_buffer
    open_clip_train.data._SAMPLE_SHUFFLE_SIZE = buffer
    open_clip_train.data._SAMPLE_SHUFFLE_INITIAL = min(open_clip_train.data._SAMPLE_SHUFFLE_INITIAL, buffer)
    checkpoint = None
    for phase in cfg.phases:
        run_dir = out_dir / phase.name
        final = run_dir / "checkpoints" / f"epoch_{phase.epochs}.pt"
        record = run_dir / "argv.json"
        pattern = shard_pattern(shards[phase.captions])[0]
        argv = build_argv(cfg, phase, model_name, pattern, num_samples, out_dir, phase.name, checkpoint)
        # The command line names the architecture file, not what it holds.
        settings = {"argv": argv, "model_config": arch}
        if reuse and final.is_file() and record.is_file() and json.loads(record.read_text()) == settings:
            logger.info("stage 1: reusing phase %s (%s)", phase.name, final)
            checkpoint = final
            continue
        reuse = False  # the phases after one that runs again start from new weights
        if run_dir.exists():
            shutil.rmtree(run_dir)
        logger.info("open_clip_train %s", " ".join(argv))
        status = open_clip_train.main.main(argv)
        if status not in (None, 0):
            raise RuntimeError(f"open_clip_train failed with status {status}; see {run_dir}/out.log")
        checkpoint = final
        if not checkpoint.is_file():
            raise RuntimeError(f"open_clip_train wrote no final checkpoint {checkpoint}")
        record.write_text(json.dumps(settings))
    return checkpoint


def gate_on(cfg: Stage1Config, checkpoint: Path, class_names: list[str], *roots: Path) -> list[dict[str, Any]]:
    """The zero-shot gate's figures (``gate.zero_shot_gate``) of an open_clip checkpoint on each VOC-layout
    split in ``roots``."""
    model, tokenizer = gate.load_open_clip(register_model_config(cfg.model_config)[0], checkpoint)
    options = cfg.open_clip_train
    figures = []
    for root in roots:
        images, labels = gate.load_voc_split(root)
        figures.append(gate.zero_shot_gate(model, tokenizer, images, labels, class_names,
                                           dataclasses.asdict(cfg.gate), options["image-mean"], options["image-std"]))
    return figures


def stage1(cfg: Stage1Config, folders: DataFolders, out: Path, class_names: list[str], stage1_from: str | None,
           require_gate: bool, reuse: bool) -> tuple[Path, dict[str, Any]]:
    """The pipeline's stage 1: train the CLIP (or take the one of the SynSeg checkpoint ``stage1_from``), then
    the zero-shot gate on the gate split.

    Returns:
        the open_clip checkpoint and the gate split's figures (also ``out/gate.json``), with the test split's
        under ``test``: reported, never decided on.
    Raises:
        RuntimeError: the CLIP fails the gate and ``require_gate`` is set.
    """
    if stage1_from:
        checkpoint = borrow_clip(stage1_from, out / "from_checkpoint.pt")
    else:
        checkpoint = train_clip(cfg, folders.train, out, folders.labels, reuse=reuse)
    on_gate, on_test = gate_on(cfg, checkpoint, class_names, folders.gate, folders.test)
    figures = {**on_gate, "test": on_test}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(figures, indent=1))
    logger.info("stage-1 gate: min AUC %.4f, max text cosine %.3f (%s): %s", figures["min_auc"],
                figures["max_text_cosine"], "/".join(figures["max_text_cosine_pair"]),
                "passed" if figures["passed"] else "FAILED: " + "; ".join(figures["failures"]))
    if not figures["passed"] and require_gate:
        raise RuntimeError("stage-1 CLIP failed the zero-shot gate: " + "; ".join(figures["failures"]))
    return checkpoint, figures


def borrow_clip(synseg_checkpoint: str, checkpoint: Path) -> Path:
    """The frozen CLIP of a SynSeg checkpoint, written in open_clip_train's layout so that the gate and stage 2
    read it as a trained stage 1; rewritten only when it changes, since later stages are reused only if newer
    than it."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    clip = load_checkpoint(synseg_checkpoint).clip.state_dict()
    if not (checkpoint.is_file() and _same_tensors(torch.load(checkpoint)["state_dict"], clip)):
        torch.save({"state_dict": clip}, checkpoint)
    logger.info("stage 1: the CLIP of %s (not trained here)", synseg_checkpoint)
    return checkpoint


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
