"""Shared test fixtures and hooks. Every test runs on CPU; heavy models are built once per session.

pytest.ini's ``pythonpath`` puts the repository root first on sys.path, so that the code under test is this
checkout's (not an installed copy) and ``tests.*`` imports; node processes started by the tests get the same
path (``tests.ros_processes.child_env``).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

import synseg_model
from synseg_model import SynSeg, create_model
from tests.ros_processes import FASTDDS_PROFILE, FASTDDS_PROFILE_VARIABLE, ROS_INSTALL, ROS_PYTHON_DIRS

# One thread per process: the tests' models are tiny, and with two threads OpenMP's waiting made single tests
# 5-20x slower on a loaded 2-core machine (1.4 s -> 13 s). Processes the tests start inherit the variable.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A test slower than this on the development machine (2 shared cores) is marked `slow`, so that
# `make test-fast` skips it; the summary names unmarked tests that exceed it.
SLOW_S = 10.0
_unmarked_durations: dict[str, float] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test another tree's code (e.g. the editable install's) under this checkout's tests."""
    checkout, tested = Path(__file__).resolve().parents[1], Path(synseg_model.__file__).resolve().parents[1]
    if tested != checkout:
        raise pytest.UsageError(f"synseg_model comes from {tested}, not from this checkout {checkout}: "
                                "run pytest with this checkout's pytest.ini")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up setup, call and teardown time of each test not marked slow."""
    if "slow" not in report.keywords:
        _unmarked_durations[report.nodeid] = _unmarked_durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the tests over SLOW_S that are not marked slow: a new slow test shows in every run's output."""
    over = sorted(((seconds, nodeid) for nodeid, seconds in _unmarked_durations.items() if seconds > SLOW_S),
                  reverse=True)
    if not over:
        return
    terminalreporter.write_sep("=", f"{len(over)} test(s) over {SLOW_S:.0f} s not marked slow", yellow=True)
    for seconds, nodeid in over:
        terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
    terminalreporter.write_line("Mark them @pytest.mark.slow (make test-fast skips those) or make them faster; "
                                "the time includes setup, so a slow fixture shows on its first test.")


@pytest.fixture(scope="session")
def tiny_model() -> SynSeg:
    """A tiny random SynSeg (64 px, patch 8). Do not mutate it: copy it first (``copy.deepcopy``)."""
    torch.manual_seed(0)
    return create_model("synseg-tiny").eval()


# --- ROS 2 (synseg_ros) -------------------------------------------------------------------------------------
# Tests marked `ros` start rclpy. They run only under the network rule (scripts/sandbox, which `make test`
# uses) and against a colcon install space that `make setup` builds (install/ for Kilted, or the one
# SYNSEG_ROS_INSTALL names: build/jazzy/install for Jazzy). `make test` puts its libraries on LD_LIBRARY_PATH
# (the loader reads that at process start, so it cannot be set from here); tests/ros_processes.py adds its
# Python folder at the end of sys.path, where `synseg_ros/__init__.py` finds the generated msg/ module.

# Camera-sized frames between processes need the big shared-memory segment (see config/fastdds_loopback.xml).
os.environ.setdefault(FASTDDS_PROFILE_VARIABLE, FASTDDS_PROFILE)

_RUN_ROS_TESTS = ("run them with `make test`, or `LD_LIBRARY_PATH=$PWD/install/synseg_ros/lib "
                  "scripts/sandbox .venv/bin/python -m pytest ...` after `make setup`")


def ros_environment_problem() -> str | None:
    """Why rclpy tests must not run in this process, or None when the network rule and the build are in force."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        return "ROS_AUTOMATIC_DISCOVERY_RANGE is not LOCALHOST: DDS discovery could leave this machine"
    if os.geteuid() == 0:
        # Asked of the kernel for this process's network namespace (/sys/class/net may show the host's).
        interfaces = sorted(name for _, name in socket.if_nameindex())
        if interfaces != ["lo"]:
            return f"network interfaces {interfaces} are visible: ROS tests run in a namespace with only lo"
    if not ROS_PYTHON_DIRS:
        return f"{ROS_INSTALL} has no Python folder: the message is not built (make setup builds it)"
    library_dir = ROS_INSTALL / "lib"
    if str(library_dir) not in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        return f"{library_dir} is not on LD_LIBRARY_PATH"
    return None


@pytest.fixture(scope="session")
def ros_network_rule() -> None:
    """Fail, with the way to run them, unless rclpy may start here; every fixture that starts rclpy uses it."""
    problem = ros_environment_problem()
    if problem:
        pytest.fail(f"refusing to start rclpy: {problem}; {_RUN_ROS_TESTS}", pytrace=False)


@pytest.fixture(autouse=True)
def _ros_marker_check(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("ros") is not None:
        request.getfixturevalue("ros_network_rule")


@pytest.fixture(scope="session")
def ros_context(ros_network_rule: None):
    """rclpy initialised once for the in-process ROS tests."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()
