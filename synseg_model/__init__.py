"""SynSeg: open-vocabulary semantic segmentation (pure PyTorch; no ROS, no training code).

    from synseg_model import Segmenter
    seg = Segmenter.from_checkpoint()            # the offline default model; or a name: list_pretrained()
    seg.set_vocabulary(["circle", "grass"])
    out = seg.segment(rgb)                      # out.masks: (K, H, W) bool; out.present: (K,) bool

The names below load on first use (PEP 562), so that ``synseg_model.options`` imports without torch: the ROS
node checks its parameters with it before, or without, loading a model.
"""
from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    ".config": ("SynSegConfig",),
    ".factory": ("create_model", "get_model_config", "list_models", "load_checkpoint", "load_hf_clipseg"),
    ".losses": ("mccl_loss",),
    ".masks": ("MaskRule",),
    ".model": ("SynSeg", "SynSegOutput"),
    ".pretrained": ("card_summary", "default_checkpoint_path", "list_pretrained", "resolve_checkpoint"),
    ".runtime": ("Segmentation", "Segmenter", "image_to_tensor"),
    ".state_dicts": ("CheckpointError",),
    ".weights": ("convert_hf_clipseg", "load_clipseg_decoder", "read_checkpoint", "save_checkpoint"),
}
_MODULE_OF = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value             # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
