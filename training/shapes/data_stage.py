"""The pipeline's data: training shards and their spaCy labels, the held-out test, dev and gate splits."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from training import prepare_labels
from training.shapes import generate
from training.shapes.config import DataSection
from training.shapes.world import World

logger = logging.getLogger(__name__)


def shard_pattern(train_dir: Path) -> tuple[str, int]:
    """Brace pattern over the shards of ``train_dir`` and their total sample count (from ``sizes.json``)."""
    sizes = json.loads((train_dir / "sizes.json").read_text())
    names = sorted(sizes)
    if not names:
        raise ValueError(f"{train_dir}/sizes.json lists no shards")
    first, last = Path(names[0]).stem, Path(names[-1]).stem
    pattern = str(train_dir / (f"{first}.tar" if first == last else f"{{{first}..{last}}}.tar"))
    return pattern, sum(sizes.values())


@dataclass(frozen=True)
class DataFolders:
    """Where the data stage writes each part, under ``root``."""

    root: Path

    @property
    def train(self) -> Path:
        """The training shards (with ``sizes.json``)."""
        return self.root / "train"

    @property
    def labels(self) -> Path:
        """The spaCy label sidecars of the training shards (``training.prepare_labels``)."""
        return self.root / "labels"

    @property
    def test(self) -> Path:
        """The held-out test split (VOC layout): the numbers of the results table."""
        return self.root / "val"

    @property
    def dev(self) -> Path:
        """The held-out dev split: checkpoint and model choice."""
        return self.root / "dev" / "val"

    @property
    def gate(self) -> Path:
        """The stage-1 gate's own split."""
        return self.root / "gate" / "val"

    def shard_pattern(self) -> str:
        """The brace pattern over the training shards."""
        return shard_pattern(self.train)[0]


def make_data(folders: DataFolders, data: DataSection, world: World, reuse: bool) -> bool:
    """Training shards + test split (``data.seed``), dev split (seed + dev_seed_offset), spaCy label sidecars,
    and the gate split (seed + gate_seed_offset), which only the gate reads: a new one retrains nothing.

    With ``reuse``, parts already under ``folders.root`` made with the same settings in the same world are kept.

    Returns:
        whether the training data was kept (if not, nothing trained on the old data may be reused).
    """
    gate_seed = data.seed + data.gate_seed_offset
    kept = reuse and data_matches(folders, data, world)
    if kept:
        logger.info("data: reusing %s", folders.root)
    else:
        generate.generate(folders.root, data.train, data.val, data.seed, data.world, data.shard_size, data.workers)
        generate.generate(folders.root / "dev", 0, data.dev, data.seed + data.dev_seed_offset, data.world)
        prepare_labels.main(["--shards", folders.shard_pattern(), "--out", str(folders.labels), "--overwrite"])
    if not (kept and split_matches(folders.gate.parent, world, data.gate, gate_seed)):
        generate.generate(folders.gate.parent, 0, data.gate, gate_seed, data.world)
    return kept


def split_matches(root: Path, world: World, val: int, seed: int, train: int = 0, shard_size: int | None = None
                  ) -> bool:
    """Whether ``root`` holds a finished ``generate`` output of these sizes and seed, in this world."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    spec = json.loads(json.dumps(world.spec))  # as the manifest holds it (JSON keys are strings)
    return (manifest["seed"], manifest["train"], manifest["val"], manifest.get("world_spec")) == \
        (seed, train, val, spec) and shard_size in (None, manifest["shard_size"])


def data_matches(folders: DataFolders, data: DataSection, world: World) -> bool:
    """Whether the shards, test and dev splits and labels under ``folders`` have these settings."""
    return split_matches(folders.root, world, data.val, data.seed, data.train, data.shard_size) and \
        split_matches(folders.dev.parent, world, data.dev, data.seed + data.dev_seed_offset) and \
        folders.labels.is_dir()
