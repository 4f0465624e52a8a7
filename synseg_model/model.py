"""The SynSeg model: frozen CLIP encoders + FiLM-conditioned decoder + FSS projector."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .clip import activation_widths, build_clip, get_tokenizer, token_stride, visual_activations, visual_depth
from .config import SynSegConfig
from .decoder import Decoder, Projector, synergy_features
from .pretrained import card_summary, resolve_checkpoint
from .state_dicts import check_state_dict
from .weights import read_checkpoint


@dataclass
class SynSegOutput:
    """What ``SynSeg.forward(..., return_synergy=True)`` returns.

    Attributes:
        logits: (B, K, H, W) per-category logits at input resolution.
        fg: (B, K, D) foreground synergy features f_k.
        bg: (B, K, D) background synergy features f_bar_k.
    """

    logits: torch.Tensor
    fg: torch.Tensor
    bg: torch.Tensor


class SynSeg(nn.Module):
    """Open-vocabulary segmentation: one logit map per category, from an image and K text embeddings.

    CLIP is frozen and always in eval mode; only ``decoder`` (reductions, FiLM, blocks, upsampler) and
    ``projector`` are trainable. The image encoder runs once per image whatever K is.
    """

    def __init__(self, config: SynSegConfig):
        super().__init__()
        self.config = config
        self.clip = build_clip(config)
        self.clip.requires_grad_(False)
        visual = self.clip.visual
        layers = tuple(config.extract_layers)
        if max(layers) >= visual_depth(visual):
            raise ValueError(f"extract_layers {config.extract_layers} exceed the {visual_depth(visual)} "
                             "layers of the CLIP visual encoder")
        self.patch_size = token_stride(visual, layers)
        self.text_dim = int(self.clip.text_projection.shape[-1])
        self.decoder = Decoder(config, activation_widths(visual, layers), self.text_dim, self.patch_size)
        self.projector = Projector(config, self.text_dim)
        self._tokenizer = get_tokenizer(config)
        self.model_card: dict[str, Any] = {}
        self.clip.eval()

    def train(self, mode: bool = True) -> "SynSeg":
        super().train(mode)
        self.clip.eval()  # frozen: dropout and norms of CLIP never switch to training behaviour
        return self

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Every part but the frozen CLIP (today: decoder with FiLM, projector), by attribute name.

        The one definition of "trainable": what the optimiser sees, what training checkpoints and exported
        models store. A module added in ``__init__`` is trainable without touching anything else.
        """
        return {name: module for name, module in self.named_children() if module is not self.clip}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters of ``trainable_modules``."""
        return [p for module in self.trainable_modules().values() for p in module.parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The entries of ``state_dict()`` that belong to ``trainable_modules`` (references, not copies)."""
        return {f"{name}.{key}": value for name, module in self.trainable_modules().items()
                for key, value in module.state_dict().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
        """Load every trainable tensor from ``state``, strictly; CLIP entries in ``state`` are ignored.

        Raises:
            CheckpointError: naming ``source`` and the first missing, unexpected or mis-shaped key.
        """
        expected = self.trainable_state_dict()
        frozen = self.state_dict().keys() - expected.keys()
        state = {k: v for k, v in state.items() if k not in frozen}
        check_state_dict(expected, state, source)
        self.load_state_dict(state, strict=False)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> list[torch.Tensor]:
        """CLIP activations of ``config.extract_layers``, each (B, 1 + h*w, width), for (B, 3, H, W) images."""
        return visual_activations(self.clip.visual, images, self.config.extract_layers)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) projected CLIP text embeddings of literal prompts: (P, D)."""
        if not prompts:
            raise ValueError("no prompts to encode")
        device = self.clip.text_projection.device
        return self.clip.encode_text(self._tokenizer(list(prompts)).to(device), normalize=False).float()

    def encode_text(self, labels: list[str], templates: list[str] | tuple[str, ...] | None = None) -> torch.Tensor:
        """Conditioning vectors t_k, (K, D): the raw embeddings of each label's prompts, averaged over templates.

        Not normalised: CLIPSeg's FiLM was trained on raw vectors (the paper starts from CLIPSeg's decoder, Sec. 5.1).
        """
        templates = tuple(templates or self.config.prompt_templates)
        if not labels:
            raise ValueError("no labels to encode")
        emb = self.encode_prompts([t.format(label) for label in labels for t in templates])
        return emb.reshape(len(labels), len(templates), -1).mean(dim=1)

    def decode(self, activations: list[torch.Tensor], text: torch.Tensor, image_size: tuple[int, int],
               return_synergy: bool = False, synergy_input: str = "conditional") -> torch.Tensor | SynSegOutput:
        """Decode cached activations for text (K, D) or (B, K, D); see ``forward``.

        ``synergy_input`` is what the FSS projector reads: "conditional", the conditional visual vectors
        (FiLM output, the paper), or "visual", the decoder's label-free token features (a deviation: the
        projector then cannot read the label from the FiLM shift).
        """
        b = activations[0].shape[0]
        if text.dim() == 2:
            text = text.expand(b, *text.shape)
        if text.dim() != 3 or text.shape[0] != b or text.shape[-1] != self.text_dim:
            raise ValueError(f"text must be (K, {self.text_dim}) or ({b}, K, {self.text_dim}), "
                             f"got {tuple(text.shape)}")
        grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
        logits, conditional = self.decoder(activations, text.to(activations[0].dtype), grid)
        if tuple(logits.shape[-2:]) != tuple(image_size):
            # Inputs not divisible by the patch size: the token grid covers slightly less than the image.
            logits = F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
        if not return_synergy:
            return logits
        k = text.shape[1]
        if synergy_input == "visual":
            projected = self.projector(self.decoder.visual_tokens(activations, grid)).repeat_interleave(k, dim=0)
        elif synergy_input == "conditional":
            projected = self.projector(conditional)
        else:
            raise ValueError(f"synergy_input must be 'conditional' or 'visual', got {synergy_input!r}")
        fg, bg = synergy_features(projected, torch.sigmoid(logits.flatten(0, 1)))
        return SynSegOutput(logits, fg.reshape(b, k, -1), bg.reshape(b, k, -1))

    def forward(self, images: torch.Tensor, text: torch.Tensor,
                return_synergy: bool = False) -> torch.Tensor | SynSegOutput:
        """Segment K categories in B images.

        Args:
            images: (B, 3, H, W) float, normalised with ``config.mean``/``config.std``.
            text: (K, D) shared by all images, or (B, K, D) per image (e.g. each image's caption labels).
            return_synergy: also return the FSS synergy features (training).
        Returns:
            logits (B, K, H, W); or a ``SynSegOutput`` with logits, fg and bg (B, K, D).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        return self.decode(self.encode_image(images), text, tuple(images.shape[-2:]), return_synergy)

    @classmethod
    def from_checkpoint(cls, name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> "SynSeg":
        """Build the model a checkpoint describes and load its weights.

        Args:
            name_or_path: a registered name (``synseg_model.list_pretrained()``; None: the offline default
                model), ``hf-hub:ORG/REPO[@REVISION]`` (downloaded and, from the CLIPSeg layout, converted
                once), or the path of a project checkpoint (``save_checkpoint``).
            device: where to put the model.

        Loading is strict, with errors naming the file and key: every trainable tensor must be in the file,
        and CLIP's either all (then they replace CLIP's) or none (then CLIP comes from the config, e.g. a
        pretrained tag). ``model.model_card`` is the file's card with what the name adds (source, licence...)
        and always a one-line ``summary``.
        """
        path, extra_card = resolve_checkpoint(name_or_path)
        config, card, tensors = read_checkpoint(path)
        model = cls(config)
        trainable = model.trainable_state_dict()
        check_state_dict(trainable if tensors.keys() <= trainable.keys() else model.state_dict(), tensors, path)
        model.load_state_dict(tensors, strict=False)
        model.model_card = {**card, **extra_card}
        model.model_card["summary"] = card_summary(model.model_card)
        return model.to(device).eval()
