"""The package's generated message types, with a clear error where colcon has not built them."""
try:
    from synseg_ros.msg import SegmentationMasks
except ImportError as exc:  # the msg/ subpackage exists only in a colcon install space
    raise ImportError(
        "synseg_ros.msg is not built: build the package with colcon (`make setup` here, or `colcon build` in "
        "a ROS 2 workspace) and source its install space (`source install/setup.bash`)") from exc

__all__ = ["SegmentationMasks"]
