#!/usr/bin/env python3
"""Measure the synseg node at 640x480: end-to-end latency and the node's own overhead.

Publishes N camera frames at a fixed rate to a synseg node in another process and records, per frame, the
time from the image stamp to the masks message arriving here; the node's /diagnostics add its own figures
(stamp -> masks published, and the median of each stage: receive = transport + deserialisation, decode,
model, publish = masks/label image/overlay built and published; overhead = stamp -> published less the
model, per frame: the node's own cost).

    source install/local_setup.bash     # after `make setup`: the message and its libraries
    scripts/sandbox .venv/bin/python scripts/measure_ros_latency.py --model default   # the offline model
    scripts/sandbox .venv/bin/python scripts/measure_ros_latency.py --model none      # node overhead only
    ... --model none --frame scene --outputs 3d     # + detections, 3-D and points (needs vision_msgs)

Both processes use config/fastdds_loopback.xml (16 MB shared-memory segment) unless
FASTDDS_DEFAULT_PROFILES_FILE names another profile.

--model none runs the node on the fake segmenter (synseg_ros.fake_node: each label's map is a colour
channel), whose time is the model stage; the overhead figure leaves it out.

--outputs detections also subscribes to /synseg/detections; --outputs 3d runs the node with use_depth and
publishes, with every frame, a 16UC1 depth image and its camera info (the tests' synthetic RGB-D scene,
tests/depth_scene.py, which --frame scene sends as the colour frame too), and subscribes to
/synseg/detections_3d and /synseg/points as well. The detections are built in the node's publish stage: compare
its p50 with that of --outputs masks on the same frames.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the checkout's synseg_ros
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_loopback.xml"))

from synseg_ros.processes import start_module, stop, wait_until  # noqa: E402 - after the path above

STARTUP_TIMEOUT_S = 120.0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from synseg_ros import conversions
    from synseg_ros.msg import SegmentationMasks
    from tests import depth_scene

    if args.outputs != "masks":      # before the node starts: a missing package must not leave it running
        from sensor_msgs.msg import PointCloud2
        from vision_msgs.msg import Detection2DArray, Detection3DArray

    vocabulary = "[" + ", ".join(args.vocabulary.split(",")) + "]"
    ros_args = ["--ros-args", "-r", "image:=/bench/image_raw", "-p", "autostart:=true",
                "-p", f"vocabulary:={vocabulary}", "-p", f"publish_overlay:={str(args.overlay).lower()}",
                "-p", "diagnostics_period:=0.5"]
    if args.checkpoint:
        ros_args += ["-p", f"checkpoint:={args.checkpoint}"]
    ros_args += [item for value in args.param for item in ("-p", value)]
    if args.outputs == "3d":
        ros_args += ["-p", "use_depth:=true", "-r", "depth:=/bench/depth", "-r", "camera_info:=/bench/camera_info"]
    module = "synseg_ros.fake_node" if args.model == "none" else "synseg_ros.node"
    proc = start_module(module, ros_args, args.log, cwd=ROOT)
    arrivals: dict[tuple[int, int], float] = {}
    diagnostics: list[dict[str, str]] = []
    rclpy.init()
    probe = rclpy.create_node("latency_probe")
    probe.create_subscription(SegmentationMasks, "/synseg/masks",
                              lambda m: arrivals.setdefault((m.header.stamp.sec, m.header.stamp.nanosec),
                                                            time.time()), 50)
    if args.overlay:
        probe.create_subscription(Image, "/synseg/overlay", lambda m: None, 5)
    if args.outputs != "masks":      # subscribed, so the node builds them
        probe.create_subscription(Detection2DArray, "/synseg/detections", lambda m: None, 5)
    if args.outputs == "3d":
        probe.create_subscription(Detection3DArray, "/synseg/detections_3d", lambda m: None, 5)
        probe.create_subscription(PointCloud2, "/synseg/points", lambda m: None, 5)
        depth_pub = probe.create_publisher(Image, "/bench/depth", qos_profile_sensor_data)
        info_pub = probe.create_publisher(CameraInfo, "/bench/camera_info", qos_profile_sensor_data)
    probe.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.extend(
        {kv.key: kv.value for kv in s.values} for s in m.status if s.name == "/synseg: segmentation"), 10)
    pub = probe.create_publisher(Image, "/bench/image_raw", qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        wait_until(lambda: pub.get_subscription_count() and probe.count_publishers("/synseg/masks"),
                   STARTUP_TIMEOUT_S, f"the node (log: {args.log})", procs=[proc])
        if args.frame == "scene":
            frame = depth_scene.colour()
        else:
            frame = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
        sent: dict[tuple[int, int], float] = {}
        start = time.monotonic()
        for i in range(args.warmup + args.frames):
            msg = Image(**conversions.rgb_to_image_fields(frame, "rgb8"))
            msg.header.stamp = probe.get_clock().now().to_msg()
            if args.outputs == "3d":
                depth = Image(**depth_scene.depth_fields("16UC1"))
                depth.header = msg.header
                info = CameraInfo(header=msg.header, height=frame.shape[0], width=frame.shape[1],
                                  k=depth_scene.camera_matrix(), distortion_model="plumb_bob")
                depth_pub.publish(depth)
                info_pub.publish(info)
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
        stop(proc)
    latency = np.array([arrivals[k] - t for k, t in sent.items() if k in arrivals]) * 1e3
    node = diagnostics[-1] if diagnostics else {}
    return {"model": args.model, "outputs": args.outputs, "frame": args.frame, "params": args.param,
            "size": f"{frame.shape[1]}x{frame.shape[0]}", "rate_hz": args.rate,
            "labels": len(args.vocabulary.split(",")), "frames_sent": len(sent), "frames_answered": int(latency.size),
            "e2e_latency_ms_p50": round(float(np.percentile(latency, 50)), 2) if latency.size else None,
            "e2e_latency_ms_p95": round(float(np.percentile(latency, 95)), 2) if latency.size else None,
            "node": {k: v for k, v in node.items() if k.endswith("_ms") or k in ("dropped", "backend", "device")}}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("default", "none"), default="default",
                        help="default: the real Segmenter (offline model or --checkpoint); none: the fake segmenter")
    parser.add_argument("--checkpoint", default="", help="checkpoint for --model default (empty: offline model)")
    parser.add_argument("--vocabulary", default="circle,square,triangle,star,cross,ring,grass,water,sand,brick,wood",
                        help="comma-separated labels")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--rate", type=float, default=5.0, help="frames per second sent")
    parser.add_argument("--frames", type=int, default=60, help="frames measured")
    parser.add_argument("--warmup", type=int, default=10, help="frames sent first and not measured")
    parser.add_argument("--overlay", action="store_true", help="also subscribe to (and so build) the overlay")
    parser.add_argument("--outputs", choices=("masks", "detections", "3d"), default="masks",
                        help="masks: the masks message only; detections: + ~/detections; 3d: + depth in, "
                             "~/detections_3d and ~/points")
    parser.add_argument("--frame", choices=("random", "scene"), default="random",
                        help="random: noise of --width x --height; scene: the synthetic RGB-D scene (640x480)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="another node parameter, e.g. point_decimation:=4 (repeatable)")
    parser.add_argument("--log", type=Path, default=Path("/tmp/synseg_latency_node.log"), help="node output")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    result = measure(args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
