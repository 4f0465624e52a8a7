"""``python -m training.shapes diagnose``: which activation maps does the MCCL objective prefer?

With the decoder of a checkpoint frozen, a fresh FSS projector is fitted to minimise the paper's MCCL loss
(paper section 4.2, eq. 3-7) for each of several sets of fixed maps over the same training scenes, and the fitted loss
terms are printed. The objective ranks a set of maps by the lowest loss a projector can reach with them: if
the ground-truth masks are not first, training on it cannot be expected to find them.

Maps compared, for every label of every scene:
    truth        the label's ground-truth mask (all zeros for a label that names no class, e.g. "person")
    model        the checkpoint's own maps, sigmoid(logits)
    uniform      0.5 everywhere (any constant gives the same loss: cosine ignores scale)
    scaled       0.02 x truth
    other-label  the mask of another label of the same scene (the scene's other region when it has one label)
    shuffled     the truth of the same slot in another scene

Labels are either the classes present in each scene (``--labels classes``) or the caption labels that
training sees (``--labels captions``, from the label sidecars), matched to classes by their head word.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synseg_model import SynSeg, load_checkpoint, mccl_loss
from synseg_model.decoder import synergy_features
from training.data import expand_shards, sidecar_path
from training.shapes.world import IGNORE_INDEX, World, load_world

MAP_KINDS = ("truth", "model", "uniform", "scaled", "other-label", "shuffled")
TERMS = ("total", "align", "cont", "back", "sep")


@dataclass
class Scenes:
    """Scenes with padded label lists: images (N, 3, S, S) normalised; truth (N, K, S, S) in {0, 1};
    label_mask (N, K) real labels; matched (N, K) labels that name a class."""

    images: torch.Tensor
    labels: list[list[str]]
    truth: torch.Tensor
    label_mask: torch.Tensor
    matched: torch.Tensor


def _scene_labels(seg: np.ndarray, caption_labels: list[str] | None, world: World) -> tuple[list[str], list[int]]:
    """(labels, class index or -1 for each): the classes present, or the caption labels matched to classes."""
    present = [int(v) for v in np.unique(seg) if v != IGNORE_INDEX]
    if caption_labels is None:
        return [world.class_names[v] for v in present], present
    classes = [world.class_of_label(label) for label in caption_labels]
    return caption_labels, [world.class_index(c) if c is not None else -1 for c in classes]


def load_scenes(shards: str, count: int, world: World, mean: tuple[float, ...], std: tuple[float, ...],
                labels_dir: Path | None = None, max_labels: int = 8) -> Scenes:
    """The first ``count`` scenes of the shards that have at least one label (caption labels when
    ``labels_dir`` is given, else the classes present)."""
    images, labels, truths = [], [], []
    for url in expand_shards(shards):
        sidecar = json.loads(sidecar_path(labels_dir, url).read_text()) if labels_dir else None
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(url) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, sample in members.items():
            seg = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
            names, ids = _scene_labels(seg, None if sidecar is None else sidecar.get(key, []), world)
            names, ids = names[:max_labels], ids[:max_labels]
            if not names:
                continue
            rgb = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
            images.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255)
            labels.append(names)
            truths.append(torch.from_numpy(np.stack([seg == i for i in ids])).float())
            if len(images) == count:
                return _pad(images, labels, truths, mean, std)
    return _pad(images, labels, truths, mean, std)


def _pad(images: list[torch.Tensor], labels: list[list[str]], truths: list[torch.Tensor],
         mean: tuple[float, ...], std: tuple[float, ...]) -> Scenes:
    if not images:
        raise ValueError("no scene with a label in the shards")
    k = max(len(names) for names in labels)
    truth = torch.zeros(len(images), k, *truths[0].shape[-2:])
    label_mask = torch.zeros(len(images), k, dtype=torch.bool)
    for i, t in enumerate(truths):
        truth[i, :len(t)] = t
        label_mask[i, :len(t)] = True
    matched = label_mask & (truth.flatten(2).sum(-1) > 0)
    x = (torch.stack(images) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return Scenes(x, labels, truth, label_mask, matched)


def candidate_maps(model_maps: torch.Tensor, scenes: Scenes) -> dict[str, torch.Tensor]:
    """The sets of maps the objective is asked to rank, each (N, K, S, S) in [0, 1]."""
    truth, n = scenes.truth, scenes.label_mask.sum(1)
    other = torch.empty_like(truth)
    for i, count in enumerate(n.tolist()):
        own = truth[i, :count]
        other[i, :count] = own.roll(1, dims=0) if count > 1 else 1 - own
    return {"truth": truth, "model": model_maps, "uniform": torch.full_like(truth, 0.5), "scaled": 0.02 * truth,
            "other-label": other, "shuffled": truth.roll(1, dims=0)}


def fit_projector(model: SynSeg, features: torch.Tensor, maps: torch.Tensor, text: torch.Tensor,
                  label_mask: torch.Tensor, steps: int, lr: float, seed: int) -> dict[str, float]:
    """MCCL terms after fitting a fresh copy of the model's projector to fixed maps (full batch, Adam).

    Args:
        features: (N*K, dim, h, w) what the projector reads. maps: (N, K, S, S). text: (N, K, D).
    """
    torch.manual_seed(seed)
    projector = type(model.projector)(model.config, model.text_dim)
    optimizer = torch.optim.Adam(projector.parameters(), lr=lr)
    n, k = label_mask.shape

    def loss() -> dict[str, torch.Tensor]:
        fg, bg = synergy_features(projector(features), maps.flatten(0, 1))
        terms = mccl_loss(fg.view(n, k, -1), bg.view(n, k, -1), text, mask=label_mask)
        return {"total": sum(terms.values()), **terms}  # eq. (7) with every weight 1

    for _ in range(steps):
        optimizer.zero_grad()
        loss()["total"].backward()
        optimizer.step()
    with torch.no_grad():
        return {name: float(value) for name, value in loss().items()}


@torch.no_grad()
def frozen_inputs(model: SynSeg, scenes: Scenes, projector_input: str) -> tuple[torch.Tensor, ...]:
    """(projector features (N*K, dim, h, w), the model's maps (N, K, S, S), label texts (N, K, D))."""
    names = sorted({label for labels in scenes.labels for label in labels})
    table = dict(zip(names, model.encode_text(names)))
    n, k = scenes.label_mask.shape
    text = torch.zeros(n, k, model.text_dim)
    for i, labels in enumerate(scenes.labels):
        for j, label in enumerate(labels):
            text[i, j] = table[label]
    activations = model.encode_image(scenes.images)
    size = tuple(scenes.images.shape[-2:])
    grid = (size[0] // model.patch_size, size[1] // model.patch_size)
    logits, conditional = model.decoder(activations, text, grid)
    if projector_input == "visual":
        features = model.decoder.visual_tokens(activations, grid).repeat_interleave(k, dim=0)
    else:
        features = conditional
    return features, torch.sigmoid(logits), text


def diagnose(model: SynSeg, scenes: Scenes, steps: int = 240, lr: float = 1e-3, seed: int = 0,
             projector_input: str = "conditional", kinds: tuple[str, ...] = MAP_KINDS) -> dict[str, dict[str, float]]:
    """The fitted MCCL terms of each kind of maps in ``kinds`` (default all of ``MAP_KINDS``), the decoder frozen."""
    model.eval()
    features, model_maps, text = frozen_inputs(model, scenes, projector_input)
    return {kind: fit_projector(model, features, maps, text, scenes.label_mask, steps, lr, seed)
            for kind, maps in candidate_maps(model_maps, scenes).items() if kind in kinds}


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| maps | " + " | ".join(TERMS) + " |", "|---" * (len(TERMS) + 1) + "|"]
    for kind, terms in sorted(results.items(), key=lambda item: item[1]["total"]):
        lines.append(f"| {kind} | " + " | ".join(f"{terms[t]:.3f}" for t in TERMS) + " |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="SynSeg checkpoint (its decoder is frozen)")
    parser.add_argument("--data", type=Path, default=Path("runs/shapes/data"),
                        help="a shapes data folder: train/ shards and labels/ sidecars")
    parser.add_argument("--labels", choices=("classes", "captions"), default="captions",
                        help="the classes present in each scene, or the caption labels training uses")
    parser.add_argument("--images", type=int, default=96, help="training scenes used")
    parser.add_argument("--steps", type=int, default=240, help="Adam steps fitting each fresh projector")
    parser.add_argument("--lr", type=float, default=1e-3, help="projector learning rate")
    parser.add_argument("--seed", type=int, default=0, help="initialisation of the fresh projectors")
    parser.add_argument("--projector-input", choices=("conditional", "visual"), default="conditional",
                        help="what the projector reads (training's loss.mccl.projector_input)")
    parser.add_argument("--world", type=Path, default=None, help="world YAML (default config/shapes/world.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = get_args_parser().parse_args(argv)
    if args.images < 1 or args.steps < 1:
        raise SystemExit("--images and --steps must be at least 1")
    model = load_checkpoint(args.checkpoint)
    shards = str(args.data / "train" / "*.tar")
    scenes = load_scenes(shards, args.images, load_world(args.world), model.config.mean, model.config.std,
                         args.data / "labels" if args.labels == "captions" else None)
    results = diagnose(model, scenes, args.steps, args.lr, args.seed, args.projector_input)
    unmatched = int((scenes.label_mask & ~scenes.matched).sum())
    print(f"{len(scenes.labels)} scenes, {int(scenes.label_mask.sum())} {args.labels} labels "
          f"({unmatched} name no class in their scene); projector fitted {args.steps} steps per row\n")
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))
    return results
