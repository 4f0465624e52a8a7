"""What a robot receives, scored: each label's mask under a ``MaskRule``, not the benchmark's argmax.

The argmax always picks some class, so it never has to say "nothing here"; the node publishes one mask per
label, and a robot acts on any mask that is there. For a shapes-world split and a rule this module measures,
per class and for the seen / caption-only classes:

- node-mask IoU, precision, recall and area ratio (predicted / true pixels, on the scenes holding the class),
  accumulated over the split;
- ``absent_rate``: the share of scenes without the class in which its mask covers more than ``min_fraction``
  of the frame;
- ``caption_recall``: the share of (scene, class its caption names) pairs whose label is present, with the
  caption read by the training's own label extractor: image-level weak labels, as a CC12M run would have;
- ``presence_auc``: how well the presence score separates the classes a scene holds from the others (ROC AUC
  over (scene, class) pairs, by the dense truth: a reported figure, never a choice);

and, for the probes (``config/shapes/probes.yaml``): the rate at which words outside the world get a mask over
``min_fraction`` of a scene, and the largest mask any world class gets on frames that are not of the world.

The maps are computed once (``RobotMaps``); every rule is then a few tensor operations on them, which is what
lets ``training.shapes.calibrate`` try a grid of rules.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synseg_model import MaskRule, SynSeg, image_to_tensor
from training.config import ConfigError, read_yaml_mapping
from training.evaluate import load_templates
from training.labels import LabelExtractor
from training.metrics import IGNORE_INDEX
from training.shapes.config import REPO_ROOT
from training.shapes.score import load_split
from training.shapes.world import World, load_world

PROBES = REPO_ROOT / "config" / "shapes" / "probes.yaml"


@dataclass(frozen=True)
class Probes:
    """Words and named frames outside the world, and the mask area (share of the frame) that counts."""

    words: tuple[str, ...]
    frames: tuple[str, ...]
    min_fraction: float


def load_probes(which: str, path: str | Path = PROBES) -> Probes:
    """The ``dev`` or ``test`` probes of a probes file."""
    data = read_yaml_mapping(path)
    if which not in data or not isinstance(data[which], dict):
        raise ConfigError(f"{path}: no '{which}' probes")
    part = data[which]
    unknown = [name for name in part.get("frames", []) if name not in FRAMES]
    if unknown:
        raise ConfigError(f"{path}: '{which}.frames': unknown frames {unknown}; known: {sorted(FRAMES)}")
    return Probes(tuple(part.get("words", [])), tuple(part.get("frames", [])), float(data.get("min_fraction", 0.01)))


def _flat(rgb: tuple[int, int, int]):
    return lambda size, rng: np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()


def _checkerboard(size: int, rng: np.random.Generator) -> np.ndarray:
    cells = (np.arange(size)[:, None] // max(1, size // 8) + np.arange(size)[None] // max(1, size // 8)) % 2
    return np.repeat((cells * 255).astype(np.uint8)[..., None], 3, axis=2)


def _gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    return np.stack([np.broadcast_to(ramp[None], (size, size)), np.broadcast_to(ramp[:, None], (size, size)),
                     np.full((size, size), 128.0)], axis=2).astype(np.uint8)


# Frames that are not of the shapes world: flat colours (a covered lens, a wall), noise, patterns.
FRAMES = {
    "black": _flat((0, 0, 0)), "dark_grey": _flat((64, 64, 64)), "grey": _flat((128, 128, 128)),
    "light_grey": _flat((192, 192, 192)), "white": _flat((255, 255, 255)), "red": _flat((200, 30, 30)),
    "green": _flat((40, 170, 60)), "blue": _flat((40, 60, 200)), "beige": _flat((225, 205, 170)),
    "uniform_noise": lambda size, rng: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
    "gaussian_noise": lambda size, rng: rng.normal(128, 40, (size, size, 3)).clip(0, 255).astype(np.uint8),
    "checkerboard": _checkerboard, "gradient": _gradient,
}


def probe_frame(name: str, size: int, seed: int = 0) -> np.ndarray:
    """The named frame, (size, size, 3) uint8 (noise from ``seed``)."""
    return FRAMES[name](size, np.random.default_rng(seed))


@dataclass
class RobotMaps:
    """Activation maps of one split, computed once: scenes x world classes, scenes x probe words, probe frames x
    world classes; with the truth and the classes each scene's caption names."""

    names: list[str]
    seen: frozenset[str]
    truth: torch.Tensor            # (N, S, S) int64 class index, IGNORE_INDEX where unlabelled
    scenes: torch.Tensor           # (N, K, S, S) sigmoid activations of the world classes
    words: torch.Tensor            # (N, W, S, S) of the probe words
    frames: torch.Tensor           # (F, K, S, S) of the world classes on the probe frames
    named: torch.Tensor            # (N, K) bool: the scene's caption names the class
    probes: Probes


@torch.no_grad()
def _activations(model: SynSeg, images: np.ndarray, labels: list[str], batch_size: int) -> torch.Tensor:
    text = model.encode_text(labels, load_templates("simple"))
    cfg = model.config
    return torch.cat([torch.sigmoid(model(image_to_tensor(images[i:i + batch_size], cfg.mean, cfg.std), text))
                      for i in range(0, len(images), batch_size)]).float()


def caption_classes(split: Path, world: World, names: list[str]) -> torch.Tensor:
    """(N, K) bool: which world classes each scene's caption names, read by the training's label extractor."""
    captions = json.loads((split / "captions.json").read_text())
    keys = (split / "ImageSets" / "Segmentation" / "val.txt").read_text().split()   # the order of load_split
    extractor = LabelExtractor()
    named = torch.zeros(len(keys), len(names), dtype=torch.bool)
    for i, key in enumerate(keys):
        for label in extractor(captions[key]) or []:
            if (name := world.class_of_label(label)) in names:
                named[i, names.index(name)] = True
    return named


def compute_maps(model: SynSeg, split: Path, probes: Probes, seen: set[str] | frozenset[str],
                 world: World | None = None, batch_size: int = 50) -> RobotMaps:
    """The maps of ``model`` on a VOC-layout shapes split (``training.shapes generate``) and on the probes."""
    images, truth, names = load_split(str(split))
    was_training = model.training
    model.eval()
    try:
        frames = np.stack([probe_frame(name, images.shape[1]) for name in probes.frames]) if probes.frames \
            else images[:0]
        maps = RobotMaps(
            names=names, seen=frozenset(seen), truth=truth, scenes=_activations(model, images, names, batch_size),
            words=_activations(model, images, list(probes.words), batch_size) if probes.words
            else torch.zeros(len(images), 0, *truth.shape[1:]),
            frames=_activations(model, frames, names, batch_size) if len(frames)
            else torch.zeros(0, len(names), *truth.shape[1:]),
            named=caption_classes(split, world or load_world(), names), probes=probes)
    finally:
        model.train(was_training)
    return maps


def _masks(maps: torch.Tensor, rule: MaskRule) -> tuple[torch.Tensor, torch.Tensor]:
    """The masks ``rule`` gives (..., H, W) and the presence scores (...) it decided them by."""
    scores = rule.presence(maps)
    return (maps > rule.threshold) & rule.present(scores)[..., None, None], scores


def _pct(num: float, den: float) -> float | None:
    return 100.0 * num / den if den else None


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float | None:
    """The probability that a positive scores above a negative (ties count half): the ROC AUC."""
    if not len(positive) or not len(negative):
        return None
    above = (positive[:, None] > negative[None]).float() + 0.5 * (positive[:, None] == negative[None]).float()
    return float(above.mean())


def robot_figures(maps: RobotMaps, rule: MaskRule) -> dict[str, Any]:
    """Every figure of the module docstring for ``rule``, in percent (ratios as ratios)."""
    masks, scores = _masks(maps.scenes, rule)
    present = rule.present(scores)
    valid = (maps.truth != IGNORE_INDEX)[:, None]
    inside = maps.truth[:, None] == torch.arange(len(maps.names))[None, :, None, None]
    holds = inside.flatten(2).any(-1)                                              # (N, K)
    area = (masks & valid).flatten(2).float().mean(-1)                             # share of the frame
    per_class = {}
    for k, name in enumerate(maps.names):
        inter = float((masks[:, k] & inside[:, k]).sum())
        pred = float((masks[:, k] & valid[:, 0]).sum())
        true = float(inside[:, k].sum())
        pred_on = float((masks[holds[:, k], k] & valid[holds[:, k], 0]).sum())
        absent = ~holds[:, k]
        per_class[name] = {
            "iou": _pct(inter, pred + true - inter) if true else None, "precision": _pct(inter, pred),
            "recall": _pct(inter, true), "area_ratio": pred_on / true if true else None,
            "absent_rate": _pct(float((area[absent, k] > maps.probes.min_fraction).sum()), float(absent.sum())),
            "caption_recall": _pct(float(present[maps.named[:, k], k].sum()), float(maps.named[:, k].sum())),
        }
    word_area = _masks(maps.words, rule)[0].flatten(2).float().mean(-1)            # (N, W)
    frame_area = _masks(maps.frames, rule)[0].flatten(2).float().mean(-1)          # (F, K)
    words = {w: 100.0 * float((word_area[:, j] > maps.probes.min_fraction).float().mean())
             for j, w in enumerate(maps.probes.words)}
    frames = {f: {"largest": 100.0 * float(frame_area[i].max()), "label": maps.names[int(frame_area[i].argmax())]}
              for i, f in enumerate(maps.probes.frames)}
    figures: dict[str, Any] = {"rule": rule.to_card(), "num_images": len(maps.truth), "per_class": per_class,
                               "words": words, "frames": frames}
    for group, members in (("seen", [n for n in maps.names if n in maps.seen]),
                           ("unseen", [n for n in maps.names if n not in maps.seen])):
        for key in ("iou", "precision", "recall", "area_ratio", "absent_rate", "caption_recall"):
            figures[f"{key}_{group}"] = _mean([per_class[n][key] for n in members])
        figures[f"worst_absent_rate_{group}"] = max((per_class[n]["absent_rate"] or 0.0 for n in members),
                                                    default=None)
    figures["presence_auc"] = auc(scores[holds], scores[~holds])  # scene holds the class vs not: the rule's score
    named = maps.named
    figures["caption_recall"] = _pct(float(present[named].sum()), float(named.sum()))
    figures["word_rate"] = _mean(list(words.values()))
    figures["worst_word_rate"] = max(words.values(), default=None)
    figures["frame_largest"] = max((f["largest"] for f in frames.values()), default=None)
    return figures


def spill_figures(maps: RobotMaps, rule: MaskRule, ring: int = 3) -> dict[str, dict[str, Any]]:
    """Where each class's mask falls off its objects, on the scenes holding the class, as shares of its true
    pixels (so that ``area_ratio`` = recall + ``ring`` + ``beyond``): ``ring``, within ``ring`` pixels of an
    object (a blurred edge); ``beyond``, further away, and ``beyond_on``, the classes it covers there, largest
    first. A diagnosis of a too-large area ratio (a blur, or maps lit on other things), not a score."""
    masks = _masks(maps.scenes, rule)[0]
    valid = maps.truth != IGNORE_INDEX
    spill = {}
    for k, name in enumerate(maps.names):
        holds = (maps.truth == k).flatten(1).any(-1)
        if not holds.any():
            continue
        truth = maps.truth[holds]
        inside = truth == k
        near = F.max_pool2d(inside[:, None].float(), 2 * ring + 1, stride=1, padding=ring)[:, 0] > 0
        wrong = masks[holds, k] & valid[holds] & ~inside
        beyond = wrong & ~near
        true = float(inside.sum())
        covered = torch.bincount(truth[beyond], minlength=len(maps.names))
        spill[name] = {"ring": float((wrong & near).sum()) / true, "beyond": float(beyond.sum()) / true,
                       "beyond_on": {maps.names[j]: float(covered[j]) / true
                                     for j in covered.argsort(descending=True).tolist() if covered[j]}}
    return spill


def spill_table(spill: dict[str, dict[str, Any]], seen: set[str] | frozenset[str], most: int = 3) -> str:
    """A Markdown table of ``spill_figures``."""
    lines = ["| class | seen | mask beyond the object, x its area: within 3 px | further | further, on |",
             "| --- | --- | ---: | ---: | --- |"]
    for name, row in spill.items():
        on = ", ".join(f"{other} {share:.2f}" for other, share in list(row["beyond_on"].items())[:most])
        lines.append(f"| {name} | {'yes' if name in seen else 'no'} | {row['ring']:.2f} | {row['beyond']:.2f} | "
                     f"{on} |")
    return "\n".join(lines)


def _fmt(value: float | None, ratio: bool = False) -> str:
    return "-" if value is None else f"{value:.2f}" if ratio else f"{value:.1f}"


def robot_table(figures: dict[str, Any], seen: set[str] | frozenset[str]) -> str:
    """A Markdown table of ``robot_figures``: one row per class, then the groups and the probes."""
    keys = ("iou", "precision", "recall", "area_ratio", "absent_rate", "caption_recall")
    lines = ["| class | seen | node IoU | precision | recall | area ratio | absent: mask > 1% | caption recall |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in figures["per_class"].items():
        cells = [_fmt(row[k], k == "area_ratio") for k in keys]
        lines.append(f"| {name} | {'yes' if name in seen else 'no'} | " + " | ".join(cells) + " |")
    for group in ("seen", "unseen"):
        cells = [_fmt(figures[f"{k}_{group}"], k == "area_ratio") for k in keys]
        lines.append(f"| **mean, {group}** | | " + " | ".join(cells) + " |")
    words = ", ".join(f"{w} {v:.0f}" for w, v in figures["words"].items())
    frames = ", ".join(f"{f} {v['largest']:.0f} ({v['label']})" for f, v in figures["frames"].items())
    rule = figures["rule"]
    lines += ["", f"rule: threshold {rule['threshold']}, presence {rule['presence_threshold']} "
                  f"(top {rule['presence_fraction']:.0%} of a map); {figures['num_images']} scenes",
              f"words outside the world, % of scenes with a mask: mean {_fmt(figures['word_rate'])}, worst "
              f"{_fmt(figures['worst_word_rate'])} ({words})",
              f"frames outside the world, largest mask, % of the frame: {frames}"]
    return "\n".join(lines)


def load_for_scoring(checkpoint: str | None, seen: str | None) -> tuple[SynSeg, set[str]]:
    """The model and its seen classes (``--seen a,b`` or the card's ``seen_in_stage2``)."""
    model = SynSeg.from_checkpoint(checkpoint)
    names = seen.split(",") if seen else model.model_card.get("seen_in_stage2")
    if not names:
        raise SystemExit(f"{checkpoint or 'the default model'}: its card names no seen classes; give --seen a,b")
    return model, {name.strip() for name in names}


def add_model_arguments(parser: argparse.ArgumentParser, probes: str) -> None:
    """The arguments ``score`` and ``calibrate`` share."""
    parser.add_argument("--checkpoint", default=None,
                        help="a .safetensors file or a model name (default: the offline default model)")
    parser.add_argument("--split", type=Path, required=True,
                        help="a shapes split in the VOC layout, e.g. runs/shapes/data/val (python -m training.shapes "
                             "generate writes DIR/val)")
    parser.add_argument("--probes", choices=("dev", "test"), default=probes,
                        help=f"which probe lists of --probes-file (default {probes})")
    parser.add_argument("--probes-file", type=Path, default=PROBES)
    parser.add_argument("--seen", default=None, help="comma-separated seen classes (default: the card's)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Score what the node publishes (each label's mask under the model's mask rule) on a shapes "
                    "split and the probes: per-class node-mask IoU, precision, recall, area ratio, false masks "
                    "of absent classes, caption recall, masks for words and frames outside the world.")
    add_model_arguments(parser, "test")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: the card's rule)")
    parser.add_argument("--presence-threshold", type=float, default=None,
                        help="presence threshold (default: the card's rule; 0: every label present)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    model, seen = load_for_scoring(args.checkpoint, args.seen)
    try:
        rule = MaskRule.from_card(model.model_card).with_overrides(args.threshold, args.presence_threshold)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    maps = compute_maps(model, args.split, load_probes(args.probes, args.probes_file), seen)
    figures = robot_figures(maps, rule)
    figures["spill"] = spill_figures(maps, rule)
    print(robot_table(figures, seen))
    print("\nwhere the masks spill (scenes holding the class):\n" + spill_table(figures["spill"], seen))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
