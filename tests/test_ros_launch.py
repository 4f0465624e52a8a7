"""launch/segment.launch.py and the node through the real `ros2` command line: `ros2 launch`, `ros2 param`,
`ros2 lifecycle` and `ros2 topic`, each in a subprocess under the network rule (the sandbox of `make test`).

`ros2` and `launch` come from ../shared/ros2cli, which `make setup` installs into .venv (Kilted); where they
are missing these tests skip, saying why. The commands ask a `ros2 daemon` started for this module (and
stopped after it) for the graph, as on a robot, instead of discovering it anew each time; each has a timeout.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from synseg_model import default_checkpoint_path
from tests.ros_helpers import interrupt_when_logged, stop_node, wait_until
from tests.ros_processes import (
    FASTDDS_PROFILE_VARIABLE,
    MODEL_STARTUP_S,
    REPO_ROOT,
    ROS_INSTALL,
    ros2_missing,
    run_ros2,
    start_node,
    start_ros2,
)

LAUNCH_FILE = REPO_ROOT / "launch" / "segment.launch.py"
ARGUMENTS = {"image_topic", "params_file", "checkpoint", "device", "namespace", "autostart", "image_transport",
             "use_depth", "depth_topic", "camera_info_topic", "fastdds_profile", "camera_folder"}
needs_ros2 = pytest.mark.skipif(ros2_missing() is not None, reason=str(ros2_missing()))


def declared_arguments(tree: ast.AST) -> set[str]:
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument"}


def test_launch_file_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    assert declared_arguments(tree) == ARGUMENTS


@needs_ros2
def test_show_args_lists_every_argument():
    out = run_ros2("launch", "synseg_ros", "segment.launch.py", "--show-args")
    assert out.returncode == 0, out.stderr
    assert {name for name in ARGUMENTS if f"'{name}'" in out.stdout} == ARGUMENTS, out.stdout


@needs_ros2
def test_ros2_run_segment_bag_answers_help():
    out = run_ros2("run", "synseg_ros", "segment_bag", "--help")
    assert out.returncode == 0, out.stderr
    assert "--topic" in out.stdout and "--params-file" in out.stdout


@pytest.fixture(scope="module", autouse=True)
def ros2_daemon():
    """A `ros2 daemon` for this module's commands, inside the sandbox, stopped at the end."""
    if ros2_missing() is not None:
        yield
        return
    assert run_ros2("daemon", "start").returncode == 0
    try:
        yield
    finally:
        run_ros2("daemon", "stop")


def parameters(node: str) -> dict:
    """All of ``node``'s parameters (`ros2 param dump`)."""
    out = run_ros2("param", "dump", node)
    assert out.returncode == 0, out.stdout + out.stderr
    return yaml.safe_load(out.stdout)[node]["ros__parameters"]


def param_set(node: str, name: str, value: str) -> str:
    out = run_ros2("param", "set", node, name, value)
    return out.stdout + out.stderr


def lifecycle(verb: str, node: str, *args: str, attempts: int = 3) -> str:
    return run_ros2("lifecycle", verb, node, *args, attempts=attempts).stdout


def wait_until_active(node: str, launch) -> None:
    """Until ``node`` says it is active.

    rclpy serves the lifecycle services in the callback group that runs the transitions, so the node answers
    `ros2 lifecycle get` only between transitions: on a busy machine one call can wait out the whole model load.
    """
    def active() -> bool:
        try:
            return run_ros2("lifecycle", "get", node, attempts=1, timeout=MODEL_STARTUP_S).stdout.startswith("active")
        except subprocess.TimeoutExpired:
            return False

    wait_until(active, MODEL_STARTUP_S, f"{node} to be active", procs=[launch])


def wait_for_node(node: str, launch, timeout: float) -> None:
    """Until ``ros2 lifecycle get`` answers for ``node``."""
    wait_until(lambda: lifecycle("get", node, attempts=1), timeout,
               f"{node} to answer `ros2 lifecycle get`", procs=[launch])


def write_params(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    return path


def stop_launch(launch, log: Path) -> str:
    code = stop_node(launch)
    text = log.read_text()
    print(text)
    assert code == 0, f"ros2 launch ended with {code}"
    assert "Traceback" not in text
    return text


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_parameter_file_alone_keeps_its_values_and_ros2_param_explains_rejections(tmp_path):
    checkpoint = str(default_checkpoint_path())
    params_file = write_params(tmp_path / "robot.yaml", checkpoint=checkpoint, device="cpu", max_rate_hz=5,
                               vocabulary=["cup", "plate"])
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", f"params_file:={params_file}",
                         "autostart:=false"], log)
    try:
        wait_for_node("/synseg", launch, 30.0)
        values = parameters("/synseg")
        assert (values["checkpoint"], values["device"], values["max_rate_hz"]) == (checkpoint, "cpu", 5.0)
        assert isinstance(values["max_rate_hz"], float)                 # an integer in the file
        assert lifecycle("get", "/synseg").startswith("unconfigured")

        assert "threshold expects a floating-point number, got str 'abc'" in param_set("/synseg", "threshold", "abc")
        assert "quote them" in param_set("/synseg", "vocabulary", "[yes, no]")
        assert "Set parameter successful" in param_set("/synseg", "vocabulary", "[person, chair]")
        assert "Set parameter successful" in param_set("/synseg", "threshold", "1")
        assert run_ros2("param", "get", "/synseg", "threshold").stdout.strip() == "Double value is: 1.0"
        assert parameters("/synseg")["vocabulary"] == ["person", "chair"]
    finally:
        stop_launch(launch, log)


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_arguments_override_the_parameter_file_in_a_namespace(tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"")                   # exists; not loaded while the node stays unconfigured
    params_file = write_params(tmp_path / "robot.yaml", checkpoint=str(default_checkpoint_path()), device="cpu")
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", f"params_file:={params_file}",
                         f"checkpoint:={other}", "device:=cuda:1", "namespace:=/robot", "autostart:=false"], log)
    try:
        wait_for_node("/robot/synseg", launch, 30.0)
        values = parameters("/robot/synseg")
        assert (values["checkpoint"], values["device"]) == (str(other), "cuda:1")
    finally:
        stop_launch(launch, log)


@pytest.mark.ros
@needs_ros2
def test_a_missing_checkpoint_is_fatal_and_the_node_exits_1(tmp_path):
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", "checkpoint:=/nowhere/model.safetensors"],
                        log)
    try:
        wait_until(lambda: re.search(r"process has died .*exit code 1", log.read_text()), 60.0,
                   "the node to exit with code 1")
        launch.wait(timeout=30.0)           # the launch ends with it, and with an error (a supervisor sees it)
    finally:
        stop_node(launch)
        print(log.read_text())
    text = log.read_text()
    assert "[FATAL]" in text and "checkpoint /nowhere/model.safetensors: no such file" in text
    assert launch.returncode not in (0, None) and "exited with code 1" in text
    assert "Traceback" not in text


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_a_parameter_dump_starts_an_identical_node(tmp_path):
    """`ros2 param dump` writes an unset vocabulary or prompt_templates as null: a file made from a dump loads."""
    dumped = {}
    for run, params_file in (("first", None), ("second", tmp_path / "dump.yaml")):
        log = tmp_path / f"{run}.log"
        launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", "namespace:=/dumped", "autostart:=false",
                             *([f"params_file:={params_file}"] if params_file else [])], log)
        try:
            wait_for_node("/dumped/synseg", launch, 30.0)
            if params_file is None:
                assert "Set parameter successful" in param_set("/dumped/synseg", "threshold", "0.4")
                out = run_ros2("param", "dump", "/dumped/synseg")
                assert "prompt_templates" in out.stdout, out.stdout + out.stderr
                (tmp_path / "dump.yaml").write_text(out.stdout)
            dumped[run] = parameters("/dumped/synseg")
        finally:
            stop_launch(launch, log)
    assert dumped["second"] == dumped["first"] and dumped["first"]["threshold"] == 0.4


@pytest.mark.ros
@needs_ros2
def test_a_params_file_that_does_not_exist_ends_the_launch_naming_it(tmp_path):
    """launch_ros only warns about a missing parameter file and the node would run on its defaults."""
    out = run_ros2("launch", "synseg_ros", "segment.launch.py", f"params_file:={tmp_path / 'robot.yaml'}",
                   "autostart:=false", timeout=30.0)
    assert out.returncode != 0, out.stdout + out.stderr
    assert f"params_file {tmp_path / 'robot.yaml'}: no such file" in out.stdout + out.stderr
    assert "Unconfigured" not in out.stdout + out.stderr           # no node started


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_ros2_lifecycle_drives_the_node(tmp_path):
    """The fake-model node, unconfigured at start, through every transition with `ros2 lifecycle set`."""
    log = tmp_path / "node.log"
    node = start_node("synseg_ros.fake_node", ["--ros-args", "-r", "__ns:=/cli"], log)
    try:
        wait_for_node("/cli/synseg", node, 30.0)
        assert lifecycle("get", "/cli/synseg").startswith("unconfigured")
        for transition in ("configure", "activate", "deactivate", "cleanup", "configure", "activate"):
            assert "Transitioning successful" in lifecycle("set", "/cli/synseg", transition), transition
        assert lifecycle("get", "/cli/synseg").startswith("active")
        assert "Transitioning successful" in lifecycle("set", "/cli/synseg", "shutdown")
        assert node.wait(10) == 0                 # shutdown ends the process
    finally:
        stop_node(node)
        print(log.read_text())


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_shutdown_answers_the_caller_and_the_process_exits_0_every_time(tmp_path):
    """`ros2 lifecycle set shutdown` gets its reply, and the process ends cleanly, in every one of four tries.

    Both raced the process's own exit: the reply could be lost (the command waited forever) and a thread still
    inside rclpy when the interpreter finalised aborted the process ("terminate called without an active
    exception", exit code -6).
    """
    for attempt in range(4):
        log = tmp_path / f"node{attempt}.log"
        node = start_node("synseg_ros.fake_node", ["--ros-args", "-r", "__ns:=/down"], log)
        try:
            wait_for_node("/down/synseg", node, 30.0)
            assert "Transitioning successful" in lifecycle("set", "/down/synseg", "shutdown", attempts=1), attempt
            assert node.wait(10) == 0, (attempt, log.read_text())
        finally:
            stop_node(node)
        assert "terminate called" not in log.read_text()


@pytest.mark.ros
@needs_ros2
def test_ctrl_c_while_the_model_loads_ends_the_launch_at_once(tmp_path):
    """Ctrl-C while the node imports torch and loads the offline default model (about 12 s here): launch used to
    escalate to SIGTERM and SIGKILL (the node's exit code -9) and still exit 0."""
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", "device:=cpu"], log)
    code, took = interrupt_when_logged(launch, log, "Loading the model", timeout=30.0)
    text = log.read_text()
    assert code == 0 and took < 4.0, (code, took)
    assert "process has finished cleanly" in text and "Active" not in text and "Configured" not in text
    assert "[ERROR]" not in text and "Traceback" not in text


def descendants(pid: int) -> list[int]:
    """The processes started, directly or not, by ``pid``."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:             # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_launch_defaults_run_the_default_model_on_a_camera_with_frames_over_512_kb(tmp_path):
    """autostart (the default) configures and activates the node on the offline default model. With Fast DDS's
    stock settings most frames over 512 KB are lost unless the publisher has the larger shared-memory segment: the
    launch gives its profile to every process it starts, the camera stand-in included, whatever the caller's
    environment says."""
    folder = tmp_path / "camera"
    folder.mkdir()
    cv2.imwrite(str(folder / "frame.png"), np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8))
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", "image_topic:=/front/image", "device:=cpu",
                         f"camera_folder:={folder}"], log, env_without=FASTDDS_PROFILE_VARIABLE)
    try:
        wait_until_active("/synseg", launch)
        out = run_ros2("topic", "info", "/front/image")
        assert "Subscription count: 1" in out.stdout, out.stdout
        out = run_ros2("topic", "echo", "--once", "--field", "header.frame_id", "/synseg/masks", timeout=60.0)
        # `ros2 topic echo` may first report a message its own subscription lost ("A message was lost!!!"), which
        # is not the node's: the frame id is the line before the first message separator.
        assert re.search(r"^camera\n---$", out.stdout, re.M), out.stdout + out.stderr
        started = {" ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0")): environment(pid)
                   for pid in descendants(launch.pid)}
        profiles = {command.split()[1].rsplit("/", 1)[-1]: env.get(FASTDDS_PROFILE_VARIABLE)
                    for command, env in started.items() if "lib/synseg_ros/" in command}
        profile = str(ROS_INSTALL / "share" / "synseg_ros" / "config" / "fastdds_loopback.xml")
        assert profiles == {"synseg_node": profile, "image_folder_publisher": profile}, started.keys()
    finally:
        text = stop_launch(launch, log)
    assert "Configured in" in text and "Active: subscribed to /front/image" in text


@pytest.mark.ros
@pytest.mark.slow
@needs_ros2
def test_depth_and_compressed_arguments_subscribe_where_they_say(tmp_path):
    """A RealSense-like set of topics: compressed colour, aligned depth and its camera info."""
    log = tmp_path / "launch.log"
    launch = start_ros2(["launch", "synseg_ros", "segment.launch.py", "image_topic:=/cam/color/image_raw",
                         "image_transport:=compressed", "use_depth:=true", "depth_topic:=/cam/aligned_depth/image_raw",
                         "camera_info_topic:=/cam/aligned_depth/camera_info", "device:=cpu"], log)
    try:
        wait_until_active("/synseg", launch)
        values = parameters("/synseg")
        assert (values["use_depth"], values["image_transport"]) == (True, "compressed")
        for topic in ("/cam/color/image_raw/compressed", "/cam/aligned_depth/image_raw",
                      "/cam/aligned_depth/camera_info"):
            out = run_ros2("topic", "info", topic)
            assert "Subscription count: 1" in out.stdout, (topic, out.stdout)
    finally:
        stop_launch(launch, log)
