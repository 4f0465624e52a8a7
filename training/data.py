"""WebDataset reader: img2dataset shards -> batches of normalised images with padded label lists.

Each rank reads a disjoint slice of the shards and each dataloader worker a disjoint slice of its rank's
(webdataset's split_by_node / split_by_worker, done here with explicit rank and worker numbers). Shards
are re-shuffled every epoch with a seeded generator, samples go through a seeded shuffle buffer, and the
stream never ends, so ranks never wait for one another at an epoch's end.

Exact resume: every batch carries its `position` (logical worker, epoch, samples read from that worker's
shuffled stream). A resumed worker replays its stream without decoding up to that point. DataLoader hands
out batches round-robin over workers, so physical worker i acts as logical worker (i + next_worker) % W
and the batch order continues exactly where it stopped.

Corrupt or undecodable samples, broken shards and samples without a usable label are skipped and
counted; each batch carries the counts (`skipped`) accumulated in its worker since its previous batch.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from synseg_model import image_to_tensor

from .metrics import IGNORE_INDEX

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SEG_EXTENSION = "seg.png"
SKIP_REASONS = ("corrupt", "no_labels", "shard_error")
LABEL_SOURCES = ("sidecar", "seg")
_NEGATIVE = -2  # class id of a sampled absent class: an all-negative referring mask
_UNMATCHED = -1  # a label without a ground-truth class
_LOG_FIRST_SKIPS = 5  # per worker and reason; later ones are only counted
_REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)")


def expand_shards(pattern: str) -> list[str]:
    """Expand a shard pattern into URLs.

    Accepts brace ranges (`cc12m/{00000..01242}.tar`), globs (`cc12m/*.tar`), `pipe:` commands and
    http/s3 URLs (brace-expanded only), and several patterns joined with `::`.

    Raises:
        ValueError: the pattern is empty, or a local glob matches no file.
    """
    urls: list[str] = []
    for part in filter(None, (p.strip() for p in pattern.split("::"))):
        for url in braceexpand.braceexpand(part):
            if not _REMOTE.match(url) and glob.has_magic(url):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise ValueError(f"shard pattern {url!r} matches no file")
                urls.extend(matches)
            else:
                urls.append(url)
    if not urls:
        raise ValueError(f"shard pattern {pattern!r} gives no shard")
    return urls


def shard_name(url: str) -> str:
    """The shard's file name without `.tar`, for any URL form ("pipe:aws s3 cp s3://b/00012.tar -" -> "00012")."""
    names = re.findall(r"([^/\s]+)\.tar\b", url)
    if not names:
        raise ValueError(f"cannot find a '<name>.tar' in shard URL {url!r}")
    return names[-1]


def sidecar_path(labels_dir: str | Path, url: str) -> Path:
    """Where `training.prepare_labels` writes the labels of the shard at `url`."""
    return Path(labels_dir) / f"{shard_name(url)}.json"


@dataclass
class DataPosition:
    """Where one rank's data stream stands: per logical worker (epoch, samples read), next worker."""

    cursors: dict[int, tuple[int, int]] = field(default_factory=dict)
    next_worker: int = 0

    def advance(self, position: dict, num_workers: int) -> None:
        """Record that the batch with `position` (from the batch dict) was trained on."""
        worker = position["worker"]
        self.cursors[worker] = (position["epoch"], position["consumed"])
        self.next_worker = (worker + 1) % max(1, num_workers)

    def state_dict(self) -> dict:
        """Plain types only (checkpoints load with weights_only=True)."""
        return {"cursors": {int(w): list(c) for w, c in self.cursors.items()},
                "next_worker": self.next_worker}

    @classmethod
    def from_state_dict(cls, state: dict) -> "DataPosition":
        return cls({int(w): (int(c[0]), int(c[1])) for w, c in state["cursors"].items()},
                   int(state["next_worker"]))


@dataclass(frozen=True)
class ReaderOptions:
    """What the reader needs to know; built from `DataConfig` and the model config."""

    urls: tuple[str, ...]
    batch_size: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_labels: int
    label_source: str  # "sidecar" (caption labels) or "seg" (classes present in `seg.png`)
    labels_dir: str | None = None
    classes: tuple[str, ...] | None = None
    dense_negatives: int = 0
    shuffle_buffer: int = 1000
    seed: int = 0


def _resize_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Shorter side to `size`, then the central `size` x `size` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


class _SkipSample(Exception):
    """A sample that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ShardReader(torch.utils.data.IterableDataset):
    """Endless stream of batches for one rank (use with `DataLoader(batch_size=None)`).

    Batches are dicts:
        image: (B, 3, S, S) float32, normalised with the model's mean/std.
        labels: list of B label lists (each 1..max_labels strings).
        label_mask: (B, Kmax) bool, True for real labels, Kmax = the longest label list in the batch.
        keys: list of B sample keys.
        masks: (B, Kmax, S, S) float32 referring masks (1 = the label's class), present when a sample
            of the batch has `seg.png`; mask_valid (B, Kmax) bool marks labels with ground truth;
            pixel_valid (B, S, S) bool is False on ignore pixels.
        position: {"worker", "epoch", "consumed"} of this batch (see `DataPosition`).
        skipped: {reason: count} skipped in this worker since its previous batch.
    """

    def __init__(self, options: ReaderOptions, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 position: DataPosition | None = None) -> None:
        super().__init__()
        if options.label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {options.label_source!r}")
        if options.label_source == "sidecar" and not options.labels_dir:
            raise ValueError("label_source 'sidecar' needs labels_dir")
        streams = world_size * max(1, num_workers)
        if len(options.urls) < streams:
            raise ValueError(f"{len(options.urls)} shards cannot feed {world_size} ranks x "
                             f"{max(1, num_workers)} workers: use fewer data.workers or more shards")
        self.options = options
        self.rank = rank
        self.world_size = world_size
        self.num_workers = max(1, num_workers)
        self.position = position or DataPosition()
        self._class_filter = frozenset(options.classes) if options.classes else None
        self._sidecar_url: str | None = None
        self._sidecar: dict[str, list[str]] | None = None
        self._counters: Counter = Counter()
        self._logged: Counter = Counter()

    # --- shards and raw samples
    def shards_for(self, epoch: int, worker: int) -> list[str]:
        """This rank's and logical worker's shards in `epoch` (a seeded permutation of all shards)."""
        urls = list(self.options.urls)
        random.Random(f"shards-{self.options.seed}-{epoch}").shuffle(urls)
        return urls[self.rank::self.world_size][worker::self.num_workers]

    def _skip(self, reason: str, message: str) -> None:
        self._counters[reason] += 1
        self._logged[reason] += 1
        if self._logged[reason] <= _LOG_FIRST_SKIPS:
            logger.warning("skipped (%s): %s", reason, message)
            if self._logged[reason] == _LOG_FIRST_SKIPS:
                logger.warning("further '%s' skips in this worker are counted, not logged", reason)

    def _shard_error(self, exc: Exception) -> bool:
        """webdataset handler: a broken shard or tar member is counted and reading goes on."""
        self._skip("shard_error", repr(exc))
        return True

    def _raw_samples(self, epoch: int, worker: int) -> Iterator[dict]:
        shards = ({"url": url} for url in self.shards_for(epoch, worker))
        raw = wds.tarfile_to_samples(handler=self._shard_error)(shards)
        rng = random.Random(f"samples-{self.options.seed}-{epoch}-{self.rank}-{worker}")
        return wds.shuffle(self.options.shuffle_buffer, rng=rng)(iter(raw))

    # --- labels
    def _sidecar_labels(self, sample: dict) -> list[str]:
        url = sample["__url__"]
        if url != self._sidecar_url:
            self._sidecar_url, self._sidecar = url, None
            path = sidecar_path(self.options.labels_dir, url)
            try:
                self._sidecar = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("no usable label sidecar for shard %s (%s): its samples are skipped", url, exc)
        if self._sidecar is None:
            return []
        labels = self._sidecar.get(sample["__key__"]) or []
        return [str(label) for label in labels]

    def _filter(self, labels: list[str]) -> list[str]:
        if self._class_filter is not None:
            labels = [label for label in labels if label in self._class_filter]
        return labels[:self.options.max_labels]

    @staticmethod
    def _classes(sample: dict) -> dict[str, int]:
        """Class name -> index from the sample's json `classes` ({index: name}); {} when absent."""
        if "json" not in sample:
            return {}
        meta = json.loads(sample["json"])
        classes = meta.get("classes") if isinstance(meta, dict) else None
        return {str(name): int(index) for index, name in (classes or {}).items()}

    def _seg_labels(self, seg: np.ndarray, classes: dict[str, int], key: str, epoch: int
                    ) -> tuple[list[str], list[int]]:
        """Labels of a dense sample: the classes present in `seg`, then sampled absent classes."""
        by_index = {index: name for name, index in classes.items()}
        present = [int(v) for v in np.unique(seg) if v != IGNORE_INDEX]
        unknown = [v for v in present if v not in by_index]
        if unknown:
            raise _SkipSample("corrupt", f"{key}: seg.png index {unknown[0]} has no entry in json classes")
        labels = self._filter([by_index[v] for v in present])
        ids = [classes[name] for name in labels]
        if self.options.dense_negatives:
            pool = sorted(set(self._class_filter or classes) - {by_index[v] for v in present})
            rng = random.Random(f"negatives-{self.options.seed}-{epoch}-{key}")
            room = self.options.max_labels - len(labels)
            negatives = rng.sample(pool, min(self.options.dense_negatives, len(pool), max(0, room)))
            labels, ids = labels + negatives, ids + [_NEGATIVE] * len(negatives)
        return labels, ids

    # --- decoding
    def _decode(self, sample: dict, epoch: int) -> dict:
        """Raw tar members -> {key, image (3,S,S), labels, class_ids, seg (S,S) uint8 or None}."""
        key = sample["__key__"]
        has_seg = SEG_EXTENSION in sample
        if self.options.label_source == "sidecar":
            labels = self._filter(self._sidecar_labels(sample))
            if not labels:
                raise _SkipSample("no_labels", f"{key} in {sample['__url__']}")
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise _SkipSample("corrupt", f"{key}: no image member ({', '.join(IMAGE_EXTENSIONS)})")
        size = self.options.image_size
        try:
            image = Image.open(io.BytesIO(sample[ext]))
            stored_size = image.size
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is large
            image = _resize_crop(image.convert("RGB"), size, Image.Resampling.BICUBIC)
            seg = classes = None
            if has_seg or self.options.label_source == "seg":
                classes = self._classes(sample)
                seg_image = Image.open(io.BytesIO(sample[SEG_EXTENSION]))
                if seg_image.size != stored_size:
                    raise ValueError(f"seg.png is {seg_image.size}, the image {stored_size}")
                seg = np.asarray(_resize_crop(seg_image, size, Image.Resampling.NEAREST), dtype=np.uint8)
        except _SkipSample:
            raise
        except Exception as exc:  # PIL raises many types for broken files
            raise _SkipSample("corrupt", f"{key} in {sample['__url__']}: {exc!r}") from None
        if self.options.label_source == "seg":
            labels, ids = self._seg_labels(seg, classes, key, epoch)
            if not labels:
                raise _SkipSample("no_labels", f"{key}: no usable class in seg.png")
        else:
            ids = [classes.get(label, _UNMATCHED) for label in labels] if classes else []
        pixels = image_to_tensor(np.array(image, dtype=np.uint8), self.options.mean, self.options.std)[0]
        return {"key": key, "image": pixels, "labels": labels,
                "class_ids": ids, "seg": None if seg is None else torch.from_numpy(seg.copy())}

    def _collate(self, items: list[dict], position: dict) -> dict[str, Any]:
        kmax = max(len(item["labels"]) for item in items)
        label_mask = torch.zeros(len(items), kmax, dtype=torch.bool)
        for b, item in enumerate(items):
            label_mask[b, :len(item["labels"])] = True
        batch = {"image": torch.stack([item["image"] for item in items]),
                 "labels": [item["labels"] for item in items], "label_mask": label_mask,
                 "keys": [item["key"] for item in items], "position": position,
                 "skipped": {reason: self._counters[reason] for reason in SKIP_REASONS}}
        self._counters.clear()
        if any(item["seg"] is not None for item in items):
            batch.update(_dense_targets(items, kmax, self.options.image_size))
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_workers:
            raise ValueError(f"ShardReader built for {self.num_workers} workers runs in {workers}")
        worker = (physical + self.position.next_worker) % workers
        epoch, consumed = self.position.cursors.get(worker, (0, 0))
        while True:
            produced, items = 0, []
            for read, sample in enumerate(self._raw_samples(epoch, worker), start=1):
                if read <= consumed:  # replaying up to the resume point: no decoding
                    continue
                try:
                    items.append(self._decode(sample, epoch))
                except _SkipSample as skip:
                    self._skip(skip.reason, str(skip))
                    continue
                if len(items) == self.options.batch_size:
                    yield self._collate(items, {"worker": worker, "epoch": epoch, "consumed": read})
                    produced, items = produced + 1, []
            if produced == 0 and consumed == 0:
                raise RuntimeError(f"rank {self.rank} worker {worker}: fewer than {self.options.batch_size}"
                                   f" usable samples in epoch {epoch} over shards "
                                   f"{self.shards_for(epoch, worker)} (skipped: {dict(self._counters)})")
            epoch, consumed = epoch + 1, 0  # an epoch's last partial batch is dropped


def _dense_targets(items: list[dict], kmax: int, size: int) -> dict[str, torch.Tensor]:
    """Referring masks (B,K,S,S) float32, mask_valid (B,K) bool, pixel_valid (B,S,S) bool."""
    masks = torch.zeros(len(items), kmax, size, size)
    mask_valid = torch.zeros(len(items), kmax, dtype=torch.bool)
    pixel_valid = torch.ones(len(items), size, size, dtype=torch.bool)
    for b, item in enumerate(items):
        if item["seg"] is None:
            continue
        pixel_valid[b] = item["seg"] != IGNORE_INDEX
        for k, class_id in enumerate(item["class_ids"]):
            if class_id == _UNMATCHED:
                continue
            mask_valid[b, k] = True
            if class_id != _NEGATIVE:
                masks[b, k] = (item["seg"] == class_id).float()
    return {"masks": masks, "mask_valid": mask_valid, "pixel_valid": pixel_valid}


def check_sidecars(urls: list[str] | tuple[str, ...], labels_dir: str) -> None:
    """Fail early when no shard has its label sidecar; warn when only some lack one.

    Raises:
        ValueError: no sidecar exists for any shard (run `training.prepare_labels` first).
    """
    missing = [url for url in urls if not sidecar_path(labels_dir, url).is_file()]
    if len(missing) == len(urls):
        raise ValueError(f"no label sidecar in {labels_dir} for any of {len(urls)} shards (e.g. "
                         f"{sidecar_path(labels_dir, urls[0])}); run python -m training.prepare_labels")
    if missing:
        logger.warning("%d of %d shards have no label sidecar in %s; their samples will be skipped "
                       "(first: %s)", len(missing), len(urls), labels_dir, missing[0])


def build_loader(options: ReaderOptions, rank: int, world_size: int, num_workers: int,
                 position: DataPosition | None = None, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """An endless DataLoader over `ShardReader` batches for one rank."""
    if options.label_source == "sidecar":
        check_sidecars(options.urls, options.labels_dir)
    reader = ShardReader(options, rank=rank, world_size=world_size, num_workers=num_workers,
                         position=position)
    # The loader draws its workers' base seed from this generator, not from the global one, so that
    # creating it does not shift the training RNG stream (dropout) that checkpoints restore.
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + rank)
    return torch.utils.data.DataLoader(reader, batch_size=None, num_workers=num_workers,
                                       pin_memory=pin_memory, generator=generator,
                                       prefetch_factor=prefetch_factor if num_workers else None,
                                       persistent_workers=False)
