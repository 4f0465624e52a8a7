"""Models by name: list them, download one (and convert it once), print a model card.

    python -m synseg_model.pretrained list
    python -m synseg_model.pretrained download clipseg-rd64-refined      # or hf-hub:ORG/REPO[@REVISION]
    python -m synseg_model.pretrained info clipseg-rd64-refined

Downloads go to the Hugging Face cache (HF_HOME, default ~/.cache/huggingface; HF_HUB_OFFLINE=1 forbids them;
tokens as for any Hugging Face tool) with a progress bar; CLIPSeg repositories are converted once into
$SYNSEG_MODEL_CACHE (default ~/.cache/synseg/models). To run a robot offline: download here, copy both
folders there, point HF_HOME (and SYNSEG_MODEL_CACHE) at them.
"""
from __future__ import annotations

import argparse
import logging
import sys

import yaml

from . import REGISTRY, cache_status, card_summary, converted_cache_dir, get_model_card, resolve_checkpoint


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synseg_model.pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registered names, where each stands in the cache, one line each")
    for command, text in (("download", "download (and convert) a model now, e.g. before going offline"),
                          ("info", "print a model's card (a registered name is not downloaded for it)")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("name", help="a registered name, hf-hub:ORG/REPO[@REVISION], or a .safetensors path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "list":
            for name, entry in REGISTRY.items():
                source = entry.card.get("source", "")
                print(f"{name:22} {cache_status(name):11} {card_summary(entry.card)}\n{'':34} {source}")
            print(f"\nconverted models: {converted_cache_dir()}; any repository: hf-hub:ORG/REPO[@REVISION]")
        elif args.command == "download":
            path, _ = resolve_checkpoint(args.name)
            print(f"{args.name}: ready, {path} ({path.stat().st_size / 1e6:.0f} MB)")
        else:
            print(yaml.safe_dump(get_model_card(args.name), sort_keys=False, allow_unicode=True, width=110), end="")
    except ValueError as exc:  # CheckpointError: unknown name, offline and not cached, corrupt cache
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
