"""Convert official benchmark downloads to the label files the evaluation reads.

    python -m training.datasets.convert coco_stuff  --src data/coco_stuff164k --dst data/coco_stuff164k
    python -m training.datasets.convert coco_object --src data/coco_stuff164k --dst data/coco_stuff164k
    python -m training.datasets.convert cityscapes  --src data/cityscapes --dst data/cityscapes

COCO: ``--src`` is laid out as mmsegmentation expects, ``images/<split>/*.jpg`` and the official
``stuffthingmaps_trainval2017`` PNGs unzipped into ``annotations/<split>/``; writes
``annotations/<split>/<id>_labelTrainIds.png`` (171 classes) or ``<id>_instanceTrainIds.png`` (80 things + bg).
Cityscapes: ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` (34 -> 19).
When ``--dst`` differs from ``--src``, the image folder is linked (or copied) into ``--dst``.
Pascal Context has no converter here: use mmsegmentation's (see docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
from contextlib import nullcontext
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from training.datasets.readers import read_index_png
from training.metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

CONVERSIONS_FILE = Path(__file__).resolve().parent / "conversions.yaml"
_LUT_SIZE = 256  # every 8-bit label value has an entry


def _load_tables() -> dict:
    return yaml.safe_load(CONVERSIONS_FILE.read_text())


def coco_stuff_lut() -> np.ndarray:
    """(256,) uint8 table: official COCO-Stuff id (0..181) -> train id 0..170; unused ids and 255 -> 255."""
    table = _load_tables()["coco"]
    unused = set(table["unused_ids"])
    lut = np.full(_LUT_SIZE, IGNORE_INDEX, dtype=np.uint8)
    used = [i for i in range(table["num_ids"]) if i not in unused]
    lut[used] = np.arange(len(used), dtype=np.uint8)
    return lut


def coco_object_lut() -> np.ndarray:
    """(256,) uint8 table: thing ids -> 1..80 in order, every other id -> 0 (background), 255 -> 255."""
    table = _load_tables()["coco"]
    unused = set(table["unused_ids"])
    lut = np.zeros(_LUT_SIZE, dtype=np.uint8)
    things = [i for i in range(table["num_thing_ids"]) if i not in unused]
    lut[things] = np.arange(1, len(things) + 1, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def cityscapes_lut() -> np.ndarray:
    """(256,) uint8 table: Cityscapes label id -> train id 0..18, every other id -> 255."""
    lut = np.full(_LUT_SIZE, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in _load_tables()["cityscapes"]["label_to_train"].items():
        lut[int(label_id)] = train_id
    return lut


def _convert_one(job: tuple[Path, Path], lut: np.ndarray, overwrite: bool) -> bool:
    src, dst = job
    if dst.exists() and not overwrite:
        return False
    converted = lut[read_index_png(src)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.png")
    Image.fromarray(converted).save(tmp)
    os.replace(tmp, dst)  # a crash never leaves a truncated label behind
    return True


def _sources(folder: Path, pattern: str, hint: str) -> list[Path]:
    """The official label PNGs in ``folder`` (converted outputs left out); an error names a missing or empty one."""
    if not folder.is_dir():
        raise FileNotFoundError(f"source label folder not found: {folder} ({hint})")
    found = sorted(p for p in folder.glob(pattern) if not p.name.endswith(("TrainIds.png", ".tmp.png")))
    if not found:
        raise ValueError(f"{folder}: no source label files ({pattern}) to convert")
    return found


def _coco_jobs(src: Path, dst: Path, split: str, suffix: str) -> list[tuple[Path, Path]]:
    raw = _sources(src / "annotations" / split, "*.png",
                   "unzip stuffthingmaps_trainval2017.zip into <src>/annotations/")
    return [(p, dst / "annotations" / split / f"{p.stem}{suffix}") for p in raw]


def _cityscapes_jobs(src: Path, dst: Path, split: str) -> list[tuple[Path, Path]]:
    raw = _sources(src / "gtFine" / split, "*/*_gtFine_labelIds.png", "unzip gtFine_trainvaltest.zip into <src>")
    return [(p, dst / "gtFine" / split / p.parent.name / p.name.replace("_labelIds.png", "_labelTrainIds.png"))
            for p in raw]


def _place_images(src: Path, dst: Path, mode: str) -> None:
    if mode == "none" or src.resolve() == dst.resolve() or dst.exists():
        return
    if not src.is_dir():
        logger.warning("image folder %s not found: not placed in the output", src)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "link":
        dst.symlink_to(src.resolve(), target_is_directory=True)
    else:
        shutil.copytree(src, dst)


def run_conversion(jobs: Sequence[tuple[Path, Path]], lut: np.ndarray, *, workers: int = 1,
                   overwrite: bool = False, desc: str = "convert") -> int:
    """Apply ``lut`` to every (source PNG, destination PNG) job; returns how many files were written.

    Raises:
        ValueError naming a source PNG that is not a single-channel 8-bit image (also from a worker).
    """
    convert: Callable[[tuple[Path, Path]], bool] = partial(_convert_one, lut=lut, overwrite=overwrite)
    written = 0
    # The bar is closed on an error too, so that the one-line error message starts a line of its own.
    with Pool(workers) if workers > 1 else nullcontext() as pool, tqdm(total=len(jobs), desc=desc) as bar:
        for done in pool.imap_unordered(convert, jobs, chunksize=16) if pool else map(convert, jobs):
            written += done
            bar.update()
    return written


def get_args_parser() -> argparse.ArgumentParser:
    """The command-line interface of the converters."""
    parser = argparse.ArgumentParser(
        prog="python -m training.datasets.convert",
        description="Convert official COCO-Stuff / Cityscapes downloads to the train-id label PNGs the "
                    "benchmark evaluation reads.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", choices=["coco_stuff", "coco_object", "cityscapes"],
                        help="coco_stuff: 182 ids -> 171 train ids; coco_object: things -> 1..80, rest 0; "
                             "cityscapes: 34 label ids -> 19 train ids")
    parser.add_argument("--src", type=Path, required=True, help="root of the official download")
    parser.add_argument("--dst", type=Path, default=None, help="output root (default: --src, in place)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to convert (default: val2017 for COCO, val for Cityscapes)")
    parser.add_argument("--images", choices=["link", "copy", "none"], default="link",
                        help="how the images reach --dst when it differs from --src")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label files that already exist")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a conversion; returns the process exit code.

    Bad input (missing or empty source folder, a corrupt or multi-channel source PNG, an unwritable output)
    ends with a one-line error naming the file and exit code 2.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _convert(args)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


def _convert(args: argparse.Namespace) -> None:
    dst = args.dst or args.src
    for split in args.splits or (["val"] if args.dataset == "cityscapes" else ["val2017"]):
        if args.dataset == "cityscapes":
            jobs, lut = _cityscapes_jobs(args.src, dst, split), cityscapes_lut()
            _place_images(args.src / "leftImg8bit" / split, dst / "leftImg8bit" / split, args.images)
        else:
            suffix = "_labelTrainIds.png" if args.dataset == "coco_stuff" else "_instanceTrainIds.png"
            lut = coco_stuff_lut() if args.dataset == "coco_stuff" else coco_object_lut()
            jobs = _coco_jobs(args.src, dst, split, suffix)
            _place_images(args.src / "images" / split, dst / "images" / split, args.images)
        written = run_conversion(jobs, lut, workers=args.workers, overwrite=args.overwrite,
                                 desc=f"{args.dataset} {split}")
        logger.info("%s %s: %d label files written, %d already there", args.dataset, split, written,
                    len(jobs) - written)


if __name__ == "__main__":
    raise SystemExit(main())
