"""Shared test fixtures. Every test runs on CPU; heavy models are built once per session."""
from __future__ import annotations

import pytest
import torch

from synseg_model import SynSeg, create_model


@pytest.fixture(scope="session")
def tiny_model() -> SynSeg:
    """A tiny random SynSeg (64 px, patch 8). Do not mutate it: copy it first (``copy.deepcopy``)."""
    torch.manual_seed(0)
    return create_model("synseg-tiny").eval()
