"""Small img2dataset-style shards for the training tests (members `{key}.jpg/.txt/.json`, optional
`{key}.seg.png`), with label sidecars written directly so that most tests need no spaCy."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"0": "grass", "1": "water", "2": "circle", "3": "square"}
CAPTIONS = ["a red circle on grass", "a blue square in water", "two circles on the grass",
            "stock photo of a square on water"]
LABELS = [["circle", "grass"], ["square", "water"], ["circle", "grass"], ["square", "water"]]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its label-index map: background class 0 or 1, a box of class 2 or 3."""
    h, w = size
    seg = np.full((h, w), rng.integers(0, 2), dtype=np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    seg[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(2, 4)
    seg[0, :] = 255  # an ignore row
    colours = np.array([[40, 160, 40], [30, 60, 200], [220, 30, 30], [240, 220, 20]], dtype=np.uint8)
    rgb = colours[np.minimum(seg, 3)] + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
    return rgb, seg


def write_shards(folder: Path, shards: int, per_shard: int, size: tuple[int, int] = (48, 40),
                 seg: bool = False, seed: int = 0, corrupt: set[str] = frozenset()) -> list[Path]:
    """Write `shards` tars of `per_shard` samples; keys in `corrupt` get garbage instead of a JPEG.

    Returns:
        the shard paths (`folder/00000.tar`, ...).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                rgb, labels = _scene(rng, size)
                buffer = io.BytesIO()
                Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
                jpg = b"\xff\xd8 not a jpeg" if key in corrupt else buffer.getvalue()
                meta = {"key": key, "caption": CAPTIONS[i % len(CAPTIONS)]}
                if seg:
                    meta["classes"] = CLASSES
                _add(tar, f"{key}.jpg", jpg)
                _add(tar, f"{key}.txt", CAPTIONS[i % len(CAPTIONS)].encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                if seg:
                    png = io.BytesIO()
                    Image.fromarray(labels).save(png, format="PNG")
                    _add(tar, f"{key}.seg.png", png.getvalue())
        paths.append(path)
    return paths


def write_sidecars(shard_paths: list[Path], labels_dir: Path, unlabeled: set[str] = frozenset()) -> None:
    """Label sidecars as `training.prepare_labels` writes them; keys in `unlabeled` get no label."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    for path in shard_paths:
        with tarfile.open(path) as tar:
            keys = sorted({m.name.split(".")[0] for m in tar.getmembers()})
        sidecar = {key: ([] if key in unlabeled else LABELS[int(key[-4:]) % len(LABELS)]) for key in keys}
        (labels_dir / f"{path.stem}.json").write_text(json.dumps(sidecar))
