"""Read benchmark splits from disk: (image, label) pairs in the layout a :class:`DatasetSpec` describes."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from training.datasets.spec import DatasetSpec
from training.files import read_text
from training.metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

_INDEX_PNG_MODES = ("P", "L")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives. ``key`` is the stem (``city/name`` for nested layouts)."""

    key: str
    image_path: Path
    label_path: Path


def read_index_png(path: Path) -> np.ndarray:
    """Read a single-channel 8-bit PNG (palette or grey) as its raw pixel values.

    Returns:
        (H, W) uint8: for a palette PNG these are the palette indices, i.e. class ids, not colours.
    Raises:
        FileNotFoundError: no such file. ValueError: not a single-channel 8-bit image.
    """
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in _INDEX_PNG_MODES:
                raise ValueError(f"{path}: expected a single-channel 8-bit label image (palette or grey), "
                                 f"got mode {image.mode}")
            return np.array(image)
    except OSError as exc:
        raise ValueError(f"{path}: cannot decode label image: {exc}") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file as :func:`read_image` returns it, read from its header without decoding it."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            # OpenCV applies the EXIF orientation when it decodes (as mmcv's loader does).
            if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except OSError as exc:
        raise ValueError(f"{path}: cannot read image header: {exc}") from exc
    return height, width


def _check_jpeg_complete(path: Path) -> None:
    # OpenCV decodes a truncated JPEG to a grey lower part with only libjpeg's warning on stderr; Pillow
    # raises. Its 1/8-scale draft decode still reads the whole entropy-coded stream, in about a third of
    # OpenCV's decoding time.
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except OSError as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from exc


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (decoded by OpenCV, as mmcv does).

    Raises:
        FileNotFoundError: no such file. ValueError naming the file: undecodable or truncated.
    """
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    _check_jpeg_complete(path)
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def map_label(raw: np.ndarray, spec: DatasetSpec, path: Path) -> np.ndarray:
    """Turn stored label values into class indices of ``spec.classes`` (IGNORE_INDEX = not scored).

    Args:
        raw: (H, W) uint8 as stored on disk.
    Returns:
        (H, W) int64 in ``[0, K) ∪ {IGNORE_INDEX}``; stored IGNORE_INDEX becomes 0 (background) where
        ``spec.unlabeled`` is ``background``.
    Raises:
        ValueError naming ``path`` when a value is neither a class nor IGNORE_INDEX.
    """
    label = raw.astype(np.int64)
    if spec.unlabeled == "background":
        label[label == IGNORE_INDEX] = 0
    if spec.reduce_zero_label:
        ignored = (label == 0) | (label == IGNORE_INDEX)
        label = np.where(ignored, IGNORE_INDEX, label - 1)
    bad = (label != IGNORE_INDEX) & (label >= spec.num_classes)
    if bad.any():
        stored = sorted(set(np.unique(raw[bad]).tolist()))
        raise ValueError(f"{path}: label value(s) {stored[:10]} are not classes of {spec.name!r} "
                         f"({spec.num_classes} classes) nor the ignore index {IGNORE_INDEX}")
    return label


def resolve_root(spec: DatasetSpec, data_root: Path) -> Path:
    """The dataset root: ``data_root`` itself, or ``data_root/spec.default_root`` when only that holds it."""
    data_root = Path(data_root)
    marker = spec.split if spec.split is not None else spec.img_dir
    if (data_root / marker).exists() or spec.default_root is None:
        return data_root
    nested = data_root / spec.default_root
    if (nested / marker).exists():
        logger.info("%s: using %s (data root + default_root)", spec.name, nested)
        return nested
    return data_root


def _read_split_file(path: Path) -> list[str]:
    """The stems of a split file, one a line, each once in first-seen order (a duplicate is warned about)."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    first_line: dict[str, int] = {}
    duplicates: list[tuple[str, int]] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        stem = line.strip()
        if stem and stem in first_line:
            duplicates.append((stem, number))
        elif stem:
            first_line[stem] = number
    if duplicates:
        stem, number = duplicates[0]
        logger.warning("%s: %d duplicate stem(s) ignored, each image is scored once (first: %r on lines %d and %d)",
                       path, len(duplicates), stem, first_line[stem], number)
    return list(first_line)


def _scan_images(img_dir: Path, suffix: str, recursive: bool) -> list[str]:
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {img_dir}")
    pattern = f"*/*{suffix}" if recursive else f"*{suffix}"
    return sorted(p.relative_to(img_dir).as_posix()[: -len(suffix)] for p in img_dir.glob(pattern))


def list_samples(spec: DatasetSpec, root: Path, limit: int | None = None) -> list[SampleRef]:
    """The samples of a split, in split-file order (or sorted), every file checked to exist.

    Args:
        limit: keep only the first ``limit`` samples (None: all).
    Raises:
        FileNotFoundError naming the first missing image / label / split file;
        ValueError when the split is empty or ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"{spec.name}: limit must be at least 1, got {limit}")
    if spec.split is not None:
        split_path = root / spec.split
        keys = _read_split_file(split_path)
        where = str(split_path)
    else:
        keys = _scan_images(root / spec.img_dir, spec.img_suffix, spec.recursive)
        where = str(root / spec.img_dir / ("*/*" if spec.recursive else "*")) + spec.img_suffix
    if not keys:
        raise ValueError(f"{spec.name}: empty split: no samples in {where}")
    if limit is not None:
        keys = keys[:limit]
    refs = [SampleRef(key, root / spec.img_dir / f"{key}{spec.img_suffix}",
                      root / spec.ann_dir / f"{key}{spec.label_suffix}") for key in keys]
    for ref in refs:
        if not ref.image_path.is_file():
            raise FileNotFoundError(f"{spec.name}: image file not found: {ref.image_path}")
        if not ref.label_path.is_file():
            raise FileNotFoundError(f"{spec.name}: label file not found: {ref.label_path}")
    return refs


class SegmentationDataset:
    """A benchmark split: ``len()``, and per index an RGB image and a label map in class indices.

    Args:
        spec: the dataset spec (see :func:`training.datasets.load_dataset_spec`).
        data_root: the dataset root, or a common data folder holding it at ``spec.default_root``.
        limit: evaluate only the first ``limit`` samples.
    """

    def __init__(self, spec: DatasetSpec, data_root: Path, *, limit: int | None = None) -> None:
        self.spec = spec
        self.root = resolve_root(spec, Path(data_root))
        self.samples = list_samples(spec, self.root, limit)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of sample ``index``."""
        return read_image(self.samples[index].image_path)

    def _label(self, index: int, size: tuple[int, int]) -> np.ndarray:
        ref = self.samples[index]
        label = map_label(read_index_png(ref.label_path), self.spec, ref.label_path)
        if label.shape != size:
            raise ValueError(f"{ref.label_path}: label size {label.shape[1]}x{label.shape[0]} differs from "
                             f"image size {size[1]}x{size[0]} ({ref.image_path})")
        return label

    def label(self, index: int) -> np.ndarray:
        """(H, W) int64 class indices of sample ``index``, IGNORE_INDEX where not scored.

        Checked against the image's size, read from its header (the pixels are not decoded).
        """
        return self._label(index, image_size(self.samples[index].image_path))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and label of sample ``index``, checked to have the same height and width."""
        image = self.image(index)
        return image, self._label(index, image.shape[:2])
