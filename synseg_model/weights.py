"""Weights files: the project's checkpoint format, original CLIPSeg decoder files, Hugging Face CLIPSeg.

Nothing here unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``. Models are
passed in or described by (config, tensors): building a ``SynSeg`` is the model's and the factory's job.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .config import SynSegConfig
from .decoder import Projector
from .state_dicts import CheckpointError, check_state_dict, read_state_dict

FORMAT = "synseg"
FORMAT_VERSION = "1"


def save_checkpoint(model: nn.Module, path: str | Path, card: Mapping[str, Any] | None = None,
                    include_clip: bool | None = None, clip_dtype: torch.dtype | None = None) -> Path:
    """Write a ``SynSeg`` in the project's format: a safetensors file written atomically.

    It holds the trainable weights (``model.trainable_state_dict()``), plus CLIP's when CLIP cannot be had
    from its config alone (``include_clip=None`` decides: CLIP is included unless ``clip_pretrained`` is
    an open_clip tag). The metadata carries the ``SynSegConfig`` and a model card (JSON). ``clip_dtype``
    stores the frozen CLIP tensors in another precision (e.g. float16 to halve a shipped file); loading
    casts them back to the model's.
    """
    config = model.config
    if include_clip is None:
        tag = config.clip_pretrained
        include_clip = tag is None or Path(tag).suffix in (".pt", ".pth", ".bin", ".safetensors")
    state = model.trainable_state_dict()
    if include_clip:
        state.update({k: v if clip_dtype is None or not v.is_floating_point() else v.to(clip_dtype)
                      for k, v in model.state_dict().items() if k not in state})
        # The weights travel inside this file: a reader must not look for the original source.
        config = config.replace(clip_pretrained=None)
    return write_checkpoint(path, config, state, card, include_clip)


def write_checkpoint(path: str | Path, config: SynSegConfig, tensors: Mapping[str, torch.Tensor],
                     card: Mapping[str, Any] | None, includes_clip: bool) -> Path:
    """Write ``tensors`` (SynSeg state-dict names) with ``config`` and ``card`` in the project's format."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "includes_clip": str(bool(includes_clip)),
                "config": json.dumps(config.to_dict()), "model_card": json.dumps(dict(card or {}))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path, tensors: bool = True
                    ) -> tuple[SynSegConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """(config, model card, tensors) of a project checkpoint (``tensors=False``: no tensors read, an empty
    dict); CheckpointError names the file if it is bad."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as exc:  # truncated file, bad header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a SynSeg checkpoint (metadata format={meta.get('format')!r})")
    try:
        config = SynSegConfig.from_dict(json.loads(meta["config"]))
        card = json.loads(meta.get("model_card", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad config in metadata: {exc}") from exc
    return config, card, tensors


def update_model_card(source: str | Path, target: str | Path, updates: Mapping[str, Any]) -> Path:
    """Write ``target``: ``source``'s tensors and metadata, its model card updated with ``updates``."""
    from safetensors import safe_open

    config, card, tensors = read_checkpoint(source)
    with safe_open(str(source), framework="pt") as f:
        includes_clip = (f.metadata() or {}).get("includes_clip") == "True"
    return write_checkpoint(target, config, tensors, {**card, **updates}, includes_clip)


def load_clipseg_decoder(model: nn.Module, path: str | Path) -> None:
    """Load an original CLIPSeg decoder file (``rd64-uni.pth``, ``rd64-uni-refined.pth``) into a ``SynSeg``.

    Those files hold the decoder only, under the same names as ``model.decoder``; their ``reduce.*`` tensors
    belong to a layer CLIPSeg never uses and are skipped.
    """
    path = Path(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("reduce.")}
    expected = model.decoder.state_dict()
    if any(k.startswith("trans_conv.0") for k in state) != any(k.startswith("trans_conv.0") for k in expected):
        kind = "refined" if any(k.startswith("trans_conv.0") for k in state) else "uni"
        raise CheckpointError(f"{path}: file has a '{kind}' upsampler but the model's config says "
                              f"{model.config.upsampler!r}")
    check_state_dict(expected, state, path)
    model.decoder.load_state_dict(state)


# Hugging Face CLIPSeg ("CIDAS/clipseg-rd64-refined") -> SynSeg.

# Bump when convert_hf_clipseg / read_hf_clipseg change what they produce: converted models cached by an
# older version are then made again (synseg_model.pretrained keys its cache with it).
HF_CONVERTER_VERSION = "1"

def hf_clipseg_config(hf: Mapping[str, Any]) -> SynSegConfig:
    """SynSegConfig equivalent to a Hugging Face ``CLIPSegConfig`` (as a dict, e.g. its config.json)."""
    vision, text = hf["vision_config"], hf["text_config"]
    if vision.get("hidden_act") != text.get("hidden_act"):
        raise ValueError("CLIP towers with different activations are not supported")

    def tower(c: Mapping[str, Any]) -> dict[str, Any]:
        return {"width": c["hidden_size"], "layers": c["num_hidden_layers"],
                "mlp_ratio": c["intermediate_size"] / c["hidden_size"]}

    clip_config = {
        "embed_dim": hf["projection_dim"],
        "quick_gelu": vision.get("hidden_act") == "quick_gelu",
        "vision_cfg": {**tower(vision), "image_size": vision["image_size"], "patch_size": vision["patch_size"],
                       "head_width": vision["hidden_size"] // vision["num_attention_heads"]},
        "text_cfg": {**tower(text), "heads": text["num_attention_heads"],
                     "context_length": text["max_position_embeddings"], "vocab_size": text["vocab_size"]},
    }
    return SynSegConfig(
        clip_config=clip_config, clip_pretrained=None, extract_layers=tuple(hf["extract_layers"]),
        reduce_dim=hf["reduce_dim"], decoder_heads=hf["decoder_num_attention_heads"],
        decoder_ff_dim=hf["decoder_intermediate_size"], decoder_activation="relu",
        decoder_dropout=hf.get("decoder_attention_dropout", 0.0) or 0.0,
        upsampler="refined" if hf.get("use_complex_transposed_convolution") else "uni",
        image_size=352)


def _attention(dst: dict, src: Mapping[str, torch.Tensor], d: str, s: str) -> None:
    for kind in ("weight", "bias"):
        dst[f"{d}.in_proj_{kind}"] = torch.cat([src[f"{s}.{p}_proj.{kind}"] for p in "qkv"])
        dst[f"{d}.out_proj.{kind}"] = src[f"{s}.out_proj.{kind}"]


def _copy(dst: dict, src: Mapping[str, torch.Tensor], d: str, s: str) -> None:
    for kind in ("weight", "bias"):
        if f"{s}.{kind}" in src:
            dst[f"{d}.{kind}"] = src[f"{s}.{kind}"]


def convert_hf_clipseg(state: Mapping[str, torch.Tensor], hf: Mapping[str, Any]) -> tuple[SynSegConfig, dict]:
    """Rename a Hugging Face CLIPSeg state dict into SynSeg's (open_clip CLIP + CLIPSeg-named decoder).

    Returns the equivalent config and a state dict for ``SynSeg.load_state_dict`` (projector excluded:
    CLIPSeg has none).
    """
    config = hf_clipseg_config(hf)
    out: dict[str, torch.Tensor] = {}
    vm, tm = "clip.vision_model", "clip.text_model"
    out["clip.visual.class_embedding"] = state[f"{vm}.embeddings.class_embedding"]
    out["clip.visual.conv1.weight"] = state[f"{vm}.embeddings.patch_embedding.weight"]
    out["clip.visual.positional_embedding"] = state[f"{vm}.embeddings.position_embedding.weight"]
    _copy(out, state, "clip.visual.ln_pre", f"{vm}.pre_layrnorm")
    _copy(out, state, "clip.visual.ln_post", f"{vm}.post_layernorm")
    out["clip.visual.proj"] = state["clip.visual_projection.weight"].t()
    out["clip.token_embedding.weight"] = state[f"{tm}.embeddings.token_embedding.weight"]
    out["clip.positional_embedding"] = state[f"{tm}.embeddings.position_embedding.weight"]
    _copy(out, state, "clip.ln_final", f"{tm}.final_layer_norm")
    out["clip.text_projection"] = state["clip.text_projection.weight"].t()
    out["clip.logit_scale"] = state["clip.logit_scale"]
    for ours, theirs, cfg in (("clip.visual.transformer", f"{vm}.encoder", hf["vision_config"]),
                              ("clip.transformer", f"{tm}.encoder", hf["text_config"])):
        for i in range(cfg["num_hidden_layers"]):
            d, s = f"{ours}.resblocks.{i}", f"{theirs}.layers.{i}"
            _attention(out, state, f"{d}.attn", f"{s}.self_attn")
            _copy(out, state, f"{d}.ln_1", f"{s}.layer_norm1")
            _copy(out, state, f"{d}.ln_2", f"{s}.layer_norm2")
            _copy(out, state, f"{d}.mlp.c_fc", f"{s}.mlp.fc1")
            _copy(out, state, f"{d}.mlp.c_proj", f"{s}.mlp.fc2")
    for name in ("film_mul", "film_add"):
        _copy(out, state, f"decoder.{name}", f"decoder.{name}")
    for i in range(len(hf["extract_layers"])):
        _copy(out, state, f"decoder.reduces.{i}", f"decoder.reduces.{i}")
        d, s = f"decoder.blocks.{i}", f"decoder.layers.{i}"
        _attention(out, state, f"{d}.self_attn", f"{s}.self_attn")
        _copy(out, state, f"{d}.norm1", f"{s}.layer_norm1")
        _copy(out, state, f"{d}.norm2", f"{s}.layer_norm2")
        _copy(out, state, f"{d}.linear1", f"{s}.mlp.fc1")
        _copy(out, state, f"{d}.linear2", f"{s}.mlp.fc2")
    if config.upsampler == "uni":
        _copy(out, state, "decoder.trans_conv", "decoder.transposed_convolution")
    else:
        for i in (0, 2, 4):
            _copy(out, state, f"decoder.trans_conv.{i}", f"decoder.transposed_convolution.{i}")
    return config, out


def read_hf_clipseg(directory: str | Path) -> tuple[SynSegConfig, dict[str, torch.Tensor]]:
    """The SynSeg config and full state dict of a Hugging Face CLIPSeg folder (``config.json`` +
    ``model.safetensors`` or ``pytorch_model.bin``), e.g. a snapshot of ``CIDAS/clipseg-rd64-refined``."""
    directory = Path(directory)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return hf_clipseg_checkpoint(read_state_dict(directory / name), directory / "config.json")
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def hf_clipseg_checkpoint(state: Mapping[str, torch.Tensor], config_file: str | Path
                          ) -> tuple[SynSegConfig, dict[str, torch.Tensor]]:
    """``convert_hf_clipseg`` of a CLIPSeg state dict and its ``config.json``, plus the FSS projector.

    CLIPSeg has no projector: it gets a fixed-seed initialisation, so that every conversion of the same
    weights gives the same tensors. Errors name ``config_file``.
    """
    try:
        hf = json.loads(Path(config_file).read_text())
        config, converted = convert_hf_clipseg(state, hf)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_file}: not a readable CLIPSeg config and checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        projector = Projector(config, hf["projection_dim"])
    converted.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    return config, converted
