"""Fast DDS's profile file: the variable that names it, which differs between its major versions.

Fast DDS 3 (ROS 2 Kilted and later) reads ``FASTDDS_DEFAULT_PROFILES_FILE`` and warns about the old name; Fast
DDS 2 (Humble, Jazzy) reads only ``FASTRTPS_DEFAULT_PROFILES_FILE``. A camera frame over 512 KB needs a profile
with a larger shared-memory segment on the publishing side (this package's ``config/fastdds_loopback.xml``).
No ROS import: the launch file and the tests read it too.
"""
from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def profile_variable() -> str:
    """The environment variable that names Fast DDS's profile file for the ROS 2 in use.

    The distribution a sourced installation names (``ROS_DISTRO``), else the major version of the PyPI ROS 2
    wheels' rclpy (9: Kilted, 7: Jazzy), else the newest name.
    """
    distro = os.environ.get("ROS_DISTRO", "")
    if distro:
        fast_dds_2 = distro in FAST_DDS_2_DISTROS
    else:
        try:
            fast_dds_2 = int(version("ros-rclpy").split(".")[0]) < 9
        except PackageNotFoundError:
            fast_dds_2 = False
    return "FASTRTPS_DEFAULT_PROFILES_FILE" if fast_dds_2 else "FASTDDS_DEFAULT_PROFILES_FILE"
