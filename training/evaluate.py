"""Zero-shot benchmark evaluation under the TCL protocol (VOC, Pascal Context, COCO, Cityscapes).

    python -m training.evaluate --dataset voc --data-root data/VOCdevkit/VOC2012 --checkpoint model.safetensors
    python -m training.evaluate --dataset all --data-root data --checkpoint model.safetensors --json all.json
    python -m training.evaluate --dataset cityscapes --data-root data/cityscapes --predictions preds/

A model is scored by protocol inference (:mod:`training.inference`); ``--predictions`` scores saved label
PNGs of any method (same stem as the image, pixel value = index into the dataset's class list, 255 = none).
The Python API :func:`evaluate_model` returns the dict that ``--json`` writes.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from training.datasets import (
    CLASS_NAME_VARIANTS,
    UNLABELED_RULES,
    DatasetSpec,
    SegmentationDataset,
    list_datasets,
    list_template_sets,
    load_dataset_spec,
    load_protocol,
    load_reference_results,
    load_templates,
    read_index_png,
)
from training.eval_panels import make_palette, save_panel
from training.files import check_writable, write_json
from training.inference import ProtocolPredictor, SlideSettings, SynSegLogits, labels_from_logits
from training.metrics import IGNORE_INDEX, ConfusionMatrix, SegmentationScores

logger = logging.getLogger(__name__)

ALL_DATASETS = "all"
TEXT_EMBEDDING_RULE = ("mean of the raw (not L2-normalised) CLIP text embeddings over the templates: SynSeg's "
                       "FiLM conditions on raw vectors (CLIPSeg's, the decoder the paper starts from, Sec. 5.1); "
                       "TCL renormalises for its cosine classifier")
DEFAULT_VIS_MAX_SIDE = 512

# (index, image or None, label (H, W)) -> predicted class indices (H, W)
PredictFn = Callable[[int, "np.ndarray | None", np.ndarray], torch.Tensor]


def slide_settings(short_side: int | None = None, crop_size: int | None = None, stride: int | None = None,
                   max_long_side: int | None = None, window_batch: int | None = None) -> SlideSettings:
    """Sliding-window settings: each argument, or its protocol default from ``protocol.yaml``."""
    protocol = load_protocol()
    given = {"short_side": short_side, "crop_size": crop_size, "stride": stride,
             "max_long_side": max_long_side, "window_batch": window_batch}
    return SlideSettings(**{k: int(protocol[k] if v is None else v) for k, v in given.items()})


def _load_spec(dataset: str | Path, unlabeled: str | None) -> DatasetSpec:
    """The dataset's spec, with ``unlabeled`` overriding its rule for label 255 on datasets with background."""
    spec = load_dataset_spec(dataset)
    if unlabeled is None or not spec.background:
        return spec
    return dataclasses.replace(spec, unlabeled=unlabeled)


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * float(value)


def _results(spec: DatasetSpec, names: list[str], scores: SegmentationScores, num_images: int,
             settings: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "dataset": spec.name,
        "miou": _percent(scores.miou),
        "aacc": _percent(scores.aacc),
        "per_class": {name: _percent(iou) for name, iou in zip(names, scores.iou)},
        "num_images": num_images,
        "settings": settings,
        "timing": {"seconds": seconds, "images_per_second": num_images / seconds if seconds > 0 else None},
    }


def _score(dataset: SegmentationDataset, predict: PredictFn, *, needs_image: bool, device: torch.device,
           save_vis: Path | None, vis_max_side: int, progress: bool,
           shard: tuple[int, int] | None) -> tuple[SegmentationScores, float]:
    """Run ``predict`` over the split (or this rank's share of it) and score it in one confusion matrix."""
    spec = dataset.spec
    matrix = ConfusionMatrix(spec.num_classes, IGNORE_INDEX, device=device)
    rank, world = shard or (0, 1)
    indices = range(rank, len(dataset), world)
    palette = make_palette(spec.num_classes) if save_vis is not None else None
    start = time.perf_counter()
    for index in tqdm(indices, desc=spec.name, unit="img", disable=not progress):
        ref = dataset.samples[index]
        if needs_image or save_vis is not None:
            image, label = dataset.load(index)
        else:
            image, label = None, dataset.label(index)
        prediction = predict(index, image, label)
        try:
            matrix.update(torch.from_numpy(label), prediction)
        except ValueError as exc:
            raise ValueError(f"{ref.label_path}: {exc}") from exc
        if save_vis is not None:
            save_panel(save_vis / spec.name / f"{ref.key}.png", image, prediction.cpu().numpy(), label,
                       palette, vis_max_side)
    if world > 1:
        matrix.all_reduce()
    return matrix.compute(), time.perf_counter() - start


def evaluate_model(model: torch.nn.Module, dataset: str | Path, data_root: Path, *, limit: int | None = None,
                   device: str | torch.device | None = None, templates: str | None = None,
                   bg_thresh: float | None = None, class_names_variant: str | None = None,
                   unlabeled: str | None = None, short_side: int | None = None, crop_size: int | None = None,
                   stride: int | None = None, max_long_side: int | None = None, window_batch: int | None = None,
                   class_chunk: int | None = None, save_vis: Path | None = None,
                   vis_max_side: int = DEFAULT_VIS_MAX_SIDE, progress: bool = False,
                   shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Score a SynSeg model on one benchmark split with protocol inference.

    Arguments left at None take the protocol defaults of ``training/datasets/protocol.yaml`` (short side
    448, crop 448, stride 224, bg_thresh 0.5, TCL's templates, mmseg class names). The model is put in eval
    mode for the run and given back in the mode it came in.

    Args:
        model: a ``synseg_model.SynSeg`` (unwrap DDP: pass ``model.module``).
        dataset: built-in dataset name or path of a dataset spec YAML.
        data_root: the dataset root, or a data folder holding it at the spec's ``default_root``.
        limit: score only the first ``limit`` images.
        device: where to run; None = where the model already is (the model is moved otherwise).
        templates: template set of ``templates.yaml`` (``tcl``, ``simple``); None = the dataset's.
        bg_thresh: constant background score, used only by datasets with a background class.
        class_names_variant: ``mmseg`` or ``readable``.
        unlabeled: ``background`` or ``ignore``: how stored label 255 is scored on datasets with background;
            None = the spec's (``background`` for COCO-Object, as the published numbers; ``ignore`` elsewhere).
        short_side, crop_size, stride, max_long_side: resize and sliding window (small synthetic images:
            set short_side and crop_size to the image size so each image is one window).
        window_batch, class_chunk: speed/memory only.
        save_vis: write image / prediction / ground-truth panels under ``save_vis/<dataset>/``.
        shard: (rank, world_size): score every world_size-th image and all-reduce the confusion matrix;
            every rank must call this.
    Returns:
        ``{"dataset", "miou", "aacc", "per_class": {name: iou}, "num_images", "settings", "timing"}``;
        mIoU, aAcc and IoUs in percent (None for a class absent from ground truth and predictions).
    """
    spec = _load_spec(dataset, unlabeled)
    protocol = load_protocol()
    variant = class_names_variant or protocol["class_names"]
    template_set = templates or spec.templates
    bg = float(protocol["bg_thresh"] if bg_thresh is None else bg_thresh) if spec.background else None
    chunk = int(protocol["class_chunk"] if class_chunk is None else class_chunk)
    window = slide_settings(short_side, crop_size, stride, max_long_side, window_batch)
    data = SegmentationDataset(spec, Path(data_root), limit=limit)
    if device is not None:
        model.to(device)
    run_device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            text = model.encode_text(spec.prompt_names(variant), load_templates(template_set)).to(run_device)
        predictor = ProtocolPredictor(SynSegLogits(model, text, chunk), window, model.config.mean,
                                      model.config.std, run_device)

        def predict(index: int, image: np.ndarray | None, label: np.ndarray) -> torch.Tensor:
            return labels_from_logits(predictor.logits(image, label.shape), bg)

        scores, seconds = _score(data, predict, needs_image=True, device=run_device, save_vis=save_vis,
                                 vis_max_side=vis_max_side, progress=progress, shard=shard)
    finally:
        model.train(was_training)
    settings = {
        "mode": "model", "spec": str(spec.source), "data_root": str(data.root), "limit": limit,
        "device": str(run_device), "templates": template_set, "num_templates": len(load_templates(template_set)),
        "text_embedding": TEXT_EMBEDDING_RULE, "class_names": variant, "bg_thresh": bg, "unlabeled": spec.unlabeled,
        "short_side": window.short_side, "max_long_side": window.max_long_side, "crop_size": window.crop_size,
        "stride": window.stride, "window_batch": window.window_batch, "class_chunk": chunk,
        "mean": list(model.config.mean), "std": list(model.config.std),
        "prediction": "window logits averaged, bilinear resize to label size, sigmoid, argmax"
                      + (" with constant background score" if bg is not None else ""),
    }
    return _results(spec, spec.class_names(variant), scores, len(data), settings, seconds)


def prediction_files(directory: Path, data: SegmentationDataset) -> list[Path]:
    """The prediction PNG of every sample (``<stem>.png``, or flat ``<name>.png`` for nested stems), in order.

    Raises:
        FileNotFoundError naming the missing folder or the first missing file.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"predictions folder not found: {directory}")
    paths = []
    for ref in data.samples:
        nested, flat = directory / f"{ref.key}.png", directory / f"{Path(ref.key).name}.png"
        if not nested.is_file() and not flat.is_file():
            raise FileNotFoundError(f"prediction file not found: {nested}")
        paths.append(nested if nested.is_file() else flat)
    return paths


def evaluate_predictions(predictions: Path, dataset: str | Path, data_root: Path, *, limit: int | None = None,
                         class_names_variant: str | None = None, unlabeled: str | None = None,
                         save_vis: Path | None = None, vis_max_side: int = DEFAULT_VIS_MAX_SIDE,
                         progress: bool = False) -> dict[str, Any]:
    """Score saved label PNGs of any method: ``predictions/<stem>.png``, pixel = class index, 255 = none.

    For nested layouts (Cityscapes) the stem is ``city/name``; a flat ``predictions/name.png`` also works.
    Every prediction file is checked to exist before scoring; ``unlabeled`` as in :func:`evaluate_model`.
    Returns the same dict as :func:`evaluate_model`.
    """
    spec = _load_spec(dataset, unlabeled)
    variant = class_names_variant or load_protocol()["class_names"]
    data = SegmentationDataset(spec, Path(data_root), limit=limit)
    directory = Path(predictions)
    paths = prediction_files(directory, data)

    def predict(index: int, image: np.ndarray | None, label: np.ndarray) -> torch.Tensor:
        path = paths[index]
        prediction = read_index_png(path)
        if prediction.shape != label.shape:
            raise ValueError(f"{path}: prediction size {prediction.shape[1]}x{prediction.shape[0]} differs "
                             f"from label size {label.shape[1]}x{label.shape[0]}")
        bad = (prediction >= spec.num_classes) & (prediction != IGNORE_INDEX)
        if bad.any():
            raise ValueError(f"{path}: value {int(prediction[bad][0])} is not a class index of {spec.name!r} "
                             f"(0..{spec.num_classes - 1}) nor {IGNORE_INDEX}")
        return torch.from_numpy(prediction.astype(np.int64))

    scores, seconds = _score(data, predict, needs_image=False, device=torch.device("cpu"), save_vis=save_vis,
                             vis_max_side=vis_max_side, progress=progress, shard=None)
    settings = {"mode": "predictions", "predictions": str(directory), "spec": str(spec.source),
                "data_root": str(data.root), "limit": limit, "class_names": variant, "unlabeled": spec.unlabeled}
    return _results(spec, spec.class_names(variant), scores, len(data), settings, seconds)


def paper_row(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The paper's table columns (VOC, Context, Object, Stuff, City, Avg) from per-dataset results.

    Avg is the mean of the five columns, None when one is missing.
    """
    reference = load_reference_results()
    row = {column: (results[name]["miou"] if name in results else None)
           for column, name in reference["datasets"].items()}
    values = [v for v in row.values() if v is not None]
    row["Avg"] = sum(values) / len(values) if len(values) == len(reference["columns"]) else None
    return row


def format_table(row: dict[str, float | None], label: str) -> str:
    """Markdown table: this run's row beside the reference rows named in ``reference_results.yaml``."""
    reference = load_reference_results()
    columns = [*reference["columns"], "Avg"]
    rows = [(label, row)] + [(f"{name} (paper)", reference["rows"][name]) for name in reference["compare"]]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'method':<{width}} | " + " | ".join(f"{c:>7}" for c in columns) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * 9 for _ in columns) + "|"]
    for name, values in rows:
        cells = ["    n/a" if values.get(c) is None else f"{values[c]:7.1f}" for c in columns]
        lines.append(f"| {name:<{width}} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_result(result: dict[str, Any]) -> str:
    """Per-class IoUs and the summary line of one dataset's result."""
    lines = [f"{result['dataset']}: per-class IoU (%)"]
    for name, iou in result["per_class"].items():
        lines.append(f"  {name:<20} {'n/a' if iou is None else f'{iou:6.2f}'}")
    miou = "n/a" if result["miou"] is None else f"{result['miou']:.2f}"
    aacc = "n/a" if result["aacc"] is None else f"{result['aacc']:.2f}"
    lines.append(f"{result['dataset']}: mIoU {miou}  aAcc {aacc}  ({result['num_images']} images, "
                 f"{result['timing']['images_per_second'] or 0:.2f} img/s)")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface; protocol defaults come from ``training/datasets/protocol.yaml``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description="Zero-shot semantic segmentation benchmark evaluation (TCL protocol).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True,
                      help=f"one of {list_datasets()}, '{ALL_DATASETS}' (the five of SynSeg's table), "
                           "or the path of a dataset spec YAML")
    data.add_argument("--data-root", type=Path, required=True,
                      help="dataset root; with --dataset all, the folder holding every dataset at its "
                           "default place (VOCdevkit/VOC2012, VOCdevkit/VOC2010, coco_stuff164k, cityscapes)")
    data.add_argument("--limit", type=_positive_int, default=None, help="score only the first N images of each split")
    source = parser.add_argument_group("what to score (exactly one)").add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a model: a name from `python -m synseg_model.pretrained list` "
                        "('default' = the bundled model), hf-hub:ORG/REPO[@REVISION], or a .safetensors file")
    source.add_argument("--predictions", type=Path, help="folder of label PNGs of any method "
                        "(<stem>.png, pixel = class index, 255 = none; with --dataset all, one sub-folder "
                        "per dataset: <dir>/voc, <dir>/context59, ...); no model involved")
    source.add_argument("--model", help="SynSeg architecture by name or YAML, with its initial weights "
                        "(smoke tests and speed measurements)")
    protocol = load_protocol()
    infer = parser.add_argument_group("protocol (defaults from training/datasets/protocol.yaml)")
    infer.add_argument("--bg-thresh", type=float, default=protocol["bg_thresh"],
                       help="constant background score (datasets with background only)")
    infer.add_argument("--templates", choices=list_template_sets(), default=None,
                       help="prompt templates; None: the dataset spec's set (tcl for the benchmarks)")
    infer.add_argument("--class-names", choices=CLASS_NAME_VARIANTS, default=protocol["class_names"],
                       help="class name spelling")
    infer.add_argument("--unlabeled", choices=UNLABELED_RULES, default=None,
                       help="how stored label 255 is scored on datasets with background; None: each dataset "
                            "spec's rule (coco_object: background, as GroupViT's converter and TCL's numbers; "
                            "voc, context60: ignore, their 255 marks object boundaries)")
    infer.add_argument("--short-side", type=int, default=protocol["short_side"], help="resize short side")
    infer.add_argument("--max-long-side", type=int, default=protocol["max_long_side"],
                       help="cap on the resized long side")
    infer.add_argument("--crop-size", type=int, default=protocol["crop_size"], help="sliding-window side")
    infer.add_argument("--stride", type=int, default=protocol["stride"], help="sliding-window stride")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--window-batch", type=int, default=protocol["window_batch"],
                     help="windows per forward pass (speed only)")
    run.add_argument("--class-chunk", type=int, default=protocol["class_chunk"],
                     help="categories per decoder pass (memory only; 0 = all)")
    run.add_argument("--save-vis", type=Path, default=None, help="write image/prediction/GT panels here")
    run.add_argument("--vis-max-side", type=int, default=DEFAULT_VIS_MAX_SIDE, help="panel tile size cap")
    run.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from synseg_model import SynSeg, create_model
    from synseg_model.runtime import resolve_device

    device = resolve_device(args.device)
    if args.model is not None:
        return create_model(args.model, device=device), f"{args.model} (initial weights)"
    name = None if args.checkpoint == "default" else args.checkpoint
    return SynSeg.from_checkpoint(name, device=device), args.checkpoint


def _predictions_dir(args: argparse.Namespace, dataset: str) -> Path:
    # With --dataset all, each dataset's predictions sit in a sub-folder named after it.
    return args.predictions / dataset if args.dataset == ALL_DATASETS else args.predictions


def _check_files(args: argparse.Namespace, dataset: str) -> None:
    """Raise naming the first missing image, label, split or prediction file of ``dataset``."""
    data = SegmentationDataset(load_dataset_spec(dataset), args.data_root, limit=args.limit)
    if args.predictions is not None:
        prediction_files(_predictions_dir(args, dataset), data)


def _run_one(args: argparse.Namespace, dataset: str, model: torch.nn.Module | None,
             model_name: str | None) -> dict[str, Any]:
    common = {"limit": args.limit, "class_names_variant": args.class_names, "unlabeled": args.unlabeled,
              "save_vis": args.save_vis, "vis_max_side": args.vis_max_side, "progress": not args.no_progress}
    if model is None:
        return evaluate_predictions(_predictions_dir(args, dataset), dataset, args.data_root, **common)
    result = evaluate_model(model, dataset, args.data_root, templates=args.templates, bg_thresh=args.bg_thresh,
                            short_side=args.short_side, crop_size=args.crop_size, stride=args.stride,
                            max_long_side=args.max_long_side, window_batch=args.window_batch,
                            class_chunk=args.class_chunk, **common)
    result["settings"]["model"] = model_name
    return result


def _evaluate_all(args: argparse.Namespace, names: list[str], model: torch.nn.Module | None,
                  model_name: str | None) -> dict[str, Any]:
    """Score every dataset of the paper's table; a dataset whose files fail on content is reported and the
    others are still scored. With ``--json`` the file is rewritten after each dataset, so it always holds
    every finished result (``failed``: dataset -> error, ``pending``: datasets not yet scored)."""
    reference = load_reference_results()
    output: dict[str, Any] = {"datasets": {}, "failed": {}, "pending": list(names), "row": {},
                              "reference": {name: reference["rows"][name] for name in reference["compare"]}}
    for name in names:
        try:
            output["datasets"][name] = _run_one(args, name, model, model_name)
            print(format_result(output["datasets"][name]))
        except (ValueError, FileNotFoundError) as exc:
            output["failed"][name] = str(exc)
            logger.error("%s failed, the other datasets go on: %s", name, exc)
        output["pending"].remove(name)
        output["row"] = paper_row(output["datasets"])
        if args.json is not None:
            write_json(args.json, output, indent=2)
    print(format_table(output["row"], "this run" + (f" (first {args.limit} images)" if args.limit else "")))
    return output


def _check_inputs_and_outputs(args: argparse.Namespace, names: list[str]) -> None:
    """Before the model loads and any image is scored, so that a missing file or an unwritable output loses
    no work: every dataset's files exist, and the outputs can be written."""
    for name in names:
        _check_files(args, name)
    if args.json is not None:
        check_writable(args.json, folder=False, name="--json")
    if args.save_vis is not None:
        check_writable(args.save_vis, folder=True, name="--save-vis")


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate, print per-class IoUs (and the paper-style row for ``--dataset all``); returns the exit code.

    Bad input (unknown dataset, missing or inconsistent files, unreadable checkpoint, an output that cannot be
    written) ends with a one-line error naming the file and exit code 2. With ``--dataset all`` a dataset that
    fails while it is scored is named in a line of its own and the others are still scored; the exit code
    is then 2 and ``--json`` holds every finished result beside the failures.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(load_reference_results()["datasets"].values()) if args.dataset == ALL_DATASETS else [args.dataset]
    try:
        _check_inputs_and_outputs(args, names)
        model, model_name = (None, None) if args.predictions is not None else _load_model(args)
        if args.dataset == ALL_DATASETS:
            output = _evaluate_all(args, names, model, model_name)
        else:
            output = _run_one(args, args.dataset, model, model_name)
            print(format_result(output))
            if args.json is not None:
                write_json(args.json, output, indent=2)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    if args.json is not None:
        logger.info("results written to %s", args.json)
    failed = output.get("failed") if args.dataset == ALL_DATASETS else None
    if failed:
        lines = [f"{parser.prog}: error: {name}: {error}" for name, error in failed.items()]
        kept = f"; the {len(output['datasets'])} finished are in {args.json}" if args.json is not None else ""
        lines.append(f"{parser.prog}: {len(failed)} of {len(names)} datasets failed{kept}")
        parser.exit(2, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
