"""Starting, waiting for and stopping the processes of a ROS 2 run (the demo, the tests, the benchmarks).

Plain subprocess code, no ROS: every process starts in its own process group with its output in a log file,
waits are bounded and say what they waited for, and stopping sends SIGINT to the whole group (what Ctrl-C
does; ROS nodes and `ros2 launch` shut down cleanly on it), then SIGKILL if the group lingers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

STOP_TIMEOUT_S = 10.0
POLL_S = 0.02


class ProcessExited(RuntimeError):
    """A process that should still be running has exited."""


def start(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Run ``command`` in a new process group, stdout and stderr to ``log_path``."""
    with open(log_path, "wb") as log:   # the child keeps its own descriptor
        return subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def start_module(module: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.Popen:
    """``python -m module args`` with this interpreter (see ``start``)."""
    return start([sys.executable, "-m", module, *args], log_path, env, cwd)


def check_alive(procs: Sequence[subprocess.Popen]) -> None:
    """Raise ``ProcessExited`` naming the first of ``procs`` that has exited."""
    for proc in procs:
        if proc.poll() is not None:
            raise ProcessExited(f"{' '.join(map(str, proc.args))} exited with code {proc.returncode}")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               procs: Sequence[subprocess.Popen] = ()) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that.

    Raises:
        TimeoutError: after ``timeout`` seconds, naming ``what``.
        ProcessExited: one of ``procs`` exited first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


def stop(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> int:
    """SIGINT the process group, SIGKILL it if it lingers past ``timeout``; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:      # exited between poll and kill
            proc.wait()
    return proc.returncode
