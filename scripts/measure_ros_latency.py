#!/usr/bin/env python3
"""Measure the synseg node at 640x480: end-to-end latency and the node's own overhead.

Publishes N camera frames at a fixed rate to a synseg node in another process and records, per frame, the
time from the image stamp to the masks message arriving here; the node's /diagnostics add its own figures
(stamp -> masks published, and the median of each stage: receive = transport + deserialisation, decode,
model, publish = masks/label image/overlay built and published).

    source install/local_setup.bash     # after `make setup`: the message and its libraries
    scripts/sandbox .venv/bin/python scripts/measure_ros_latency.py --model default   # the offline model
    scripts/sandbox .venv/bin/python scripts/measure_ros_latency.py --model none      # node overhead only

Both processes use config/fastdds_loopback.xml (16 MB shared-memory segment) unless
FASTDDS_DEFAULT_PROFILES_FILE names another profile.

--model none runs the node with a stand-in that returns precomputed activation maps instantly, so every
millisecond left is the node's: conversion, thresholding, message building and DDS.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the checkout's synseg_ros, not the install space's copy
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_loopback.xml"))

STARTUP_TIMEOUT_S = 120.0


class InstantSegmenter:
    """Returns fixed activation maps at once: what remains of the latency is the node's own work."""

    backend_name = "none"
    device = "cpu"

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.threshold = settings["threshold"]
        self._labels: list[str] = []
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}

    def set_vocabulary(self, labels: list[str], templates: list[str] | None = None) -> None:
        self._labels = list(labels)

    def segment(self, rgb: np.ndarray) -> SimpleNamespace:
        labels = self._labels
        key = (len(labels), *rgb.shape[:2])
        if key not in self._cache:
            ramp = np.linspace(0.0, 1.0, rgb.shape[1], dtype=np.float32)[None, None, :]
            self._cache[key] = np.broadcast_to(ramp, key).copy()
        probs = self._cache[key]
        return SimpleNamespace(labels=labels, probabilities=probs, scores=probs.reshape(len(labels), -1).max(1))


def serve(ros_args: Sequence[str]) -> int:
    """Run the node with the instant stand-in (the child process of --model none)."""
    from synseg_ros.node import main as node_main

    return node_main(list(ros_args), segmenter_factory=InstantSegmenter)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from synseg_ros.msg import SegmentationMasks

    from synseg_ros import conversions

    vocabulary = "[" + ", ".join(args.vocabulary.split(",")) + "]"
    ros_args = ["--ros-args", "-r", "image:=/bench/image_raw", "-p", f"vocabulary:={vocabulary}",
                "-p", f"publish_overlay:={str(args.overlay).lower()}", "-p", "diagnostics_period:=0.5"]
    if args.model == "none":
        command = [sys.executable, str(Path(__file__).resolve()), "--serve", *ros_args]
    else:
        command = [sys.executable, "-m", "synseg_ros.node", *ros_args]
        if args.checkpoint:
            command += ["-p", f"checkpoint:={args.checkpoint}"]
    node_log = open(args.log, "wb")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=node_log, stderr=subprocess.STDOUT, start_new_session=True)
    arrivals: dict[tuple[int, int], float] = {}
    diagnostics: list[dict[str, str]] = []
    rclpy.init()
    probe = rclpy.create_node("latency_probe")
    probe.create_subscription(SegmentationMasks, "/synseg/masks",
                              lambda m: arrivals.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                                            time.time()), 50)
    if args.overlay:
        probe.create_subscription(Image, "/synseg/overlay", lambda m: None, 5)
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status if s.name == "/synseg: segmentation"), 10)
    pub = probe.create_publisher(Image, "/bench/image_raw", qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while pub.get_subscription_count() == 0 or probe.count_publishers("/synseg/masks") == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start; see {args.log}")
            time.sleep(0.05)
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
        sent: dict[tuple[int, int], float] = {}
        start = time.monotonic()
        for i in range(args.warmup + args.frames):
            msg = Image(**conversions.rgb_to_image_fields(frame, "rgb8"))
            msg.header.stamp = probe.get_clock().now().to_msg()
            if i >= args.warmup:
                sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.time()
            pub.publish(msg)
            time.sleep(max(0.0, start + (i + 1) / args.rate - time.monotonic()))
        time.sleep(1.0)     # let the last frames and a diagnostics message arrive
        seen = len(diagnostics)
        deadline = time.monotonic() + 5.0
        while len(diagnostics) == seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(10)
    latency = np.array([arrivals[k] - t for k, t in sent.items() if k in arrivals]) * 1e3
    node = diagnostics[-1] if diagnostics else {}
    return {"model": args.model, "size": f"{args.width}x{args.height}", "rate_hz": args.rate,
            "labels": len(args.vocabulary.split(",")), "frames_sent": len(sent), "frames_answered": int(latency.size),
            "e2e_latency_ms_p50": round(float(np.percentile(latency, 50)), 2) if latency.size else None,
            "e2e_latency_ms_p95": round(float(np.percentile(latency, 95)), 2) if latency.size else None,
            "node": {k: v for k, v in node.items() if k.endswith("_ms") or k in ("dropped", "backend", "device")}}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("default", "none"), default="default",
                        help="default: the real Segmenter (offline model or --checkpoint); none: instant stand-in")
    parser.add_argument("--checkpoint", default="", help="checkpoint for --model default (empty: offline model)")
    parser.add_argument("--vocabulary", default="circle,square,triangle,star,cross,ring,grass,water,sand,brick,wood",
                        help="comma-separated labels")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second sent")
    parser.add_argument("--frames", type=int, default=60, help="frames measured")
    parser.add_argument("--warmup", type=int, default=10, help="frames sent first and not measured")
    parser.add_argument("--overlay", action="store_true", help="also subscribe to (and so build) the overlay")
    parser.add_argument("--log", type=Path, default=Path("/tmp/synseg_latency_node.log"), help="node output")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--serve":
        return serve(argv[1:])
    args = get_args_parser().parse_args(argv)
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
