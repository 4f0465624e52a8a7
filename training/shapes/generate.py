"""Write a shapes-world dataset: training WebDataset shards and a held-out split in the PASCAL VOC layout.

Layout of ``--out DIR``::

    DIR/manifest.json                    seed, counts, class table, world file and its contents
    DIR/train/{00000..0000N}.tar         img2dataset-style shards: {key}.jpg .txt .json .seg.png
    DIR/train/sizes.json                 samples per shard (read by open_clip_train)
    DIR/val/JPEGImages/{id}.jpg          held-out images
    DIR/val/SegmentationClass/{id}.png   palette PNGs, pixel value = class index (no background class)
    DIR/val/ImageSets/Segmentation/val.txt
    DIR/val/classes.txt                  class names, one per line, in index order
    DIR/val/captions.json                {id: caption} (not used by segmentation metrics)
    DIR/val/dataset.yaml                 dataset spec for ``python -m training.evaluate --dataset``

Everything is a function of (world YAML, seed, counts, shard size): each shard and each held-out image has
its own random stream, so the output is the same whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from training.metrics import IGNORE_INDEX
from training.shapes.captions import make_caption
from training.shapes.render import Scene, hard_negatives, render, sample_scene
from training.shapes.world import World, load_world

logger = logging.getLogger(__name__)

_TRAIN_STREAM, _VAL_STREAM = 0, 1  # keep the training and held-out random streams apart


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triplets, flattened), as used by its SegmentationClass PNGs."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """(H,W,3) uint8 RGB -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(labels: np.ndarray, palette: list[int] | None = None) -> bytes:
    """(H,W) uint8 label map -> PNG bytes (grey, or palette mode when ``palette`` is given)."""
    img = Image.fromarray(labels, mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scene_metadata(scene: Scene, world: World) -> dict[str, Any]:
    """JSON-able description of a scene: stuff, shapes (with visible pixels) and present class indices."""
    return {
        "stuff": scene.spec.stuff,
        "objects": [
            {"class": s.name, "color": s.color, "center": [round(c, 2) for c in s.center],
             "radius": round(s.radius, 2), "angle": round(s.angle, 1), "visible_pixels": v}
            for s, v in zip(scene.spec.shapes, scene.visible)
        ],
        "present": sorted(int(i) for i in np.unique(scene.labels)),
    }


def train_shard_scenes(world: World, seed: int, shard: int, count: int) -> list[tuple[Scene, int]]:
    """The ``count`` (scene, group) pairs of training shard ``shard``.

    A group is a scene and its hard negatives (or a scene alone); a group's scenes are kept next to each
    other, and ``group`` numbers the groups within the shard.
    """
    rng = np.random.default_rng([seed, _TRAIN_STREAM, shard])
    scenes: list[tuple[Scene, int]] = []
    lo, hi = world["hard_negative_group"]
    group = 0
    while len(scenes) < count:
        spec = sample_scene(rng, world)
        specs = [spec]
        if rng.random() < world["hard_negative_fraction"]:
            specs += hard_negatives(rng, spec, world, int(rng.integers(lo, hi + 1)) - 1)
        scenes += [(render(s, world), group) for s in specs]
        group += 1
    return scenes[:count]


def _write_shard(job: tuple[str, str, int, int, int, int]) -> int:
    world_path, out_dir, seed, shard, count, key_digits = job
    world = load_world(world_path)
    classes = {str(i): name for i, name in enumerate(world.class_names)}
    path = Path(out_dir) / f"{shard:05d}.tar"
    tmp = path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w") as tar:
        for i, (scene, group) in enumerate(train_shard_scenes(world, seed, shard, count)):
            key = f"{shard:05d}{i:0{key_digits}d}"
            # One caption stream per group: the captions of hard negatives make the same choices (template,
            # attributes, noise) and so differ only where the scenes do, in their shape words.
            caption = make_caption(scene, np.random.default_rng([seed, _TRAIN_STREAM, shard, 1, group]), world)
            meta = {
                "key": key, "url": None, "caption": caption, "status": "success", "error_message": None,
                "width": world.image_size, "height": world.image_size,
                "original_width": world.image_size, "original_height": world.image_size,
                "classes": classes, "ignore_index": IGNORE_INDEX, "group": group, **scene_metadata(scene, world),
            }
            members = {
                "jpg": encode_jpeg(scene.image, world["jpeg_quality"]),
                "txt": caption.encode(),
                "json": json.dumps(meta).encode(),
                "seg.png": encode_png(scene.labels),
            }
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0  # byte-identical shards for a seed
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)
    return count


def write_train(world: World, out: Path, seed: int, count: int, shard_size: int, workers: int) -> None:
    """Write ``count`` training samples as shards of ``shard_size`` plus ``sizes.json``."""
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-count // shard_size))
    counts = [min(shard_size, count - s * shard_size) for s in range(n_shards)]
    key_digits = max(4, len(str(shard_size - 1)))
    jobs = [(world.source, str(out), seed, s, c, key_digits) for s, c in enumerate(counts)]
    with tqdm(total=count, desc="train shards", unit="img") as bar:
        if workers > 1 and n_shards > 1:
            with multiprocessing.get_context("spawn").Pool(min(workers, n_shards)) as pool:
                for n in pool.imap(_write_shard, jobs):
                    bar.update(n)
        else:
            for job in jobs:
                bar.update(_write_shard(job))
    sizes = {f"{s:05d}.tar": c for s, c in enumerate(counts)}
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1))


def val_scene(world: World, seed: int, index: int) -> tuple[Scene, str]:
    """Held-out scene ``index`` for ``seed`` and its caption (i.i.d. scenes, no hard-negative groups)."""
    rng = np.random.default_rng([seed, _VAL_STREAM, index])
    scene = render(sample_scene(rng, world), world)
    return scene, make_caption(scene, rng, world)


def write_val(world: World, out: Path, seed: int, count: int) -> None:
    """Write the held-out split in the PASCAL VOC layout, its class list and its dataset spec YAML."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    ids, captions = [], {}
    for i in tqdm(range(count), desc="held-out", unit="img"):
        scene, caption = val_scene(world, seed, i)
        name = f"shapes_{i:06d}"
        (out / "JPEGImages" / f"{name}.jpg").write_bytes(encode_jpeg(scene.image, world["jpeg_quality"]))
        (out / "SegmentationClass" / f"{name}.png").write_bytes(encode_png(scene.labels, palette))
        ids.append(name)
        captions[name] = caption
    (out / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    (out / "classes.txt").write_text("\n".join(world.class_names) + "\n")
    (out / "captions.json").write_text(json.dumps(captions, indent=1))
    (out / "dataset.yaml").write_text(yaml.safe_dump(dataset_spec(world), sort_keys=False))


def dataset_spec(world: World) -> dict[str, Any]:
    """The evaluation reader's spec for the held-out split: VOC layout, every class a real class.

    The world's images are small: evaluate them with ``short_side``, ``crop_size`` and ``stride`` set to
    ``image_size`` (one window per image) instead of the benchmark protocol's 448. Prompts use the single
    training template: the world's CLIP never saw TCL's ("a origami {}.", ...).
    """
    return {
        "name": "shapes",
        "layout": "voc",
        "classes": world.class_names,
        "background": False,
        "templates": "simple",
        "description": f"shapes-world held-out split ({len(world.stuff_names)} stuff and "
                       f"{len(world.shape_names)} shape classes, {world.image_size} px)",
    }


def generate(out: Path, train: int, val: int, seed: int, world_path: str | Path | None = None,
             shard_size: int = 1000, workers: int = 1) -> None:
    """Generate a whole shapes-world dataset under ``out`` (see the module docstring for the layout)."""
    world = load_world(world_path)
    out.mkdir(parents=True, exist_ok=True)
    if train > 0:
        write_train(world, out / "train", seed, train, shard_size, workers)
    if val > 0:
        write_val(world, out / "val", seed, val)
    manifest = {"seed": seed, "train": train, "val": val, "shard_size": shard_size,
                "world": world.source, "classes": world.class_names,
                "stuff": world.stuff_names, "shapes": world.shape_names, "image_size": world.image_size,
                "world_spec": world.spec}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    logger.info("wrote %d training and %d held-out scenes to %s", train, val, out)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate shapes-world training shards and a VOC-layout held-out split.")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train", type=int, default=20000, help="training samples (0: none)")
    parser.add_argument("--val", type=int, default=500, help="held-out samples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="data seed; the output is a function of it")
    parser.add_argument("--world", type=Path, default=None, help="world YAML (default config/shapes/world.yaml)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per training shard")
    parser.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.train < 0 or args.val < 0 or args.shard_size < 1:
        raise ValueError("--train and --val must be >= 0 and --shard-size >= 1")
    generate(args.out, args.train, args.val, args.seed, args.world, args.shard_size, args.workers)
