"""Where the tests find the ROS 2 build, and how they start nodes and the `ros2` command line (no rclpy here).

The install space is ``install/`` (Kilted, `make setup`), or the one ``SYNSEG_ROS_INSTALL`` names (the Jazzy
build, ``build/jazzy/install``, see the Makefile). Its Python folder goes at the end of sys.path here, before
``synseg_ros`` is first imported, so that the package finds the generated message module there (see
``synseg_ros/__init__.py``). Child processes run from the repository root with the checkout first on their
path, so that the code under test is this checkout's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
ROS_INSTALL = Path(os.environ.get("SYNSEG_ROS_INSTALL", REPO_ROOT / "install")).resolve() / "synseg_ros"
# vision_msgs (the detections), built from ../shared/ros2cli by `make setup` into its own install space: Kilted's
# in build/ros2cli, Jazzy's where SYNSEG_MESSAGES_INSTALL names it (build/jazzy/ros2cli/install).
MESSAGES_INSTALL = Path(os.environ.get("SYNSEG_MESSAGES_INSTALL", REPO_ROOT / "build" / "ros2cli" / "install"))
ROS_PYTHON_DIRS = sorted(str(p) for p in ROS_INSTALL.glob("lib/python3*/site-packages"))
VISION_MSGS_DIRS = sorted(str(p) for p in MESSAGES_INSTALL.glob("vision_msgs/lib/python3*/site-packages"))
sys.path.extend(p for p in ROS_PYTHON_DIRS + VISION_MSGS_DIRS if p not in sys.path)

from synseg_ros import middleware, processes  # noqa: E402 - after the path above

# The `ros2` command line and `launch` (../shared/ros2cli, installed by `make setup` into .venv).
ROS2CLI_SOURCE = REPO_ROOT.parent / "shared" / "ros2cli"
ROS2CLI_SETUP = REPO_ROOT / "build" / "ros2cli" / "install" / "local_setup.bash"
ROS2 = Path(sys.executable).parent / "ros2"
TIMEOUT_S = 10.0            # every wait for discovery, a message or a command
MODEL_STARTUP_S = 90.0      # torch import and model load on a busy 2-core machine
# The Fast DDS profile with a shared-memory segment large enough for camera frames, and the variable naming it.
FASTDDS_PROFILE = str(REPO_ROOT / "config" / "fastdds_loopback.xml")
FASTDDS_PROFILE_VARIABLE = middleware.profile_variable()


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout and the install space's Python folder first on PYTHONPATH."""
    path = [str(REPO_ROOT), *ROS_PYTHON_DIRS, *VISION_MSGS_DIRS, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), **extra}


def start_node(module: str, args: Sequence[str], log_path: Path) -> subprocess.Popen:
    """``python -m module args`` from the repository root, output to ``log_path``."""
    return processes.start_module(module, args, log_path, env=child_env(), cwd=REPO_ROOT)


def start_executable(args: Sequence[str], log_path: Path) -> subprocess.Popen:
    """The ``synseg_node`` executable (what ``ros2 run`` starts) with ``args``, output to ``log_path``."""
    return processes.start([sys.executable, str(REPO_ROOT / "scripts" / "synseg_node"), *args], log_path,
                           env=child_env(), cwd=REPO_ROOT)


def ros2_missing() -> str | None:
    """Why the `ros2` command line cannot be used here, or None."""
    if not ROS2CLI_SOURCE.is_dir():
        return f"the ROS 2 command line comes from {ROS2CLI_SOURCE}, absent here"
    if not ROS2.exists() or not ROS2CLI_SETUP.exists():
        return (f"`ros2` is not installed in {ROS2.parent.parent}: `make setup` installs it into the Kilted "
                f"environment (.venv) only")
    return None


def ros2_command(*args: str) -> list[str]:
    """A command line running ``ros2 args`` in the environment of a sourced workspace.

    The venv's ROS 2 wheels are the underlay, then composition_interfaces (build/ros2cli), then this
    package's install space; the checkout comes first on PYTHONPATH.
    """
    script = ('set -e; source "$1"; source "$2"; export PYTHONPATH="$3${PYTHONPATH:+:$PYTHONPATH}"; shift 3; '
              'exec ros2 "$@"')
    return ["bash", "-c", script, "ros2", str(ROS2CLI_SETUP), str(ROS_INSTALL.parent / "setup.bash"),
            str(REPO_ROOT), *args]


def ros2_env() -> dict[str, str]:
    """What sourcing a ROS 2 installation would set before the workspaces: the venv as the underlay."""
    venv = Path(sys.executable).parent.parent
    return {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "AMENT_PREFIX_PATH": str(venv)}


def run_ros2(*args: str, timeout: float = 30.0, attempts: int = 3) -> subprocess.CompletedProcess:
    """Run a `ros2` command to its end.

    Without the daemon each command discovers the graph anew in its spin time (0.5 s), which a busy machine
    sometimes needs more for: a command that did not find its node or topic is tried again.
    """
    for _ in range(attempts):
        out = subprocess.run(ros2_command(*args), env=ros2_env(), cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode == 0 or not any(text in out.stderr for text in ("Node not found", "Unknown topic")):
            break
    return out


def start_ros2(args: Sequence[str], log_path: Path, env_without: str = "") -> subprocess.Popen:
    """Start a long-running `ros2` command (e.g. `ros2 launch`) in its own process group, without the
    environment variable ``env_without`` if one is named."""
    env = {name: value for name, value in ros2_env().items() if name != env_without}
    return processes.start(ros2_command(*args), log_path, env=env, cwd=REPO_ROOT)
