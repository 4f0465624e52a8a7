"""Two-process DDP on CPU (gloo) through the same environment variables torchrun sets."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import write_shards, write_sidecars

from synseg_model import SynSeg, get_model_config
from training.checkpoint import trainable_state
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_rank(rank: int, world_size: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = main(argv)
    torch.save(trainable_state(result.model), Path(out) / f"weights_rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_see_disjoint_samples_and_keep_identical_weights(tmp_path):
    paths = write_shards(tmp_path / "shards", shards=4, per_shard=8, size=(72, 64))
    write_sidecars(paths, tmp_path / "labels")
    out = tmp_path / "out"
    argv = ["--config", str(TINY), f"data.shards={tmp_path}/shards/{{00000..00003}}.tar",
            f"data.labels_dir={tmp_path}/labels", f"train.out_dir={out}", "train.steps=4",
            "train.record_keys=true", "train.threads=1", "train.log_every=2"]
    mp.start_processes(_run_rank, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")

    keys = [(out / "keys" / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert len(keys[0]) == len(keys[1]) == 4 * 4  # steps x per-rank batch
    assert not set(keys[0]) & set(keys[1])  # disjoint shards per rank
    shard_of = [{key[:5] for key in rank_keys} for rank_keys in keys]
    assert not shard_of[0] & shard_of[1]

    weights = [torch.load(tmp_path / f"weights_rank{r}.pt", weights_only=True) for r in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    torch.manual_seed(0)  # train.seed: what every rank built its model from
    initial = SynSeg(get_model_config("synseg-tiny")).state_dict()
    assert any(not torch.equal(weights[0][k], initial[k]) for k in weights[0])  # they did train
