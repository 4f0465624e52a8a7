"""Segment the camera frames of a recorded rosbag2 (sqlite3 or MCAP) into a new bag, without ROS.

    ros2 run synseg_ros segment_bag IN OUT --topic /camera/image_raw --vocabulary "[person, chair]"
    python -m synseg_ros.segment_bag IN OUT --topic /camera/image_raw/compressed --params-file robot.yaml

Every frame of ``--topic`` (sensor_msgs/Image or sensor_msgs/CompressedImage, JPEG or PNG) is segmented by the
node's model, built from the node's parameters (its defaults, then ``--params-file``, the node's YAML file,
then ``-p name:=value`` and ``--vocabulary``). OUT gets every message of IN, copied as it is, and per frame
what the node publishes: ``/synseg/masks`` (synseg_ros/SegmentationMasks) and ``/synseg/detections``
(vision_msgs/Detection2DArray), with the frame's header and its time in the bag, plus ``/synseg/label_info``
(vision_msgs/LabelInfo) once, offered transient-local as the node does. OUT is rosbag2 version 8 in IN's
storage format unless ``--storage`` says otherwise; ``ros2 bag info``, ``rosbags`` and Foxglove open it.

OUT is written under a hidden temporary name beside it and renamed at the end: an interrupted or failed run
leaves no OUT. A frame that cannot be decoded is skipped with a warning (counted at the end).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import yaml
from tqdm import tqdm

from synseg_ros import bag_types, conversions, detections, params, regions
from synseg_ros.segmenter import Segmentation, Segmenter, SegmenterFactory, load_segmenter

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
# rosbag2 metadata version 8: what ROS 2 Jazzy's `ros2 bag` writes; Kilted's reads it too.
BAG_VERSION = 8
NODE_NAME = "synseg"
# Jobs (a frame's outputs to build and write, or a copied message) that may wait for the writer's thread while
# the next frame is segmented: a few frames' worth, each holding its activation maps (13.5 MB at 640x480, 11 labels).
WRITE_QUEUE = 8


class BagError(Exception):
    """A problem with the input, the output or the settings, said in one line."""


@dataclass
class Summary:
    """What a run did."""

    frames: int = 0
    skipped: list[str] = field(default_factory=list)
    copied: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------- settings

def read_parameter_file(path: Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The ``ros__parameters`` of a ROS 2 parameter file that apply to the node: its ``/**`` section and the
    sections named for the node (``synseg``, ``/synseg``, ``/robot/synseg``), in the file's order."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f"parameter file {path}: {exc}") from None
    if not isinstance(document, dict):
        raise BagError(f"parameter file {path}: expected a mapping of node names to ros__parameters")
    values: dict[str, Any] = {}
    for key, section in document.items():
        if str(key) in ("/**", "**") or str(key).rstrip("/").split("/")[-1] == node_name:
            body = section.get("ros__parameters") if isinstance(section, dict) else None
            if not isinstance(body, dict):
                raise BagError(f"parameter file {path}: section {key!r} has no ros__parameters mapping")
            values.update(body)
    return values


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The node's defaults, then the file, then ``-p`` and ``--vocabulary``; each value coerced and checked
    as the node checks it."""
    given: dict[str, Any] = read_parameter_file(args.params_file) if args.params_file else {}
    for item in args.param:
        name, sep, text = item.partition(":=")
        if not sep:
            raise BagError(f"-p {item}: expected NAME:=VALUE")
        given[name] = yaml.safe_load(text) if text else ""
    if args.vocabulary is not None:
        given["vocabulary"] = args.vocabulary
    unknown = sorted(set(given) - set(params.SPECS))
    if unknown:
        raise BagError(f"unknown parameters {', '.join(unknown)} (the node's: {', '.join(params.SPECS)})")
    settings = {spec.name: spec.default for spec in params.PARAMETERS}
    settings.update({name: params.coerce_value(name, value) for name, value in given.items()})
    try:
        for name, value in settings.items():
            if value is not None:
                params.validate(name, value, settings)
    except ValueError as exc:
        raise BagError(str(exc)) from None
    return settings


# ---------------------------------------------------------------------------------------------------- bags

def storage_of(bag: Path) -> str:
    """"mcap" or "sqlite3", from the bag folder's storage files."""
    return "mcap" if any(bag.glob("*.mcap")) else "sqlite3"


def open_reader(path: Path) -> Any:
    """An open rosbags Reader of ``path``; BagError naming the bag when it is missing or damaged."""
    from rosbags.rosbag2 import Reader

    if not path.exists():
        raise BagError(f"{path}: no such bag")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:   # rosbags raises several kinds for a damaged bag; each is this one error
        raise BagError(f"{path}: not a readable rosbag2 ({type(exc).__name__}: {exc})") from None
    return reader


def image_connections(reader: Any, path: Path, topic: str) -> list[Any]:
    """The connections of ``topic``; BagError when the bag lacks it or it holds no camera images."""
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
        raise BagError(f"{path} has no topic {topic} (its topics: {topics})")
    wrong = sorted({c.msgtype for c in found} - set(IMAGE_TYPES))
    if wrong:
        raise BagError(f"{path}: topic {topic} holds {', '.join(wrong)}, not {' or '.join(IMAGE_TYPES)}")
    return found


def transient_local_qos() -> Any:
    """The QoS the node offers LabelInfo with (reliable, transient local, depth 1), as rosbags records QoS."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, never, never,
               QosLiveliness.AUTOMATIC, never, False)


class BackgroundWriter:
    """A rosbags Writer driven from a thread of its own, so that building, serialising and writing a frame's
    outputs overlaps the next frame's segmentation (the model releases the GIL). Every call runs on that one
    thread, as sqlite3 requires of its objects; at most ``WRITE_QUEUE`` jobs wait, in order, and a failed one
    raises at the next."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment_bag-writer")
        self._pending: deque[Future] = deque()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``writer.method(*args, **kwargs)`` on the writer's thread, after the queued writes; its result."""
        self.flush()
        return self._pool.submit(getattr(self._writer, method), *args, **kwargs).result()

    def write(self, connection: Any, timestamp: int, data: bytes) -> None:
        """Queue one serialised message."""
        self.submit(self._writer.write, connection, timestamp, data)

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        """Queue ``job(*args)`` on the writer's thread; a job writes with ``write_now``."""
        self._drain(WRITE_QUEUE - 1)
        self._pending.append(self._pool.submit(job, *args))

    def write_now(self, connection: Any, timestamp: int, data: bytes) -> None:
        """Write one serialised message; only from a job on the writer's thread."""
        self._writer.write(connection, timestamp, data)

    def flush(self) -> None:
        """Wait for the queued writes (raises a failed one's error)."""
        self._drain(0)

    def shutdown(self) -> None:
        """Wait for the queued writes (without raising their errors) and stop the thread."""
        self._pool.shutdown(wait=True)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()


# ----------------------------------------------------------------------------------------------- segmenting

class FrameSegmenter:
    """Decodes a frame message, segments it and builds the node's messages for it, as rosbags objects."""

    def __init__(self, segmenter: Segmenter, settings: Mapping[str, Any], store: Any) -> None:
        self.segmenter = segmenter
        self.settings = settings
        self.store = store
        self.types = bag_types.message_types(store)
        self.masks = conversions.MaskBuffers()

    def decode(self, msg: Any, msgtype: str) -> np.ndarray:
        """RGB of an Image or CompressedImage (ImageFormatError when it cannot be decoded)."""
        limit = self.settings["max_image_pixels"]
        if msgtype == IMAGE_TYPES[1]:
            return conversions.compressed_to_rgb(msg.data, limit)
        return conversions.image_to_rgb(msg, limit)

    def outputs(self, header: Any, result: Segmentation) -> tuple[Any, Any]:
        """(SegmentationMasks, Detection2DArray) of one segmented frame, with its ``header``.
        Reuses its mask buffers: one thread at a time, each message serialised before the next call."""
        threshold = float(result.threshold)
        masks = self.masks.fill(result.probabilities, threshold, result.present)
        height, width = result.probabilities.shape[1:]
        image = self.types.get("sensor_msgs/msg/Image")
        mask_msgs = [image(header=header, height=height, width=width, encoding="mono8", is_bigendian=0,
                           step=width, data=m.reshape(-1)) for m in masks]
        masks_msg = self.types.get(bag_types.MASKS_TYPE)(
            header=header, labels=list(result.labels), masks=mask_msgs,
            scores=np.asarray(result.scores, np.float32), threshold=threshold, probabilities=[])
        found = regions.find_regions(masks, self.settings["min_region_pixels"])
        return masks_msg, detections.detections_2d(self.types, header, result.labels, result.scores, found)


def segment(args: argparse.Namespace, factory: SegmenterFactory) -> Summary:
    """Read IN, write OUT (through a temporary folder); returns what was done."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    source, target = args.input, args.output
    if target.exists():
        raise BagError(f"{target} exists: give a new folder for the output")
    settings = resolve_settings(args)
    reader = open_reader(source)
    try:
        inputs = image_connections(reader, source, args.topic)
        store = bag_types.create_typestore()
        frames = FrameSegmenter(_load_model(factory, settings), settings, store)
        storage = args.storage or storage_of(source)
        scratch = target.parent / f".{target.name}.incomplete-{os.getpid()}"
        scratch.mkdir(parents=True)
        writer = BackgroundWriter(Writer(scratch / target.name, version=BAG_VERSION,
                                         storage_plugin=StoragePlugin[storage.upper()]))
        try:
            writer.call("open")
            summary = _copy_and_segment(reader, writer, inputs, frames, args)
            writer.call("close")
            (scratch / target.name).rename(target)
        finally:
            writer.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        reader.close()
    return summary


def _load_model(factory: SegmenterFactory, settings: dict[str, Any]) -> Segmenter:
    """The node's model with the vocabulary set (unset: the model card's classes, as the node does)."""
    try:
        segmenter = factory(settings)
        vocabulary = settings["vocabulary"] or list(segmenter.model_card.get("classes") or [])
        if not vocabulary:
            raise BagError("no vocabulary: the model's card lists no classes; give one with --vocabulary")
        segmenter.set_vocabulary(vocabulary, settings["prompt_templates"])
    except BagError:
        raise
    except Exception as exc:      # a model that does not load is one line naming it, as in the node
        raise BagError(f"the model ({settings['checkpoint'] or 'the offline default model'}) failed to load: "
                       f"{type(exc).__name__}: {exc}") from None
    settings["vocabulary"] = vocabulary
    return segmenter


@dataclass
class _Connections:
    """The output bag's connections: a copy of each input one, and the three the tool adds."""

    copies: dict[int, Any]
    masks: Any
    detections: Any
    label_info: Any


def _add_connections(reader: Any, writer: BackgroundWriter, store: Any, prefix: str) -> _Connections:
    def add(*args: Any, **kwargs: Any) -> Any:
        return writer.call("add_connection", *args, **kwargs)

    copies = {c.id: add(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest,
                        serialization_format=c.ext.serialization_format,
                        offered_qos_profiles=c.ext.offered_qos_profiles)
              for c in reader.connections}
    return _Connections(copies, add(f"{prefix}/masks", bag_types.MASKS_TYPE, typestore=store),
                        add(f"{prefix}/detections", "vision_msgs/msg/Detection2DArray", typestore=store),
                        add(f"{prefix}/label_info", "vision_msgs/msg/LabelInfo", typestore=store,
                            offered_qos_profiles=[transient_local_qos()]))


def _copy_and_segment(reader: Any, writer: BackgroundWriter, inputs: list[Any], frames: FrameSegmenter,
                      args: argparse.Namespace) -> Summary:
    """Copy every message of the bag, and write each frame's outputs after it."""
    out = _add_connections(reader, writer, frames.store, args.prefix.rstrip("/"))
    image_types = {c.id: c.msgtype for c in inputs}
    summary, started = Summary(), time.monotonic()
    with tqdm(total=sum(c.msgcount for c in inputs), unit="frame", desc=f"segmenting {args.topic}",
              disable=args.quiet) as progress:
        for connection, timestamp, raw in _messages(reader, args.input):
            # bytes(): a reader may hand out views of its buffers, which the queue must not outlive.
            writer.write(out.copies[connection.id], timestamp, bytes(raw))
            summary.copied += 1
            if connection.id in image_types:
                progress.update()
                _segment_frame(frames, raw, image_types[connection.id], timestamp, writer, out, summary, progress)
    writer.flush()                  # the rate counts the disk's time too
    summary.seconds = time.monotonic() - started
    return summary


def _segment_frame(frames: FrameSegmenter, raw: bytes, msgtype: str, timestamp: int, writer: BackgroundWriter,
                   out: _Connections, summary: Summary, progress: tqdm) -> None:
    store = frames.store
    msg = store.deserialize_cdr(raw, msgtype)
    try:
        rgb = frames.decode(msg, msgtype)
    except conversions.ImageFormatError as exc:
        summary.skipped.append(f"{timestamp}: {exc}")
        progress.write(f"segment_bag: skipped the frame at {timestamp} ns: {exc}", file=sys.stderr)
        return
    writer.submit(_write_outputs, frames, msg.header, frames.segmenter.segment(rgb), timestamp, writer, out,
                  summary.frames == 0)
    summary.frames += 1


def _write_outputs(frames: FrameSegmenter, header: Any, result: Segmentation, timestamp: int,
                   writer: BackgroundWriter, out: _Connections, first: bool) -> None:
    """A frame's messages, built, serialised and written on the writer's thread; LabelInfo once, with the first
    (the vocabulary and the threshold are the run's)."""
    store = frames.store
    if first:
        info = detections.label_info(frames.types, header, result.labels, float(result.threshold))
        writer.write_now(out.label_info, timestamp, store.serialize_cdr(info, "vision_msgs/msg/LabelInfo"))
    masks, found = frames.outputs(header, result)
    writer.write_now(out.masks, timestamp, store.serialize_cdr(masks, bag_types.MASKS_TYPE))
    writer.write_now(out.detections, timestamp, store.serialize_cdr(found, "vision_msgs/msg/Detection2DArray"))


def _messages(reader: Any, path: Path) -> Iterator[tuple[Any, int, bytes]]:
    """Every message of the bag in time order; a damaged bag is a BagError naming it."""
    try:
        yield from reader.messages()
    except Exception as exc:      # the storage libraries raise their own kinds for damaged data
        raise BagError(f"{path}: damaged bag ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------------------- main

def get_args_parser() -> argparse.ArgumentParser:
    """The command line (see the module's help)."""
    parser = argparse.ArgumentParser(prog="segment_bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, metavar="IN", help="the recorded bag (a rosbag2 folder)")
    parser.add_argument("output", type=Path, metavar="OUT", help="the bag to write (must not exist)")
    parser.add_argument("--topic", required=True, help="the camera topic (sensor_msgs/Image or CompressedImage)")
    parser.add_argument("--vocabulary", help='labels, e.g. "[person, chair]" (default: the parameters\' '
                                             'vocabulary, else the model card\'s classes)')
    parser.add_argument("--params-file", type=Path, help="the node's parameter file (config/synseg.yaml format)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="one of the node's parameters, as `ros2 run ... -p` takes it (repeatable)")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), help="OUT's storage format (default: IN's)")
    parser.add_argument("--prefix", default=f"/{NODE_NAME}", help="namespace of the written topics (default: "
                                                                  "%(default)s, the node's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, segmenter_factory: SegmenterFactory = load_segmenter) -> int:
    """Run the tool; returns the exit code (0 done, 1 an error said in one line, 130 interrupted)."""
    args = get_args_parser().parse_args(argv)
    try:
        summary = segment(args, segmenter_factory)
    except BagError as exc:
        print(f"segment_bag: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"segment_bag: interrupted; {args.output} was not written", file=sys.stderr)
        return 130
    rate = summary.frames / summary.seconds if summary.seconds > 0 else 0.0
    print(f"segment_bag: {summary.frames} frames of {args.topic} segmented ({rate:.1f} frames/s), "
          f"{len(summary.skipped)} skipped, {summary.copied} messages copied -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
