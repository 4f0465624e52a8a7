"""Process-group set-up from torchrun's environment, and the few collectives the trainer needs.

Works unchanged as one plain process (no torchrun variables: world size 1, no process group), as N
processes on one machine, or across machines through torchrun's rendezvous. NCCL on GPUs, gloo on CPU.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Long enough for rank 0 to run a validation pass or write a checkpoint while the others wait.
_COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the rank that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is in use."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def select_device(requested: str, local_rank: int) -> torch.device:
    """The device for this process: "auto" picks the local GPU when there is one, else the CPU.

    Raises:
        ValueError: "cuda" was requested on a machine without a usable GPU.
    """
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested == "cuda":
        raise ValueError("train.device=cuda but no CUDA device is available")
    return torch.device("cpu")


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and join the process group when there is one.

    Args:
        requested_device: "auto", "cpu" or "cuda".
    Returns:
        the frozen `DistInfo` of this process; nothing else is mutated.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = select_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_COLLECTIVE_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        logger.info("joined process group: rank %d/%d (local %d), backend %s, device %s",
                    rank, world_size, local_rank, backend, device)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def any_true(flags: list[bool], info: DistInfo) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one small all-reduce)."""
    if not info.distributed:
        return list(flags)
    tensor = torch.tensor([float(f) for f in flags], device=info.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, indexed by rank (pickled; for small objects such as RNG states)."""
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed:
        dist.barrier()
