#!/usr/bin/env python3
"""Start-up time of the synseg node on a named model from a Hugging Face cache: first start against second.

Writes a fixture cache as the tests do (transformers' CLIPSegForImageSegmentation with random weights, saved
into ``HF_HOME/hub`` as ``CIDAS/clipseg-rd64-refined`` at its pinned revision; ``--size full`` has CLIPSeg's
real size, ViT-B/16 + refined decoder, about 600 MB), then starts the node twice, offline
(``HF_HUB_OFFLINE=1``), on ``checkpoint:=clipseg-rd64-refined`` with autostart, and times each start from the
process start to the node's "Active" log line. The first start converts the CLIPSeg repository; the second
loads the converted model from ``SYNSEG_MODEL_CACHE``. Both caches live in a temporary folder.

    LD_LIBRARY_PATH=$PWD/install/synseg_ros/lib scripts/sandbox .venv/bin/python scripts/measure_model_startup.py \\
        --size full
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hub_fixtures import write_clipseg_repo  # noqa: E402 - after the path above

from synseg_ros.processes import stop, wait_until  # noqa: E402
from tests.ros_processes import start_node  # noqa: E402

STARTUP_TIMEOUT_S = 600.0
# transformers' defaults are CLIPSeg's sizes; rd64-refined is the ViT-B/16 one with the refined decoder.
FULL_SIZE = {"vision_config": {"patch_size": 16}, "use_complex_transposed_convolution": True}


def start_once(label: str, log: Path, backend: str, converted: Path) -> dict:
    """One node start: seconds to the Active line, the node's own figures from its log, whether it converted."""
    before = set(converted.rglob("*.safetensors"))
    started = time.monotonic()
    proc = start_node("synseg_ros.node", ["--ros-args", "-p", "autostart:=true", "-p", "device:=cpu",
                                          "-p", f"backend:={backend}", "-p", "checkpoint:=clipseg-rd64-refined",
                                          "-p", "vocabulary:=[person, chair]"], log)
    try:
        wait_until(lambda: "Active:" in log.read_text(), STARTUP_TIMEOUT_S, f"the {label} start", procs=[proc])
        active = time.monotonic() - started
    finally:
        stop(proc)
    text = log.read_text()
    configured = re.search(r"Configured in ([\d.]+) s: \S+ loaded in ([\d.]+) s", text)
    return {"start": label, "to_active_s": round(active, 1), "configure_s": float(configured.group(1)),
            "load_s": float(configured.group(2)), "converted": set(converted.rglob("*.safetensors")) != before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="small: the tests' fixture (a few MB); full: CLIPSeg's real size (~600 MB)")
    parser.add_argument("--backend", default="torch", help="the node's backend (auto adds the ONNX export)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, snapshot = write_clipseg_repo(tmp / "hf", config=FULL_SIZE if args.size == "full" else None)
        size_mb = sum(f.stat().st_size for f in snapshot.iterdir()) / 1e6
        os.environ.update({"HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
                           "SYNSEG_MODEL_CACHE": str(tmp / "converted"), "SYNSEG_ENGINE_CACHE": str(tmp / "engines")})
        rows = [start_once(label, tmp / f"{label}.log", args.backend, tmp / "converted")
                for label in ("first", "second")]
    print(f"clipseg-rd64-refined fixture ({args.size}, {size_mb:.0f} MB in the HF cache), backend {args.backend}, "
          f"CPU, {os.cpu_count()} cores")
    print("| start | process start -> Active (s) | configure (s) | model load (s) | converted |")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print(f"| {row['start']} | {row['to_active_s']} | {row['configure_s']} | {row['load_s']} | "
              f"{'yes' if row['converted'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
