"""The synseg node on ``FakeSegmenter`` (no model, no torch), for tests and benchmarks of the node itself.

    python -m synseg_ros.fake_node [--delay S] [--load-delay S] --ros-args -p autostart:=true ...

Each label's activation map is a colour channel of the image (see ``synseg_ros.segmenter``); ``--delay`` makes
every frame take that long, as a slow model would, and ``--load-delay`` the model's load at ``configure``, as
importing torch and loading (or downloading) a large model do.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Mapping, Sequence

from synseg_ros.node import main as node_main
from synseg_ros.segmenter import FakeSegmenter


def main(argv: Sequence[str] | None = None) -> int:
    """Run the synseg node with ``FakeSegmenter``; arguments as the node's plus ``--delay`` and ``--load-delay``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the fake model takes per frame")
    parser.add_argument("--load-delay", type=float, default=0.0,
                        help="seconds the fake model takes to load, in a call no signal interrupts")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)

    def load(settings: Mapping[str, Any]) -> FakeSegmenter:
        time.sleep(args.load_delay)     # outside the main thread: no signal ends it early
        return FakeSegmenter(settings, args.delay)

    return node_main(rest, segmenter_factory=load)


if __name__ == "__main__":
    sys.exit(main())
