"""A Hugging Face cache written by the tests (no network): repositories in the hub's cache layout.

``HF_HOME/hub/models--ORG--REPO/snapshots/<commit>/`` holds the files, ``refs/main`` names the commit, as
``huggingface_hub`` leaves them after a download. The CLIPSeg repository is transformers'
``CLIPSegForImageSegmentation`` with a small random config, saved with ``save_pretrained`` (safetensors).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from synseg_model.pretrained import REGISTRY

CLIPSEG_REPO = "CIDAS/clipseg-rd64-refined"
CLIPSEG_COMMIT = REGISTRY["clipseg-rd64-refined"].revision  # so that the registered name finds it too
SMALL_CLIPSEG = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 16},
    "projection_dim": 32, "extract_layers": [1, 2, 3], "reduce_dim": 16, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32, "use_complex_transposed_convolution": True,
}


def repo_snapshot(home: Path, repo: str, commit: str) -> Path:
    """The snapshot folder of ``repo`` at ``commit`` in the hub cache under ``home``; refs/main -> commit."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def write_clipseg_repo(home: Path, repo: str = CLIPSEG_REPO, commit: str = CLIPSEG_COMMIT,
                       config: dict | None = None):
    """A random transformers CLIPSeg (``config``: CLIPSegConfig fields, default ``SMALL_CLIPSEG``) saved into the
    cache; returns (the HF model, its snapshot folder)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPSegConfig(**(SMALL_CLIPSEG if config is None else config))
    model = transformers.CLIPSegForImageSegmentation(config).eval()
    snapshot = repo_snapshot(home, repo, commit)
    model.save_pretrained(snapshot, safe_serialization=True)
    return model, snapshot


def use_hf_home(monkeypatch: pytest.MonkeyPatch, home: Path, converted: Path, offline: bool = True) -> dict:
    """Point this process (and the processes it starts) at the cache under ``home``, offline.

    huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so its constants are set too.
    Returns the environment variables, for subprocesses.
    """
    from huggingface_hub import constants

    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1" if offline else "0", "SYNSEG_MODEL_CACHE": str(converted)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(home, "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    return env
