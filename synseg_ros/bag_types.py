"""The message types the bag tool writes, for the ``rosbags`` library (no ROS needed).

rosbags knows the standard ROS 2 messages; it is told the definitions of ``synseg_ros/msg/SegmentationMasks``
(read from this package's ``msg/`` folder, in a checkout or in an install space's ``share/synseg_ros/msg``) and
of the ``vision_msgs`` messages the detections use (vision_msgs 4.1.1, the interface ROS 2's
``ros-<distro>-vision-msgs`` ships; written here so that a machine without ROS can write them, and checked
against the package's own files by tests/test_segment_bag.py where they are present).
"""
from __future__ import annotations

from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from synseg_ros.detections import MessageTypes

__all__ = ["VISION_MSGS", "MASKS_TYPE", "create_typestore", "message_types", "masks_definition_path"]

MASKS_TYPE = "synseg_ros/msg/SegmentationMasks"
# The definitions' fields, without the comments of the package's files.
VISION_MSGS = {
    "Point2D": "float64 x\nfloat64 y",
    "Pose2D": "vision_msgs/Point2D position\nfloat64 theta",
    "BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y",
    "BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size",
    "ObjectHypothesis": "string class_id\nfloat64 score",
    "ObjectHypothesisWithPose": "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose",
    "Detection2D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox2D bbox\nstring id",
    "Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections",
    "Detection3D": "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
                   "vision_msgs/BoundingBox3D bbox\nstring id",
    "Detection3DArray": "std_msgs/Header header\nvision_msgs/Detection3D[] detections",
    "VisionClass": "uint16 class_id\nstring class_name",
    "LabelInfo": "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold",
}
# The ROS 2 distribution whose standard message definitions the written bags use.
STORE = Stores.ROS2_KILTED


def masks_definition_path() -> Path:
    """SegmentationMasks.msg: beside the package in a checkout (or a --symlink-install install space), else in
    the install prefix's share/synseg_ros/msg (a colcon install)."""
    package = Path(__file__).resolve().parent
    candidates = [package.parent / "msg", *(parent / "share" / "synseg_ros" / "msg" for parent in package.parents)]
    for folder in candidates:
        if (folder / "SegmentationMasks.msg").is_file():
            return folder / "SegmentationMasks.msg"
    raise FileNotFoundError(f"SegmentationMasks.msg is in none of {', '.join(str(c) for c in candidates[:3])}, ...")


def create_typestore() -> Typestore:
    """The standard ROS 2 types plus SegmentationMasks and the vision_msgs detections."""
    store = get_typestore(STORE)
    types = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    types.update(get_types_from_msg(masks_definition_path().read_text(), MASKS_TYPE))
    store.register(types)
    return store


def message_types(store: Typestore) -> MessageTypes:
    """The builders' view of ``store``: its classes, and numpy arrays as they are for uint8[] fields."""
    return MessageTypes(lambda name: store.types[name], lambda values: values)
