"""scripts/soak.py for 2 minutes: the endurance run's shape (the README's table is its 60-minute run).

The operator's cycles are shortened (a vocabulary every 2 s, deactivate/activate every 15 s, cleanup/configure
every 60 s) so that 2 minutes see each of them. Two goals are left to the hour-long run, which alone can judge
them: memory (the model reloaded at 1 minute warms up again through the last one: +27 MB measured between the
two 30 s windows) and p99 (a 30 s window's p99 is its 6th-worst frame, which a shared 2-core machine
running other tests moves by more than 20%).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.ros_processes import REPO_ROOT

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_two_minutes_of_a_30_hz_camera_and_an_operator_leave_the_node_flat(ros_context, tmp_path):
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "soak.py"), "--minutes", "2",
                          "--row-seconds", "10", "--every", "2", "15", "60", "--json", str(tmp_path / "soak.json"),
                          "--log", str(tmp_path / "node.log")], capture_output=True, text=True, timeout=400)
    print(out.stdout, out.stderr[-3000:], (tmp_path / "node.log").read_text()[-3000:], sep="\n")
    result = json.loads((tmp_path / "soak.json").read_text())
    rows = result["rows"]
    assert len(rows) == 12 and rows[-1]["sent"] > 2 * 60 * 25          # a row every 10 s; about 30 Hz sent
    assert rows[-1]["processed"] > 0 and rows[-1]["masks"] > 0 and rows[-1]["rejected"] > 0  # the 1% malformed
    missed = [goal for goal in result["missed"] if not goal.startswith(("p99", "memory"))]
    assert not missed, missed                # no crash, no error, no failed call, fds and threads flat
    assert out.returncode in (0, 1)
