"""package.xml, the README and requirements.txt agree on how a ROS 2 workspace gets the node's Python packages.

Every package of the model's section of requirements.txt reaches a workspace either through a rosdep key in
package.xml (`rosdep install`) or through the README's `pip install` line, and no key names a package the
node does not use.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from tests.ros_processes import REPO_ROOT

# Keys of ROS's rosdep database (rosdistro: rosdep/base.yaml, rosdep/python.yaml) for the model's packages.
# Packages without a key here are pip-installed by the README's line.
ROSDEP_KEYS = {"numpy": "python3-numpy", "opencv-python-headless": "python3-opencv", "pyyaml": "python3-yaml",
               "torch": "python3-torch", "torchvision": "python3-torchvision",
               "onnxruntime": "python3-onnxruntime-pip"}


def model_requirements() -> set[str]:
    text = (REPO_ROOT / "requirements.txt").read_text()
    section = text.split("# --- model", 1)[1].split("\n# ---", 1)[0]
    return {re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower() for line in section.splitlines()[1:]
            if line.strip() and not line.startswith("#")}


def exec_depends() -> set[str]:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    return {element.text for element in root.iter("exec_depend")}


def readme_pip_line() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## On a robot", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith("pip install "))
    return {word.lower() for word in line.split("#")[0].split()[2:]}


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
