#!/usr/bin/env python3
"""Re-point the Python include paths baked into the ROS 2 wheels' CMake exports at this interpreter's.

The ROS 2 message wheels were built in a container whose Python lived under /opt/python/...; their exported
CMake targets (share/*/cmake/*Export.cmake) name that Python's and numpy's include folders, so building a
message package against them fails. This rewrites every such path that does not exist on this machine to
the running interpreter's include folder or numpy's. Running it again changes nothing.

    python scripts/fix_ros_wheel_cmake.py [--prefix VENV]
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# An absolute path inside a CMake string list: up to the next ';' or '"'.
_PATH = re.compile(r'/[^;"\s]+')


def replacement_for(path: str) -> str | None:
    """This interpreter's equivalent of a foreign Python or numpy include folder, or None."""
    if re.search(r"numpy/(_core|core)/include$", path):
        return np.get_include()
    if re.search(r"/include/python3\.\d+$", path):
        return sysconfig.get_paths()["include"]
    return None


def fix_file(path: Path) -> int:
    """Rewrite the missing include folders named in one CMake file; returns how many were replaced."""
    text = path.read_text()
    count = 0

    def swap(match: re.Match) -> str:
        nonlocal count
        old = match.group(0)
        new = replacement_for(old)
        if new is None or new == old or Path(old).exists():
            return old
        count += 1
        return new

    fixed = _PATH.sub(swap, text)
    if count:
        path.write_text(fixed)
    return count


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", type=Path, default=Path(sys.prefix),
                        help="the prefix holding the wheels' share/ folder (default: this interpreter's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    share = args.prefix / "share"
    if not share.is_dir():
        raise SystemExit(f"{share}: no such folder (is --prefix the virtual environment?)")
    files = sorted(share.glob("*/cmake/*.cmake"))
    fixed = {path: fix_file(path) for path in files}
    changed = {path: n for path, n in fixed.items() if n}
    for path, n in changed.items():
        log.info("%s: %d include path(s) re-pointed", path.relative_to(args.prefix), n)
    log.info("checked %d CMake files under %s, changed %d", len(files), share, len(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
