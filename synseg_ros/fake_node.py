"""The synseg node on ``FakeSegmenter`` (no model, no torch), for tests and benchmarks of the node itself.

    python -m synseg_ros.fake_node [--delay S] --ros-args -p autostart:=true ...

Each label's activation map is a colour channel of the image (see ``synseg_ros.segmenter``); ``--delay`` makes
every frame take that long, as a slow model would.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from synseg_ros.node import main as node_main
from synseg_ros.segmenter import FakeSegmenter


def main(argv: Sequence[str] | None = None) -> int:
    """Run the synseg node with ``FakeSegmenter``; arguments as the node's plus ``--delay``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the fake model takes per frame")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return node_main(rest, segmenter_factory=lambda settings: FakeSegmenter(settings, args.delay))


if __name__ == "__main__":
    sys.exit(main())
