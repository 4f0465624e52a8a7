"""vision_msgs detections, LabelInfo and the labelled PointCloud2, built from regions and 3-D boxes.

The builders take the message classes from a ``MessageTypes`` ("vision_msgs/msg/Detection2D" -> class), so one
code path fills rclpy's messages in the node (``ROS_TYPES``) and rosbags' in the bag tool
(``synseg_ros.bag_types``); both accept every field as a keyword. Nothing here imports ROS.

Class ids: a detection's hypothesis names its label (``class_id`` = the label's text, ``score`` = the label's
score in the segmentation result); LabelInfo maps the numeric ids of the point cloud's ``label`` field (the
label's index in the vocabulary) to the labels.
"""
from __future__ import annotations

import array
import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from synseg_ros.depth import CLOUD_DTYPE, Box3D
from synseg_ros.regions import LabelRegions

__all__ = ["MessageTypes", "ROS_TYPES", "detections_2d", "detections_3d", "label_info", "point_cloud",
           "CLOUD_FIELDS"]
# The cloud's fields as sensor_msgs/PointField describes them: name, offset, datatype (7 FLOAT32, 6 UINT32).
CLOUD_FIELDS = tuple((name, CLOUD_DTYPE.fields[name][1], 7 if CLOUD_DTYPE[name].kind == "f" else 6)
                     for name in CLOUD_DTYPE.names)
_COVARIANCE_SIZE = 36


@dataclass(frozen=True)
class MessageTypes:
    """Where the builders get their message classes, and how a uint8[] field takes a numpy array.

    Attributes:
        get: "package/msg/Name" -> the message class.
        uint8_array: (n,) uint8 array -> what the classes' uint8[] fields hold (rclpy: ``array.array('B')``,
            which it keeps without a per-byte check; rosbags: the numpy array itself).
    """

    get: Callable[[str], type]
    uint8_array: Callable[[np.ndarray], Any]


@functools.lru_cache(maxsize=None)
def _ros_message_class(name: str) -> type:
    package, _, cls = name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), cls)


def _byte_array(values: np.ndarray) -> array.array:
    out = array.array("B")
    out.frombytes(values)
    return out


# rclpy's classes (ImportError from ``get`` where a message package is not installed).
ROS_TYPES = MessageTypes(_ros_message_class, _byte_array)


def _hypothesis(types: MessageTypes, label: str, score: float, pose: Any) -> Any:
    """One ObjectHypothesisWithPose: the label and its score, at ``pose`` (a Pose; 2-D detections: the origin)."""
    with_covariance = types.get("geometry_msgs/msg/PoseWithCovariance")(
        pose=pose, covariance=np.zeros(_COVARIANCE_SIZE, np.float64))
    return types.get("vision_msgs/msg/ObjectHypothesisWithPose")(
        hypothesis=types.get("vision_msgs/msg/ObjectHypothesis")(class_id=label, score=float(score)),
        pose=with_covariance)


def _pose(types: MessageTypes, position: Sequence[float]) -> Any:
    x, y, z = (float(v) for v in position)
    return types.get("geometry_msgs/msg/Pose")(position=types.get("geometry_msgs/msg/Point")(x=x, y=y, z=z),
                                           orientation=types.get("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0,
                                                                                             w=1.0))


def detections_2d(types: MessageTypes, header: Any, labels: Sequence[str], scores: Sequence[float],
                  regions: Sequence[LabelRegions]) -> Any:
    """A Detection2DArray: one Detection2D per kept region, its pixel bounding box and its label's hypothesis.

    Args:
        types: the message classes.
        header: the input image's header (every detection carries it).
        labels, scores: the segmentation result's K labels and scores.
        regions: from ``regions.find_regions``.
    """
    detection, box = types.get("vision_msgs/msg/Detection2D"), types.get("vision_msgs/msg/BoundingBox2D")
    pose2d, point2d = types.get("vision_msgs/msg/Pose2D"), types.get("vision_msgs/msg/Point2D")
    origin = _pose(types, (0.0, 0.0, 0.0))
    out = []
    for label in regions:
        # One hypothesis message for all of a label's regions (and one origin pose for all hypotheses): equal
        # parts are shared, as the messages are only serialised, and building messages is most of the time here.
        hypothesis = _hypothesis(types, labels[label.label_index], float(scores[label.label_index]), origin)
        for region in label.regions:
            u, v = region.center
            bbox = box(center=pose2d(position=point2d(x=u, y=v), theta=0.0), size_x=float(region.box[2]),
                       size_y=float(region.box[3]))
            out.append(detection(header=header, results=[hypothesis], bbox=bbox, id=""))
    return types.get("vision_msgs/msg/Detection2DArray")(header=header, detections=out)


def detections_3d(types: MessageTypes, header: Any, labels: Sequence[str], scores: Sequence[float],
                  boxes: Sequence[Box3D]) -> Any:
    """A Detection3DArray: per region with depth, its centre and robust size (``depth.region_boxes``), in the
    frame of ``header`` (the depth image's)."""
    detection, box3d = types.get("vision_msgs/msg/Detection3D"), types.get("vision_msgs/msg/BoundingBox3D")
    vector = types.get("geometry_msgs/msg/Vector3")
    out = []
    for item in boxes:
        sx, sy, sz = (float(v) for v in item.size)
        center = _pose(types, item.center)              # the box's and the hypothesis' pose: one message, shared
        bbox = box3d(center=center, size=vector(x=sx, y=sy, z=sz))
        hypothesis = _hypothesis(types, labels[item.label_index], float(scores[item.label_index]), center)
        out.append(detection(header=header, results=[hypothesis], bbox=bbox, id=""))
    return types.get("vision_msgs/msg/Detection3DArray")(header=header, detections=out)


def label_info(types: MessageTypes, header: Any, labels: Sequence[str], threshold: float) -> Any:
    """LabelInfo: class id i (the point cloud's ``label`` value) is ``labels[i]``; ``threshold`` the masks'."""
    vision_class = types.get("vision_msgs/msg/VisionClass")
    return types.get("vision_msgs/msg/LabelInfo")(
        header=header, class_map=[vision_class(class_id=i, class_name=label) for i, label in enumerate(labels)],
        threshold=float(threshold))


def point_cloud(types: MessageTypes, header: Any, points: np.ndarray) -> Any:
    """An unordered PointCloud2 (height 1) of ``CLOUD_DTYPE`` points: x, y, z in metres and the label index."""
    field = types.get("sensor_msgs/msg/PointField")
    fields = [field(name=name, offset=offset, datatype=datatype, count=1) for name, offset, datatype in CLOUD_FIELDS]
    data = types.uint8_array(np.ascontiguousarray(points, CLOUD_DTYPE).view(np.uint8).reshape(-1))
    return types.get("sensor_msgs/msg/PointCloud2")(
        header=header, height=1, width=len(points), fields=fields, is_bigendian=False,
        point_step=CLOUD_DTYPE.itemsize, row_step=CLOUD_DTYPE.itemsize * len(points), data=data, is_dense=True)
