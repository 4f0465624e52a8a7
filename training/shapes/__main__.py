"""``python -m training.shapes {generate,clip,gate,diagnose,run} ...``: the shapes world's command line.

    generate  write training shards and held-out splits (training.shapes.generate)
    clip      stage 1 alone: train the small CLIP with open_clip_train on generated shards
    gate      the zero-shot gate of a stage-1 checkpoint on a held-out split
    diagnose  which maps the MCCL objective prefers, the decoder of a checkpoint frozen
    score     what the node publishes, scored: each label's mask under the model's rule, and the probes
    calibrate choose a model's mask rule on dev (no caption-only class's dense truth) and write it to its card
    outside-words  write the words outside the world that L_outside trains on
    run       everything, from nothing to the results table (training.shapes.pipeline)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import ConfigError
from training.shapes import calibrate, clip_stage, diagnose, generate, outside_words, pipeline, robot
from training.shapes.config import REPO_ROOT, load_stage1_config
from training.shapes.world import load_world

STAGE1_CONFIG = REPO_ROOT / "config" / "shapes" / "stage1.yaml"


def clip_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stage 1: train the shapes world's CLIP with open_clip_train.")
    parser.add_argument("--config", type=Path, default=STAGE1_CONFIG)
    parser.add_argument("--train-dir", type=Path, required=True, help="folder of shards with sizes.json")
    parser.add_argument("--labels-dir", type=Path, default=None,
                        help="spaCy label sidecars of the shards (training.prepare_labels); needed by phases "
                             "with captions: nouns")
    parser.add_argument("--out", type=Path, required=True, help="open_clip_train's --logs folder")
    args = parser.parse_args(argv)
    cfg = load_stage1_config(args.config)
    print(clip_stage.train_clip(cfg, args.train_dir, args.out, args.labels_dir))


def gate_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The stage-1 zero-shot gate of an open_clip_train checkpoint.")
    parser.add_argument("--config", type=Path, default=STAGE1_CONFIG,
                        help="stage-1 YAML: the architecture and the gate's prompt and thresholds")
    parser.add_argument("--checkpoint", type=Path, required=True, help="open_clip_train checkpoint (.pt)")
    parser.add_argument("--data", type=Path, required=True, help="VOC-layout held-out split")
    parser.add_argument("--world", type=Path, default=None, help="world YAML (default config/shapes/world.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    cfg = load_stage1_config(args.config)
    (figures,) = clip_stage.gate_on(cfg, args.checkpoint, load_world(args.world).class_names, args.data)
    text = json.dumps({k: v for k, v in figures.items() if k != "text_cosine"}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if not figures["passed"]:
        raise SystemExit(1)


COMMANDS = {
    "generate": generate.main,
    "clip": clip_main,
    "gate": gate_main,
    "diagnose": diagnose.main,
    "score": robot.main,
    "calibrate": calibrate.main,
    "outside-words": outside_words.main,
    "run": pipeline.main,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.argv[0] = f"python -m training.shapes {argv[0]}"  # argparse's usage line names the program from it
    try:
        COMMANDS[argv[0]](argv[1:])
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")


if __name__ == "__main__":
    main()
