"""package.xml, the README and requirements.txt agree on how a ROS 2 workspace gets the node's Python packages.

Every package of the model's section of requirements.txt reaches a workspace either through a rosdep key in
package.xml (`rosdep install`) or through the README's `pip install` line, and no key names a package the
node does not use. Ubuntu 24.04 and Debian 12 refuse `pip install` outside a virtual environment (PEP 668),
rosdep's pip keys included: the README's pip line runs in the workspace's venv, which sees the system's packages
and runs the workspace's executables.
"""
from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.ros_processes import REPO_ROOT

# The distribution's own Python, which PEP 668 marks as managed by apt on Debian 12 and Ubuntu 24.04.
SYSTEM_PYTHON = Path("/usr/bin/python3")

# Keys of ROS's rosdep database (rosdistro: rosdep/base.yaml, rosdep/python.yaml) for the model's packages.
# Packages without a key here are pip-installed by the README's line.
ROSDEP_KEYS = {"numpy": "python3-numpy", "opencv-python-headless": "python3-opencv", "pyyaml": "python3-yaml",
               "torch": "python3-torch", "torchvision": "python3-torchvision"}


def model_requirements() -> set[str]:
    text = (REPO_ROOT / "requirements.txt").read_text()
    section = text.split("# --- model", 1)[1].split("\n# ---", 1)[0]
    return {re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower() for line in section.splitlines()[1:]
            if line.strip() and not line.startswith("#")}


def exec_depends() -> set[str]:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    return {element.text for element in root.iter("exec_depend")}


def workspace_commands() -> list[str]:
    """The command lines of the README's workspace block (On a robot), comments dropped."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## On a robot", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def readme_pip_line() -> set[str]:
    line = next(line for line in workspace_commands() if line.startswith("pip install "))
    return {word.lower() for word in line.split()[2:]}


def test_every_model_package_comes_from_rosdep_or_the_readme_pip_line():
    keys, pip_line = exec_depends(), readme_pip_line()
    missing = {name for name in model_requirements()
               if ROSDEP_KEYS.get(name) not in keys and name not in pip_line}
    assert not missing, f"neither a rosdep key in package.xml nor in the README's pip line: {sorted(missing)}"
    twice = {name for name in pip_line if ROSDEP_KEYS.get(name) in keys}
    assert not twice, f"pip-installed although rosdep installs them: {sorted(twice)}"


def test_package_xml_python_keys_name_packages_the_node_uses():
    python_keys = {key for key in exec_depends() if key.startswith("python3-")}
    used = {ROSDEP_KEYS[name] for name in model_requirements() if name in ROSDEP_KEYS}
    assert python_keys == used


def test_rosdep_installs_nothing_with_pip():
    """A `-pip` key makes `rosdep install` run pip on the system's Python: PEP 668 stops it."""
    assert not [key for key in exec_depends() if key.endswith("-pip")]


def test_the_workspace_pip_line_runs_in_a_venv_that_sees_the_system_and_runs_the_workspace():
    commands = workspace_commands()
    venv = next(line for line in commands if " -m venv " in line)
    assert "--system-site-packages" in venv and "COLCON_IGNORE" in venv     # ROS and apt's packages; not a package
    activate = next(i for i, line in enumerate(commands) if "/bin/activate" in line)
    pip = next(i for i, line in enumerate(commands) if line.startswith("pip install "))
    build = next(i for i, line in enumerate(commands) if "colcon build" in line)
    assert activate < pip and activate < build
    assert "python -m colcon build" in commands[build]      # the venv's interpreter builds the workspace


def test_the_executables_run_with_the_python_on_path():
    """`ros2 run` and `ros2 launch` start these files: with the venv activated, its python runs them."""
    for name in ("synseg_node", "image_folder_publisher", "segment_bag"):
        assert (REPO_ROOT / "scripts" / name).read_text().splitlines()[0] == "#!/usr/bin/env python3", name


def system_python_refusal() -> str:
    """Why the README's PEP 668 path cannot be run here, or "" when the system's Python is externally managed."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} does not exist"
    stdlib = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    if not (Path(stdlib) / "EXTERNALLY-MANAGED").exists():
        return f"{SYSTEM_PYTHON} is not marked externally managed (PEP 668): the case the path is for is not here"
    if subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "--version"], capture_output=True).returncode != 0:
        return f"{SYSTEM_PYTHON} has no pip"
    return ""


@pytest.mark.slow
def test_the_readme_venv_takes_the_pip_line_where_the_system_python_refuses(tmp_path):
    """The README's venv and pip lines, run for real on this Debian 12 machine (its own /usr/bin/python3): the
    system's pip refuses the line (PEP 668), the venv's pip takes it, and the venv sees the system's packages.
    The tests run without a network (scripts/sandbox), so the venv's pip looks in no index (``--no-index``):
    the packages are then not found, which is another error than PEP 668's. The lines that need an
    apt-installed ROS 2 (its setup.bash, rosdep, colcon) are not run: this machine has none."""
    if why := system_python_refusal():
        pytest.skip(why)
    commands = [line.replace("~/ros2_ws", str(tmp_path)) for line in workspace_commands()]
    venv_line = next(line for line in commands if " -m venv " in line)
    pip_line = next(line for line in commands if line.startswith("pip install "))
    offline = " --dry-run --no-deps --no-index"
    refused = subprocess.run(["bash", "-c", f"{SYSTEM_PYTHON} -m {pip_line}{offline}"], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr
    script = (f"set -e; {venv_line.replace('python3 ', f'{SYSTEM_PYTHON} ', 1)}; "
              f"source {tmp_path}/venv/bin/activate; "
              "python -c 'import json, sys; print(json.dumps(sys.path))'; "
              f"{pip_line}{offline}")
    taken = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert "externally-managed-environment" not in taken.stderr
    assert "No matching distribution found" in taken.stderr or taken.returncode == 0, taken.stderr[-2000:]
    assert (tmp_path / "venv" / "COLCON_IGNORE").exists()
    system_sites = json.loads(subprocess.run([str(SYSTEM_PYTHON), "-c", "import json, site; "
                                              "print(json.dumps(site.getsitepackages()))"],
                                             capture_output=True, text=True, check=True).stdout)
    venv_path = json.loads(taken.stdout.splitlines()[0])
    assert [site for site in system_sites if Path(site).is_dir()] == \
        [site for site in venv_path if site in system_sites]         # ROS and apt's packages are seen
