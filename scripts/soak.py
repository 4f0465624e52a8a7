#!/usr/bin/env python3
"""Endurance run of the synseg node: a camera at 30 Hz for N minutes while everything a robot does to it happens.

    export LD_LIBRARY_PATH=$PWD/install/synseg_ros/lib:$PWD/build/ros2cli/install/vision_msgs/lib   # make setup's
    scripts/sandbox .venv/bin/python scripts/soak.py --minutes 60            # the README's table
    scripts/sandbox .venv/bin/python scripts/soak.py --minutes 2 --row-seconds 10 --json soak.json

The node runs on the offline default model (or --checkpoint) in its own process, autostarted. This process is
the camera (640x480 rgb8 noise at --rate Hz, best effort; 1% of the frames malformed, 1% of another size) and
the operator: it sets a new vocabulary every 2 s, deactivates and activates the node every 30 s, and cleans it
up and configures it again every 5 minutes. Every row (a minute by default) prints the frames sent, what the
node says it received, processed, dropped by design (a newer frame came), lost in the middleware and rejected,
the masks messages that
arrived here, the node's resident memory and its anonymous part (what the node allocated, as against the
pages of its files and libraries), open file descriptors and threads, and the latency from a frame's stamp
to its masks arriving here (p50, p99).

At the end it checks the goals and exits 1 if one is missed: the node never crashed and logged no error; its
resident memory and its anonymous memory (each the median of the rows of a window: 10 minutes, or a quarter of
a shorter run) grew by at most 20 MB from the window after the settling time (the first 5 minutes, or the first
half of a shorter run) to the last window; descriptors and threads stayed within 2 of their value after the
settling time; and the p99 latency of the last window is within 20% of the first window's. --every shortens the
operator's cycles for a short run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The checkout's synseg_ros, and the messages that `make setup` built (this package's, vision_msgs for the
# detections), here and in the node's process.
PYTHON_DIRS = [str(ROOT), *sorted(str(p) for base in (ROOT / "install" / "synseg_ros",
                                                      ROOT / "build" / "ros2cli" / "install" / "vision_msgs")
                                  for p in base.glob("lib/python3*/site-packages"))]
sys.path[:0] = PYTHON_DIRS
os.environ["PYTHONPATH"] = os.pathsep.join(PYTHON_DIRS + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

from synseg_ros.middleware import profile_variable  # noqa: E402 - after the path above
from synseg_ros.processes import start, start_module, stop, wait_until  # noqa: E402

os.environ.setdefault(profile_variable(), str(ROOT / "config" / "fastdds_loopback.xml"))

STARTUP_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 30.0
VOCABULARIES = (["circle", "square", "triangle"], ["star", "ring", "water", "grass"], ["cross", "wood", "sand"],
                ["circle", "brick", "water", "square", "star"])
MEMORY_GROWTH_MB = 20.0
FLAT_TOLERANCE = 2
P99_TOLERANCE = 0.20
ERROR_MARKS = ("[ERROR]", "[FATAL]", "Traceback")


@dataclass
class Row:
    minute: float
    sent: int
    received: int
    processed: int
    dropped: int
    lost: int
    rejected: int
    masks: int
    rss_mb: float
    anon_mb: float
    fds: int
    threads: int
    p50_ms: float
    p99_ms: float
    errors: int


def process_figures(pid: int) -> tuple[float, float, int, int]:
    """Resident memory and its anonymous part (MB), open file descriptors and threads of process ``pid``.

    The anonymous part is what the process allocated (heap, arenas, buffers): a leak grows it, while the pages
    of its libraries (about 390 MB for the node, flat over the hours measured) do not.
    """
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_mb, anon_mb = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon"))
    return rss_mb, anon_mb, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if any(m in line for m in ERROR_MARKS)]


class Operator:
    """The camera and the operator of one soak run, in this process's own ROS node."""

    def __init__(self, rate: float) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from lifecycle_msgs.srv import ChangeState
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import qos_profile_sensor_data
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image

        from synseg_ros.executor import NodeExecutor
        from synseg_ros.msg import SegmentationMasks

        # rclpy's handlers would shut the context under the camera's thread at Ctrl-C; here it is an interrupt
        # of the main thread, which stops the threads and the node in order.
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("soak_operator")
        self.rate = rate
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.masks = 0
        self.sent = 0
        self.counters: dict[str, str] = {}
        self.failures: list[str] = []
        self.closed = False
        self.image_pub = self.node.create_publisher(Image, "/soak/image_raw", qos_profile_sensor_data)
        self.node.create_subscription(SegmentationMasks, "/synseg/masks", self._on_masks, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.set_client = self.node.create_client(SetParameters, "/synseg/set_parameters")
        self.state_client = self.node.create_client(ChangeState, "/synseg/change_state")
        self.executor = NodeExecutor(num_threads=2)     # rclpy's own spins a core away (synseg_ros.executor)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        rng = np.random.default_rng(0)
        self.frames = [self._image(rng.integers(0, 256, (480, 640, 3), np.uint8)) for _ in range(4)]
        self.other_size = self._image(rng.integers(0, 256, (240, 320, 3), np.uint8))
        self.malformed = self._image(rng.integers(0, 256, (480, 640, 3), np.uint8))
        self.malformed.step -= 1                       # a row length that does not match the width

    def _image(self, rgb: np.ndarray) -> Any:
        from sensor_msgs.msg import Image

        from synseg_ros import conversions
        return Image(**conversions.rgb_to_image_fields(rgb, "rgb8"))

    def _on_masks(self, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.masks += 1
            self.latencies.append(time.time() - stamp)

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name == "/synseg: segmentation":
                with self.lock:
                    self.counters = {kv.key: kv.value for kv in status.values}

    def take(self) -> tuple[int, int, list[float], dict[str, str]]:
        """Frames sent, masks received, their latencies (s) since the last call, and the node's counters."""
        with self.lock:
            latencies, self.latencies = self.latencies, []
            return self.sent, self.masks, latencies, dict(self.counters)

    def camera(self, stop_at: float) -> None:
        """Publish until ``stop_at`` (monotonic) at ``rate``: 1% malformed frames, 1% of another size."""
        start, i = time.monotonic(), 0
        while time.monotonic() < stop_at and not self.closed:
            msg = self.malformed if i % 100 == 50 else self.other_size if i % 100 == 99 else self.frames[i % 4]
            msg.header.stamp = self.node.get_clock().now().to_msg()
            self.image_pub.publish(msg)
            with self.lock:
                self.sent += 1
            i += 1
            time.sleep(max(0.0, start + i / self.rate - time.monotonic()))

    def _call(self, client: Any, request: Any, what: str) -> None:
        future = client.call_async(request)
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        result = future.result() if future.done() else None
        ok = result is not None and (result.success if hasattr(result, "success")       # ChangeState
                                     else all(r.successful for r in result.results))    # SetParameters
        if not ok:
            with self.lock:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {what}: "
                                     f"{'no answer' if result is None else result}")

    def set_vocabulary(self, labels: list[str]) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[Parameter("vocabulary", value=labels).to_parameter_msg()])
        self._call(self.set_client, request, f"vocabulary {labels}")

    def operate(self, stop_at: float, every: tuple[float, float, float]) -> None:
        """Every ``every[0]`` s a vocabulary, every ``every[1]`` s deactivate + activate, every ``every[2]`` s
        deactivate, cleanup, configure and activate, until ``stop_at`` (monotonic)."""
        vocabularies = itertools.cycle(VOCABULARIES[1:] + VOCABULARIES[:1])
        actions = (lambda: self.set_vocabulary(next(vocabularies)),
                   lambda: self.transitions("deactivate", "activate"),
                   lambda: self.transitions("deactivate", "cleanup", "configure", "activate"))
        start = time.monotonic()
        due = list(every)
        while not self.closed:
            index = min(range(len(due)), key=due.__getitem__)
            wake = start + due[index]
            if wake >= stop_at:
                return
            time.sleep(max(0.0, wake - time.monotonic()))
            try:
                actions[index]()
            except Exception as exc:      # reported with the goals, not lost in a thread
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            due[index] += every[index]

    def transitions(self, *labels: str) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        for label in labels:
            self._call(self.state_client, ChangeState.Request(transition=Transition(label=label)), label)

    def close(self) -> None:
        import rclpy
        self.closed = True
        time.sleep(0.2)                     # the camera's and the operator's next turn sees it
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def check(rows: list[Row], latencies: list[np.ndarray], minutes: float, crashed: str, errors: list[str],
          failures: list[str]) -> list[str]:
    """The goals this run missed (empty: all met); ``latencies`` (ms) are each row's."""
    missed = [crashed] if crashed else []
    missed += [f"error logged: {line}" for line in errors[:5]]
    missed += [f"operator call failed: {line}" for line in failures[:5]]
    settle, window = min(5.0, minutes / 2), min(10.0, minutes / 4)
    settled = [row for row in rows if row.minute > settle]
    for field, what in (("rss_mb", "resident"), ("anon_mb", "anonymous")):
        after = [getattr(row, field) for row in settled if row.minute <= settle + window]
        last = [getattr(row, field) for row in rows if row.minute > minutes - window]
        if after and last:
            # Medians of two windows: a row can catch a reload half-way (tens of MB for a moment); growth persists.
            growth = float(np.median(last) - np.median(after))
            if growth > MEMORY_GROWTH_MB:
                missed.append(f"memory ({what}) grew by {growth:.1f} MB from the {window:g} min after {settle:g} "
                              f"min to the last {window:g} min (medians; at most {MEMORY_GROWTH_MB:g})")
    if settled:
        for name in ("fds", "threads"):
            values = [getattr(row, name) for row in settled]
            if max(values) - min(values) > FLAT_TOLERANCE:
                missed.append(f"{name} not flat after {settle:g} min: {min(values)}..{max(values)}")
    first_ms = np.concatenate([ms for row, ms in zip(rows, latencies) if row.minute <= window] or [[np.nan]])
    last_ms = np.concatenate([ms for row, ms in zip(rows, latencies) if row.minute > minutes - window] or [[np.nan]])
    p99_first, p99_last = np.nanpercentile(first_ms, 99), np.nanpercentile(last_ms, 99)
    if not p99_last <= p99_first * (1 + P99_TOLERANCE):
        missed.append(f"p99 latency of the last {window:g} min {p99_last:.0f} ms, of the first {p99_first:.0f} ms "
                      f"(at most {P99_TOLERANCE:.0%} more)")
    if not rows or rows[-1].masks == 0:
        missed.append("no masks arrived")
    return missed


def soak(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """Run the node for ``args.minutes``; the rows printed and the goals missed."""
    ros_args = ["--ros-args", "-r", "image:=/soak/image_raw", "-p", "autostart:=true", "-p", "device:=cpu",
                "-p", f"vocabulary:=[{', '.join(VOCABULARIES[0])}]", "-p", "diagnostics_period:=1.0"]
    if args.checkpoint:
        ros_args += ["-p", f"checkpoint:={args.checkpoint}"]
    # The real node as `ros2 run` starts it: its executable sets the allocator up before any thread exists.
    node = (start_module("synseg_ros.fake_node", ros_args, args.log, cwd=ROOT) if args.fake else
            start([sys.executable, str(ROOT / "scripts" / "synseg_node"), *ros_args], args.log, cwd=ROOT))
    operator = Operator(args.rate)
    rows: list[Row] = []
    latencies: list[np.ndarray] = []
    crashed = ""
    try:
        wait_until(lambda: operator.image_pub.get_subscription_count() and operator.counters, STARTUP_TIMEOUT_S,
                   f"the node to be active (log: {args.log})", procs=[node])
        began = time.monotonic()
        stop_at = began + args.minutes * 60
        workers = [threading.Thread(target=operator.camera, args=(stop_at,), daemon=True),
                   threading.Thread(target=operator.operate, args=(stop_at, args.every), daemon=True)]
        for worker in workers:
            worker.start()
        header = (f"{'min':>5} {'sent':>7} {'recv':>7} {'proc':>6} {'drop':>6} {'lost':>5} {'rej':>5} {'masks':>6} "
                  f"{'RSS MB':>7} {'anon MB':>7} {'fds':>4} {'thr':>4} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}")
        print(header, flush=True)
        for n in range(1, int(args.minutes * 60 / args.row_seconds) + 1):
            time.sleep(max(0.0, began + n * args.row_seconds - time.monotonic()))
            if node.poll() is not None:
                crashed = f"the node exited with code {node.returncode} at {n * args.row_seconds / 60:.1f} min"
                break
            sent, masks, seconds, counters = operator.take()
            rss, anon, fds, threads = process_figures(node.pid)
            ms = np.array(seconds) * 1e3 if seconds else np.array([np.nan])
            latencies.append(ms)
            counts = [int(counters.get(name, 0))
                      for name in ("received", "processed", "dropped", "input_frames_lost", "rejected")]
            row = Row(round(n * args.row_seconds / 60, 2), sent, *counts, masks, round(rss, 1), round(anon, 1),
                      fds, threads, round(float(np.percentile(ms, 50)), 1), round(float(np.percentile(ms, 99)), 1),
                      len(error_lines(args.log)))
            rows.append(row)
            print(f"{row.minute:5.2f} {row.sent:7d} {row.received:7d} {row.processed:6d} {row.dropped:6d} "
                  f"{row.lost:5d} {row.rejected:5d} {row.masks:6d} {row.rss_mb:7.1f} {row.anon_mb:7.1f} {row.fds:4d} "
                  f"{row.threads:4d} {row.p50_ms:7.1f} {row.p99_ms:7.1f} {row.errors:4d}", flush=True)
        for worker in workers:
            worker.join(timeout=CALL_TIMEOUT_S * 4)
    finally:
        operator.close()
        code = stop(node)
    if not crashed and code != 0:
        crashed = f"the node ended with code {code} on SIGINT"
    return rows, check(rows, latencies, args.minutes, crashed, error_lines(args.log), operator.failures)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the camera runs")
    parser.add_argument("--row-seconds", type=float, default=60.0, help="seconds between two printed rows")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--every", type=float, nargs=3, default=(2.0, 30.0, 300.0),
                        metavar=("VOCABULARY", "REACTIVATE", "RECONFIGURE"),
                        help="seconds between two vocabulary changes, deactivate/activate cycles and "
                             "cleanup/configure cycles (default 2 30 300)")
    parser.add_argument("--checkpoint", default="", help="the node's model (empty: the offline default model)")
    parser.add_argument("--fake", action="store_true",
                        help="the node on the fake model (synseg_ros.fake_node): the node's own figures")
    parser.add_argument("--log", type=Path, default=Path("/tmp/synseg_soak_node.log"), help="the node's output")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and the missed goals here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if min(args.minutes, args.row_seconds, args.rate, *args.every) <= 0:
        parser.error("--minutes, --row-seconds, --rate and --every must be positive")
    signal.signal(signal.SIGTERM, signal.default_int_handler)      # `kill` and `timeout` stop the node too
    try:
        rows, missed = soak(args)
    except KeyboardInterrupt:
        print(f"soak: interrupted; the node was stopped (its log: {args.log})", file=sys.stderr)
        return 130
    print("goals: all met" if not missed else "goals missed:\n  " + "\n  ".join(missed))
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(row) for row in rows], "missed": missed}, indent=2))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
