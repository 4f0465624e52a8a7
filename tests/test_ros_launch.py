"""launch/segment.launch.py: its arguments, and a real parse where ROS 2's launch is installed."""
from __future__ import annotations

import ast
import importlib.util

import pytest

from tests.ros_helpers import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / "launch" / "segment.launch.py"
ARGUMENTS = {"image_topic", "params_file", "checkpoint", "device", "namespace"}


def declared_arguments(tree: ast.AST) -> set[str]:
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument"}


def test_launch_file_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    assert declared_arguments(tree) == ARGUMENTS
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def _ros_launch_available() -> bool:
    # PyPI's "launch" is an unrelated tool; ROS 2's has LaunchDescription and comes with launch_ros.
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        return False
    import launch

    return hasattr(launch, "LaunchDescription")


@pytest.mark.skipif(not _ros_launch_available(),
                    reason="ROS 2 launch/launch_ros are not installable from PyPI (only with a ROS 2 install)")
def test_launch_file_parses_with_ros2_launch():
    from launch.actions import DeclareLaunchArgument

    from launch import LaunchDescription

    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    names = {entity.name for entity in description.entities if isinstance(entity, DeclareLaunchArgument)}
    assert names == ARGUMENTS
