"""A cache directory for compiled models (TensorRT engines, ONNX graphs), so a restart skips the build.

An artifact is valid only for the exact weights, input size, category limit, precision, device and compiler
versions it was built with; all of them go into its key, so a change of any one builds a new artifact
instead of loading a stale one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

CACHE_ENV = "SYNSEG_ENGINE_CACHE"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "synseg" / "engines"


def default_cache_dir() -> Path:
    """``$SYNSEG_ENGINE_CACHE`` if set, else ``~/.cache/synseg/engines``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def weights_hash(model: nn.Module, extra: str = "") -> str:
    """SHA-256 over every tensor of ``model.state_dict()`` (names, dtypes, shapes, bytes) and ``extra``.

    ``extra`` carries what the weights do not say, e.g. the architecture config; the same weights give the
    same hash whether they came from a checkpoint file or were built in memory.
    """
    digest = hashlib.sha256(extra.encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything a compiled artifact depends on.

    Attributes:
        kind: what was built, e.g. "tensorrt" or "onnxruntime" (also the file prefix).
        weights_hash: ``weights_hash`` of the model (checkpoint weights and config).
        input_size: side of the square input image in pixels.
        max_categories: the largest K the artifact accepts (K is dynamic in [1, max_categories]).
        precision: "fp32", "fp16" or "bf16".
        device_name: e.g. the GPU's name from ``torch.cuda.get_device_name``, or "cpu".
        versions: (package, version) pairs of the compilers and runtimes involved, e.g. tensorrt and
            torch_tensorrt.
    """

    kind: str
    weights_hash: str
    input_size: int
    max_categories: int
    precision: str
    device_name: str
    versions: tuple[tuple[str, str], ...]

    def digest(self) -> str:
        """A short hex digest of all fields."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def filename(self, suffix: str) -> str:
        """Readable and unique: ``<kind>-<size>px-k<max>-<precision>-<digest><suffix>``."""
        return f"{self.kind}-{self.input_size}px-k{self.max_categories}-{self.precision}-{self.digest()}{suffix}"


class EngineCache:
    """A directory of artifacts named by their ``EngineKey``; writes are atomic (temp file, then rename)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: EngineKey, suffix: str) -> Path:
        return self.root / key.filename(suffix)

    def lookup(self, key: EngineKey, suffix: str) -> Path | None:
        """The cached artifact for ``key``, or None."""
        path = self.path(key, suffix)
        return path if path.is_file() else None

    def store(self, key: EngineKey, suffix: str, write: Callable[[Path], None]) -> Path:
        """Build an artifact with ``write(tmp_path)`` and move it into place; a JSON sidecar records the key.

        A crash mid-write leaves only a temp file behind, never a truncated artifact under the final name.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key, suffix)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix some writers look at
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        path.with_suffix(path.suffix + ".json").write_text(json.dumps(dataclasses.asdict(key), indent=1))
        log.info("engine cache: stored %s", path)
        return path
