"""One factory for every SynSeg variant: architectures are YAML files, weights are chosen apart."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import SynSegConfig
from .model import SynSeg

CONFIG_DIR = Path(__file__).parent / "model_configs"


def list_models() -> list[str]:
    """Names of the bundled architectures (``synseg_model/model_configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def get_model_config(name_or_path: str | Path) -> SynSegConfig:
    """The config of a bundled architecture name, or of a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return SynSegConfig.from_yaml(path)
    if str(name_or_path) not in list_models():
        raise ValueError(f"unknown SynSeg model {name_or_path!r}; known: {', '.join(list_models())} "
                         f"(or give a YAML path)")
    return SynSegConfig.from_yaml(CONFIG_DIR / f"{name_or_path}.yaml")


def create_model(name_or_path: str | Path, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 **overrides) -> SynSeg:
    """Build a SynSeg.

    Args:
        name_or_path: a bundled architecture (``list_models()``) or a config YAML.
        weights: optional weights for the decoder: an original CLIPSeg file (``.pth``) or a project
            checkpoint (``.safetensors``, trainable weights only; its config must match).
        device: where to put the model.
        overrides: SynSegConfig fields to change (e.g. ``clip_pretrained=None`` for random CLIP).
    """
    config = get_model_config(name_or_path)
    if overrides:
        config = config.replace(**overrides)
        config.validate()
    model = SynSeg(config)
    if weights is not None:
        from .weights import CheckpointError, check_state_dict, load_clipseg_decoder, read_checkpoint
        if Path(weights).suffix == ".safetensors":
            _, _, tensors = read_checkpoint(weights)
            tensors = {k: v for k, v in tensors.items() if not k.startswith("clip.")}
            check_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("clip.")},
                             tensors, weights)
            model.load_state_dict(tensors, strict=False)
        elif Path(weights).suffix in (".pth", ".pt"):
            load_clipseg_decoder(model, weights)
        else:
            raise CheckpointError(f"{weights}: unknown weights format (expected .safetensors or .pth)")
    return model.to(device)
