#!/usr/bin/env python3
"""segment_bag's frame rate against Segmenter.segment's on the same frames (a benchmark, not a test).

Writes a bag of N shapes-world scenes resized to 640x480 (rgb8, sqlite3 or MCAP), loads the node's model once
(the offline default model unless --checkpoint; its 11 classes as the vocabulary), then alternates: the frames
through ``Segmenter.segment`` alone (the images already decoded in memory), and the bag through segment_bag
(read, decode, segment, masks, detections, serialise, write, copy). Each rate is the median of --repeats runs.

    .venv/bin/python scripts/measure_bag_rate.py --frames 60 --storage sqlite3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synseg_ros import conversions, segment_bag  # noqa: E402
from synseg_ros.segmenter import load_segmenter  # noqa: E402

TOPIC = "/camera/image_raw"


def scenes(count: int, width: int, height: int) -> list[np.ndarray]:
    """Held-out shapes-world scenes (seed 1), resized to the camera size."""
    from training.shapes.generate import val_scene
    from training.shapes.world import load_world

    world = load_world()
    return [cv2.resize(val_scene(world, 1, i)[0].image, (width, height), interpolation=cv2.INTER_LINEAR)
            for i in range(count)]


def write_bag(path: Path, frames: list[np.ndarray], storage: str) -> None:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    with Writer(path, version=segment_bag.BAG_VERSION, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        connection = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
        for i, rgb in enumerate(frames):
            t = 1_700_000_000 * 10**9 + i * 100_000_000
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
            fields = conversions.rgb_to_image_fields(rgb, "rgb8")
            msg = types["sensor_msgs/msg/Image"](header=header, **{**fields, "data": np.frombuffer(fields["data"],
                                                                                                   np.uint8)})
            writer.write(connection, t, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", default="", help="the node's checkpoint parameter (empty: the default)")
    args = parser.parse_args(argv)

    frames = scenes(args.frames, args.width, args.height)
    settings = {**segment_bag.resolve_settings(segment_bag.get_args_parser().parse_args(
        ["in", "out", "--topic", TOPIC, "-p", f"checkpoint:={args.checkpoint}"]))}
    model = load_segmenter(settings)
    vocabulary = list(model.model_card.get("classes") or [])
    model.set_vocabulary(vocabulary)
    for rgb in frames[:3]:
        model.segment(rgb)                                      # warm-up
    direct, through_bag = [], []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in"
        write_bag(source, frames, args.storage)
        for repeat in range(args.repeats):
            started = time.perf_counter()
            for rgb in frames:
                model.segment(rgb)
            direct.append(len(frames) / (time.perf_counter() - started))
            bag_args = segment_bag.get_args_parser().parse_args(
                [str(source), str(Path(tmp) / f"out{repeat}"), "--topic", TOPIC, "--quiet", "-p",
                 f"checkpoint:={args.checkpoint}"])
            summary = segment_bag.segment(bag_args, lambda _settings: model)
            through_bag.append(summary.frames / summary.seconds)
    result = {"frames": len(frames), "size": f"{args.width}x{args.height}", "labels": len(vocabulary),
              "storage": args.storage, "backend": model.backend_name, "device": str(model.device),
              "segment_fps": [round(v, 2) for v in direct], "segment_bag_fps": [round(v, 2) for v in through_bag],
              "segment_fps_median": round(statistics.median(direct), 2),
              "segment_bag_fps_median": round(statistics.median(through_bag), 2),
              "ratio": round(statistics.median(through_bag) / statistics.median(direct), 3)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
