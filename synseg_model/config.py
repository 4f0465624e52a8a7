"""`SynSegConfig`: every architectural and preprocessing choice of a SynSeg model, as data."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SynSegConfig:
    """Architecture of a SynSeg model (the paper's Sec. 4.1 and 4.3). Keys map 1:1 onto the YAML files.

    Attributes:
        clip_model: open_clip architecture name (e.g. "ViT-B-16"), or a path to an open_clip model-config JSON.
        clip_config: inline open_clip architecture (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``);
            takes precedence over ``clip_model`` so a checkpoint of a project-trained CLIP is self-contained.
        clip_pretrained: None (random init), an open_clip pretrained tag (e.g. "openai"), or a local file.
        extract_layers: 0-based indices of the CLIP visual blocks whose outputs feed the decoder.
        reduce_dim: decoder width (CLIPSeg "rd64").
        decoder_heads, decoder_ff_dim, decoder_activation, decoder_dropout: the decoder's transformer blocks.
        upsampler: "refined" (conv + two transposed convs) or "uni" (one transposed conv), as in CLIPSeg.
        projector_hidden: hidden channels of the FSS projector (tokens -> text-embedding width).
        image_size: side of the square input the runtime resizes images to.
        mean, std: per-channel normalisation of 0-1 RGB input.
        prompt_templates: templates averaged to build a category's conditioning vector.
    """

    clip_model: str = "ViT-B-16"
    clip_config: dict[str, Any] | None = None
    clip_pretrained: str | None = None
    extract_layers: tuple[int, ...] = (3, 6, 9)
    reduce_dim: int = 64
    decoder_heads: int = 4
    decoder_ff_dim: int = 2048
    decoder_activation: str = "relu"
    decoder_dropout: float = 0.1
    upsampler: str = "refined"
    projector_hidden: int = 256
    image_size: int = 352
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    prompt_templates: tuple[str, ...] = ("a photo of a {}.",)

    def __post_init__(self) -> None:
        self.extract_layers = tuple(int(i) for i in self.extract_layers)
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.prompt_templates = tuple(self.prompt_templates)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if not self.extract_layers or min(self.extract_layers) < 0:
            raise ValueError(f"extract_layers must be non-negative block indices, got {self.extract_layers}")
        if self.upsampler not in ("refined", "uni"):
            raise ValueError(f"upsampler must be 'refined' or 'uni', got {self.upsampler!r}")
        if self.decoder_activation not in ("relu", "gelu"):
            raise ValueError(f"decoder_activation must be 'relu' or 'gelu', got {self.decoder_activation!r}")
        if self.reduce_dim <= 0 or self.reduce_dim % self.decoder_heads:
            raise ValueError(f"reduce_dim ({self.reduce_dim}) must be a positive multiple of decoder_heads "
                             f"({self.decoder_heads})")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std positive")
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            raise ValueError(f"every prompt template needs a '{{}}' placeholder, got {self.prompt_templates}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SynSegConfig":
        """Build from a dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SynSegConfig key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists instead of tuples), suitable for YAML and JSON."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SynSegConfig":
        """Load from a YAML file; errors name the file."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read SynSeg config: {exc}") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a SynSeg config must be a mapping, got {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> "SynSegConfig":
        return dataclasses.replace(self, **changes)
