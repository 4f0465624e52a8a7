"""WebDataset reader: shard patterns, rank/worker splits, skips, dense targets, exact resume."""
from __future__ import annotations

import dataclasses
import itertools
import tarfile

import pytest
import torch
from train_helpers import write_shards, write_sidecars

from training.data import (
    DataPosition,
    ReaderOptions,
    ShardReader,
    build_loader,
    check_sidecars,
    expand_shards,
    shard_name,
)

SIZE = 32


def _options(tmp_path, shards: int, **changes) -> ReaderOptions:
    urls = expand_shards(str(tmp_path / "shards" / f"{{00000..{shards - 1:05d}}}.tar"))
    options = ReaderOptions(urls=tuple(urls), batch_size=4, image_size=SIZE, mean=(0.5, 0.5, 0.5),
                            std=(0.25, 0.25, 0.25), max_labels=8, label_source="sidecar",
                            labels_dir=str(tmp_path / "labels"), shuffle_buffer=8)
    return dataclasses.replace(options, **changes)


def _keys(batches) -> list[str]:
    return [key for batch in batches for key in batch["keys"]]


def test_expand_shards_patterns(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        (tmp_path / name).touch()
    assert expand_shards(str(tmp_path / "{00000..00002}.tar")) == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert expand_shards(str(tmp_path / "*.tar")) == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    pipe = "pipe:aws s3 cp s3://bucket/cc12m/{00000..00001}.tar -"
    assert expand_shards(pipe) == ["pipe:aws s3 cp s3://bucket/cc12m/00000.tar -",
                                   "pipe:aws s3 cp s3://bucket/cc12m/00001.tar -"]
    assert expand_shards("a/{0..1}.tar::b/x.tar") == ["a/0.tar", "a/1.tar", "b/x.tar"]
    assert shard_name("pipe:curl -s https://host/cc12m/01242.tar") == "01242"
    with pytest.raises(ValueError, match="matches no file"):
        expand_shards(str(tmp_path / "missing*.tar"))


def test_batches_are_named_normalised_and_padded(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=2, per_shard=6, seg=True)
    write_sidecars(paths, tmp_path / "labels")
    batch = next(iter(ShardReader(_options(tmp_path, 2, max_labels=1))))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["image"].min() < 0 < batch["image"].max()  # (x - 0.5) / 0.25 spans both signs
    assert all(len(labels) == 1 for labels in batch["labels"])  # max_labels truncates
    assert batch["label_mask"].shape == (4, 1) and batch["label_mask"].all()
    # Sidecar labels that name a class of the sample's json get that class's referring mask.
    assert batch["masks"].shape == (4, 1, SIZE, SIZE) and batch["mask_valid"].all()
    assert 0 < batch["masks"].mean() < 1


def test_corrupt_member_and_unlabelled_samples_are_skipped_and_counted(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=1, per_shard=12, corrupt={"000000003"})
    write_sidecars(paths, tmp_path / "labels", unlabeled={"000000005", "000000007"})
    reader = ShardReader(_options(tmp_path, 1, batch_size=3))
    batches = list(itertools.islice(iter(reader), 3))  # one epoch: 12 - 3 skipped = 9 samples
    keys = _keys(batches)
    assert len(keys) == 9 and not {"000000003", "000000005", "000000007"} & set(keys)
    skipped = {reason: sum(b["skipped"][reason] for b in batches) for reason in ("corrupt", "no_labels")}
    assert skipped == {"corrupt": 1, "no_labels": 2}


def test_broken_shard_is_counted_not_fatal(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=2, per_shard=8)
    write_sidecars(paths, tmp_path / "labels")
    with tarfile.open(paths[1]) as tar:
        jpgs = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    cut = jpgs[5].offset_data + jpgs[5].size // 2  # truncated inside the 6th image: 5 samples survive
    paths[1].write_bytes(paths[1].read_bytes()[:cut])
    batches = list(itertools.islice(iter(ShardReader(_options(tmp_path, 2, shuffle_buffer=1))), 3))
    assert sum(b["skipped"]["shard_error"] for b in batches) >= 1  # read errors (one shard may give two)
    assert len(set(_keys(batches))) == 12 and "000010005" not in _keys(batches)


def test_ranks_and_workers_read_disjoint_shards(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=8, per_shard=4)
    write_sidecars(paths, tmp_path / "labels")
    options = _options(tmp_path, 8)
    seen = []
    for rank in range(2):
        reader = ShardReader(options, rank=rank, world_size=2, num_workers=2)
        for worker in range(2):
            seen.append(reader.shards_for(epoch=0, worker=worker))
    flat = [url for part in seen for url in part]
    assert sorted(flat) == sorted(options.urls) and all(len(part) == 2 for part in seen)
    reader = ShardReader(options, rank=0, world_size=2, num_workers=2)
    assert len({tuple(reader.shards_for(epoch, 0)) for epoch in range(4)}) > 1  # re-shuffled per epoch
    with pytest.raises(ValueError, match="cannot feed"):
        ShardReader(options, rank=0, world_size=4, num_workers=4)


def test_dense_labels_from_seg_with_class_subset_and_negatives(tmp_path):
    write_shards(tmp_path / "shards", shards=1, per_shard=8, seg=True)
    options = _options(tmp_path, 1, label_source="seg", labels_dir=None, classes=("grass", "water", "circle"),
                       dense_negatives=1)
    batch = next(iter(ShardReader(options)))
    for labels in batch["labels"]:
        assert set(labels) <= {"grass", "water", "circle"} and len(labels) == len(set(labels))
    assert batch["mask_valid"][batch["label_mask"]].all()
    # The negative slot is all zeros; positives are the seg == class pixels.
    areas = batch["masks"].sum(dim=(2, 3))
    assert (areas[batch["label_mask"]] == 0).sum() == len(batch["labels"])  # one negative per image


def test_loader_resumes_exactly_with_worker_rotation(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=4, per_shard=10)
    write_sidecars(paths, tmp_path / "labels")
    options = _options(tmp_path, 4, batch_size=3)
    full = list(itertools.islice(iter(build_loader(options, 0, 1, num_workers=2)), 9))
    position = DataPosition()
    for batch in full[:5]:  # stop after 5 batches: worker 0 is next
        position.advance(batch["position"], 2)
    resumed = list(itertools.islice(iter(build_loader(options, 0, 1, num_workers=2, position=position)), 4))
    assert _keys(resumed) == _keys(full[5:])
    assert torch.equal(torch.cat([b["image"] for b in resumed]), torch.cat([b["image"] for b in full[5:]]))


def test_missing_sidecars_fail_early(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=2, per_shard=2)
    with pytest.raises(ValueError, match="prepare_labels"):
        check_sidecars([str(p) for p in paths], str(tmp_path / "labels"))
