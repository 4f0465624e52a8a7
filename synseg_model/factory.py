"""One factory for every SynSeg variant: architectures are YAML files, weights are chosen apart."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import SynSegConfig
from .model import SynSeg
from .state_dicts import CheckpointError, check_state_dict
from .weights import load_clipseg_decoder, read_checkpoint, read_hf_clipseg

CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_models() -> list[str]:
    """Names of the bundled architectures (``synseg_model/model_configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def get_model_config(name_or_path: str | Path | SynSegConfig) -> SynSegConfig:
    """The config of a bundled architecture name, or of a YAML file (a ``SynSegConfig`` is returned as is)."""
    if isinstance(name_or_path, SynSegConfig):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return SynSegConfig.from_yaml(path)
    if str(name_or_path) not in list_models():
        raise ValueError(f"unknown SynSeg model {name_or_path!r}; known: {', '.join(list_models())} "
                         f"(or give a YAML path)")
    return SynSegConfig.from_yaml(CONFIG_DIR / f"{name_or_path}.yaml")


def create_model(name_or_path: str | Path | SynSegConfig, weights: str | Path | None = None,
                 device: str | torch.device = "cpu", **overrides) -> SynSeg:
    """Build a SynSeg.

    Args:
        name_or_path: a bundled architecture (``list_models()``), a config YAML, or a ``SynSegConfig``.
        weights: optional weights for the trainable part: an original CLIPSeg decoder file (``.pth``) or a
            project checkpoint (``.safetensors``; its trainable tensors must fit, its CLIP is not used).
        device: where to put the model.
        overrides: SynSegConfig fields to change (e.g. ``clip_pretrained=None`` for random CLIP).
    """
    config = get_model_config(name_or_path)
    if overrides:
        config = config.replace(**overrides)
        config.validate()
    model = SynSeg(config)
    if weights is not None:
        if Path(weights).suffix == ".safetensors":
            model.load_trainable_state_dict(read_checkpoint(weights)[2], weights)
        elif Path(weights).suffix in (".pth", ".pt"):
            load_clipseg_decoder(model, weights)
        else:
            raise CheckpointError(f"{weights}: unknown weights format (expected .safetensors or .pth)")
    return model.to(device)


load_checkpoint = SynSeg.from_checkpoint  # the loader under the API's verb: a model by name or path


def load_hf_clipseg(directory: str | Path, device: str | torch.device = "cpu") -> SynSeg:
    """Build a SynSeg from a Hugging Face CLIPSeg folder (``config.json`` + ``model.safetensors`` or
    ``pytorch_model.bin``), e.g. a local copy of ``CIDAS/clipseg-rd64-refined``; see ``read_hf_clipseg``."""
    config, state = read_hf_clipseg(directory)
    model = SynSeg(config)
    check_state_dict(model.state_dict(), state, directory)
    model.load_state_dict(state)
    return model.to(device).eval()
