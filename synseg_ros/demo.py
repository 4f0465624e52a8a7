"""`make demo`: the synseg node on the offline default model, fed by a camera stand-in, recorded.

    python -m synseg_ros.demo --scenes demo_out/scenes --out demo_out

Starts the node and an image-folder publisher as separate processes, changes the vocabulary half-way through
the node's parameter service (rcl_interfaces/srv/SetParameters, what `ros2 param set` calls), records
/synseg/masks and /synseg/overlay, and writes overlay PNGs plus a summary (frames, FPS, latency, mask area per
label) to --out. Run it under the network rule (scripts/sandbox), as `make demo` does.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image
from tqdm import tqdm

from synseg_ros import conversions
from synseg_ros.interfaces import SegmentationMasks
from synseg_ros.processes import check_alive, start_module, stop, wait_until

log = logging.getLogger(__name__)
CAMERA_NAMESPACE = "/camera"
NODE_NAME = "/synseg"
LOG_TAIL_LINES = 20


@dataclass
class Phase:
    """What was recorded while one vocabulary was in force."""

    vocabulary: list[str]
    frames: int = 0
    area: dict[str, float] = field(default_factory=lambda: defaultdict(float))     # summed mask fractions
    score: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    overlays: int = 0
    first_arrival: float = 0.0       # time.monotonic() of its first masks message


class Recorder(Node):
    """Subscribes to the camera and the node's outputs and keeps what the summary needs."""

    def __init__(self, out: Path, overlays_per_phase: int, overlay_every: int) -> None:
        super().__init__("synseg_demo")
        self.out = out
        self.overlays_per_phase = overlays_per_phase
        self.overlay_every = overlay_every
        self.lock = threading.Lock()
        self.camera_frames = 0
        self.latencies: list[float] = []
        self.arrivals: list[float] = []
        self.phases: dict[tuple[str, ...], Phase] = {}
        self.diagnostics: dict[str, str] = {}
        self._overlays_seen: dict[tuple[str, ...], int] = defaultdict(int)
        self._labels_by_stamp: dict[tuple[int, int], tuple[str, ...]] = {}
        self.create_subscription(Image, f"{CAMERA_NAMESPACE}/image_raw", self._on_camera, qos_profile_sensor_data)
        self.create_subscription(SegmentationMasks, f"{NODE_NAME}/masks", self._on_masks, 10)
        self.create_subscription(Image, f"{NODE_NAME}/overlay", self._on_overlay, 10)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.set_client = self.create_client(SetParameters, f"{NODE_NAME}/set_parameters")

    def reset(self) -> None:
        """Forget what was recorded so far (the start-up frames)."""
        with self.lock:
            self.camera_frames = 0
            self.latencies.clear()
            self.phases.clear()

    def _on_camera(self, msg: Image) -> None:
        with self.lock:
            self.camera_frames += 1

    def _on_masks(self, msg: SegmentationMasks) -> None:
        arrived = self.get_clock().now()
        latency = (arrived - Time.from_msg(msg.header.stamp)).nanoseconds * 1e-9
        labels = tuple(msg.labels)
        with self.lock:
            self.latencies.append(latency)
            self.arrivals.append(time.monotonic())
            phase = self.phases.setdefault(labels, Phase(list(labels), first_arrival=time.monotonic()))
            phase.frames += 1
            for label, mask, score in zip(labels, msg.masks, msg.scores):
                phase.area[label] += np.count_nonzero(np.frombuffer(bytes(mask.data), np.uint8)) / max(
                    1, mask.width * mask.height)
                phase.score[label] += float(score)
            self._labels_by_stamp[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = labels

    def _on_overlay(self, msg: Image) -> None:
        with self.lock:
            labels = self._labels_by_stamp.get((msg.header.stamp.sec, msg.header.stamp.nanosec))
            phase = self.phases.get(labels) if labels else None
            if phase is None or phase.overlays >= self.overlays_per_phase:
                return
            self._overlays_seen[labels] += 1
            if (self._overlays_seen[labels] - 1) % self.overlay_every:
                return
            phase.overlays += 1
            index = sum(p.overlays for p in self.phases.values())
        rgb = conversions.image_to_rgb(msg)
        name = f"overlay_{index:03d}_vocabulary{list(self.phases).index(labels) + 1}.png"
        cv2.imwrite(str(self.out / "overlays" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == f"{NODE_NAME}: segmentation":
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}


def find_images(scenes: Path) -> tuple[Path, list[str]]:
    """The image folder and class names of a generated scene set (VOC layout under val/) or a plain folder."""
    for root in (scenes / "val", scenes):
        if (root / "JPEGImages").is_dir():
            classes = root / "classes.txt"
            names = classes.read_text().split("\n") if classes.exists() else []
            return root / "JPEGImages", [n.strip() for n in names if n.strip()]
    if scenes.is_dir():
        return scenes, []
    raise ValueError(f"{scenes}: no JPEGImages/ folder of scenes (run `make demo`, which generates them)")


def yaml_list(labels: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(label) for label in labels) + "]"


def set_vocabulary(recorder: Recorder, labels: list[str], timeout: float) -> tuple[bool, str]:
    """Change the node's vocabulary through its SetParameters service; (accepted, reason)."""
    request = SetParameters.Request(parameters=[Parameter("vocabulary", value=labels).to_parameter_msg()])
    future = recorder.set_client.call_async(request)
    wait_until(future.done, timeout, "the SetParameters reply")
    result = future.result().results[0]
    return result.successful, result.reason


def summarize(recorder: Recorder, elapsed: float, switch: dict[str, Any]) -> dict[str, Any]:
    """The demo's figures: frames, FPS, latency, and per phase the mean mask area and score of each label."""
    with recorder.lock:
        latencies = np.array(recorder.latencies) * 1e3
        phases = [{"vocabulary": p.vocabulary, "frames": p.frames, "overlays_saved": p.overlays,
                   "mean_mask_area_percent": {k: round(100 * v / max(1, p.frames), 2) for k, v in p.area.items()},
                   "mean_score": {k: round(v / max(1, p.frames), 3) for k, v in p.score.items()}}
                  for p in recorder.phases.values()]
        return {"camera_frames_seen": recorder.camera_frames, "frames_segmented": sum(p["frames"] for p in phases),
                "seconds": round(elapsed, 2),
                "fps": round(sum(p["frames"] for p in phases) / elapsed, 2) if elapsed else 0.0,
                "latency_ms_p50": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
                "latency_ms_p95": round(float(np.percentile(latencies, 95)), 1) if latencies.size else None,
                "vocabulary_change": switch, "phases": phases, "node_diagnostics": dict(recorder.diagnostics)}


# What the demo reports of the model card's robot figures (training.shapes.robot, on the shapes test split).
CARD_ROBOT_FIGURES = ("iou_seen", "iou_unseen", "area_ratio_seen", "area_ratio_unseen", "worst_absent_rate_seen",
                      "worst_absent_rate_unseen", "caption_recall", "worst_word_rate", "frame_largest")


def card_figures(checkpoint: str) -> dict[str, Any]:
    """The mask rule and the test-split robot figures a local model file's card records ({} when it has none,
    or the checkpoint is a name the demo does not resolve)."""
    from synseg_model.pretrained import default_checkpoint_path
    from synseg_model.weights import read_checkpoint

    path = Path(checkpoint) if checkpoint else default_checkpoint_path()
    if not path.is_file():
        return {}
    card = read_checkpoint(path, tensors=False)[1]
    test = card.get("robot_metrics", {}).get("test", {})
    return {"mask_rule": card.get("mask_rule"), "robot_test": {k: test[k] for k in CARD_ROBOT_FIGURES if k in test}}


def _describe_card(figures: dict[str, Any]) -> list[str]:
    if not figures.get("robot_test"):
        return []
    rule, f = figures["mask_rule"] or {}, figures["robot_test"]

    def num(key: str) -> str:
        return "n/a" if f.get(key) is None else f"{f[key]:.1f}"

    return [f"- model card, what a robot receives on its test split under its mask rule (threshold "
            f"{rule.get('threshold')}, presence {rule.get('presence_threshold')}): node IoU seen / unseen "
            f"{num('iou_seen')} / {num('iou_unseen')}, area ratio {num('area_ratio_seen')} / "
            f"{num('area_ratio_unseen')}, absent classes masked (worst, seen / unseen) "
            f"{num('worst_absent_rate_seen')}% / {num('worst_absent_rate_unseen')}%, caption recall "
            f"{num('caption_recall')}%, words outside the world (worst) {num('worst_word_rate')}%, largest mask on "
            f"a frame outside it {num('frame_largest')}%"]


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# SynSeg ROS 2 demo", "",
             *_describe_card(summary.get("model", {})),
             f"- frames segmented: {summary['frames_segmented']} of {summary['camera_frames_seen']} camera frames "
             f"in {summary['seconds']} s ({summary['fps']} FPS)",
             f"- latency, image stamp to masks received: p50 {summary['latency_ms_p50']} ms, "
             f"p95 {summary['latency_ms_p95']} ms",
             f"- vocabulary change: {_describe_switch(summary['vocabulary_change'])}", ""]
    for phase in summary["phases"]:
        lines += [f"## vocabulary {phase['vocabulary']} ({phase['frames']} frames)", "",
                  "| label | mean mask area (%) | mean presence score |", "| --- | ---: | ---: |"]
        lines += [f"| {label} | {area} | {phase['mean_score'][label]} |"
                  for label, area in phase["mean_mask_area_percent"].items()]
        lines.append("")
    return "\n".join(lines)


def _describe_switch(switch: dict[str, Any]) -> str:
    if "accepted" not in switch:
        return "not reached"
    if not switch["accepted"]:
        return f"to {switch['to']} at {switch['at_s']} s rejected: {switch['reason']}"
    later = switch.get("first_new_masks_after_s")
    seen = f"first masks with the new labels {later} s later" if later is not None else "no masks with them yet"
    return f"to {switch['to']} at {switch['at_s']} s through SetParameters: accepted, {seen}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=Path, default=Path("demo_out/scenes"),
                        help="generated scenes (python -m training.shapes generate --out DIR) or an image folder")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="where overlays and the summary go")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of segmentation to record")
    parser.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    parser.add_argument("--size", type=int, default=384, help="published frame side in pixels (0: as stored)")
    parser.add_argument("--vocabulary", default=None,
                        help="comma-separated labels at the start (default: the scenes' classes.txt)")
    parser.add_argument("--vocabulary-after", default="circle,triangle,star,water,grass",
                        help="comma-separated labels set through the parameter service half-way")
    parser.add_argument("--checkpoint", default="", help="model checkpoint; empty: the offline default model")
    parser.add_argument("--overlays-per-phase", type=int, default=6, help="overlay PNGs saved per vocabulary")
    parser.add_argument("--startup-timeout", type=float, default=120.0,
                        help="seconds to wait for the node to load its model and answer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (RuntimeError, ValueError, TimeoutError) as exc:   # processes.ProcessExited is a RuntimeError
        log.error("demo failed: %s", exc)
        node_log = args.out / "node.log"
        if node_log.exists():
            print("".join(node_log.read_text(errors="replace").splitlines(keepends=True)[-LOG_TAIL_LINES:]),
                  file=sys.stderr)
        return 1
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    log.info("overlays and summary written to %s", args.out)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the processes, record, change the vocabulary half-way; returns the summary."""
    folder, classes = find_images(args.scenes)
    before = [s.strip() for s in args.vocabulary.split(",")] if args.vocabulary else classes
    after = [s.strip() for s in args.vocabulary_after.split(",") if s.strip()]
    if not before:
        raise RuntimeError("no starting vocabulary: give --vocabulary (the scene folder has no classes.txt)")
    (args.out / "overlays").mkdir(parents=True, exist_ok=True)
    for old in (args.out / "overlays").glob("*.png"):
        old.unlink()

    node_proc = start_module("synseg_ros.node", ["--ros-args", "-r", f"image:={CAMERA_NAMESPACE}/image_raw",
                                                 "-p", "autostart:=true", "-p", f"vocabulary:={yaml_list(before)}",
                                                 "-p", f"checkpoint:={json.dumps(args.checkpoint)}"],
                             args.out / "node.log")
    camera_proc = start_module("synseg_ros.image_folder_publisher",
                               ["--ros-args", "-r", f"__ns:={CAMERA_NAMESPACE}", "-p", f"folder:={folder.resolve()}",
                                "-p", f"rate_hz:={args.rate}", "-p", f"width:={args.size}",
                                "-p", f"height:={args.size}"],
                               args.out / "camera.log")
    procs = (node_proc, camera_proc)
    rclpy.init()    # not `with rclpy.init()`: Jazzy's init returns None
    try:
        # One overlay in every (duration * rate / 2 / overlays) per phase spreads the saved PNGs over the run.
        every = max(1, int(args.duration * args.rate / 2 / max(1, args.overlays_per_phase)))
        recorder = Recorder(args.out, args.overlays_per_phase, every)
        executor = SingleThreadedExecutor()
        executor.add_node(recorder)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            log.info("waiting for the node to load its model (logs: %s)", args.out / "node.log")
            wait_until(lambda: recorder.set_client.service_is_ready(), args.startup_timeout, "the synseg node", procs)
            wait_until(lambda: recorder.arrivals, args.startup_timeout, "the first masks", procs)
            start_time = time.monotonic()
            recorder.reset()                    # count only what happens while recording
            switch: dict[str, Any] = {"to": after}
            with tqdm(total=int(args.duration), desc="recording", unit="s") as bar:
                while (elapsed := time.monotonic() - start_time) < args.duration:
                    if "accepted" not in switch and elapsed >= args.duration / 2:
                        requested = time.monotonic()
                        switch["accepted"], switch["reason"] = set_vocabulary(recorder, after, args.startup_timeout)
                        switch["at_s"] = round(requested - start_time, 2)
                        log.info("vocabulary -> %s: %s", after, "accepted" if switch["accepted"] else switch["reason"])
                    check_alive(procs)
                    if int(elapsed) > bar.n:
                        bar.update(int(elapsed) - bar.n)
                    time.sleep(0.1)
            new_phase = recorder.phases.get(tuple(after))
            if new_phase is not None and "at_s" in switch:
                # From the SetParameters request to the first masks message carrying the new labels.
                switch["first_new_masks_after_s"] = round(new_phase.first_arrival - start_time - switch["at_s"], 3)
            summary = {**summarize(recorder, time.monotonic() - start_time, switch),
                       "model": card_figures(args.checkpoint)}
        finally:
            executor.shutdown()
            recorder.destroy_node()
    finally:
        rclpy.try_shutdown()
        for proc in procs:
            stop(proc)
    return summary


if __name__ == "__main__":
    sys.exit(main())
