"""Label text embeddings from the frozen CLIP text encoder, through an LRU cache on the device.

Caption labels follow a long-tailed distribution: a bounded cache serves most of them, so the text
encoder only runs on labels not seen recently, in one batch per training batch.
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)


class TextEmbeddingCache:
    """label -> raw text embedding t_c (D,), computed with `model.encode_text(labels, templates)`.

    Args:
        model: a `synseg_model.SynSeg` (its CLIP text encoder is frozen).
        templates: prompt templates for t_c ("a photo of a {}." in training); None uses the
            model config's `prompt_templates`.
        capacity: labels kept; the least recently used are evicted beyond it.
    """

    def __init__(self, model: torch.nn.Module, templates: list[str] | tuple[str, ...] | None = None,
                 capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"text cache capacity must be at least 1, got {capacity}")
        self.model = model
        self.templates = tuple(templates) if templates else None
        self.capacity = capacity
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def embed(self, labels: list[str]) -> torch.Tensor:
        """Embeddings of `labels`, (K, D) float32 on the model's device, encoding only the missing ones."""
        missing = list(dict.fromkeys(label for label in labels if label not in self._store))
        self.misses += len(missing)
        self.hits += len(labels) - len(missing)
        if missing:
            device_type = next(self.model.parameters()).device.type
            with torch.autocast(device_type, enabled=False):  # cached once: keep full precision
                computed = self.model.encode_text(missing, self.templates).float()
            for label, vector in zip(missing, computed):
                self._store[label] = vector
        rows = []
        for label in labels:
            self._store.move_to_end(label)
            rows.append(self._store[label])
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return torch.stack(rows)

    def batch_embeddings(self, labels: list[list[str]], kmax: int | None = None) -> torch.Tensor:
        """Per-image label embeddings padded with zeros: (B, Kmax, D).

        Args:
            labels: B lists of labels (the batch's `labels`).
            kmax: padded length; default the longest list.
        """
        kmax = kmax or max(len(item) for item in labels)
        flat = [label for item in labels for label in item]
        vectors = self.embed(flat)
        out = vectors.new_zeros(len(labels), kmax, vectors.shape[-1])
        start = 0
        for b, item in enumerate(labels):
            out[b, :len(item)] = vectors[start:start + len(item)]
            start += len(item)
        return out

    @property
    def hit_rate(self) -> float:
        """Fraction of lookups served from the cache since creation."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
