"""The node and models by name: the checkpoint parameter takes names, the card's one-line summary is
logged, and the card's classes are the default vocabulary."""
from __future__ import annotations

import time

import numpy as np
import pytest
from hub_fixtures import use_hf_home, write_clipseg_repo
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from synseg_ros import params
from synseg_ros.segmenter import FakeSegmenter
from tests.ros_helpers import Probe, image_msg, stop_node
from tests.ros_processes import start_node


def test_checkpoint_parameter_takes_model_names():
    for name in ("", "clipseg-rd64-refined", "hf-hub:CIDAS/clipseg-rd64-refined", "hf-hub:me/model@0123abc"):
        params.check_checkpoint(name)   # resolved at configure; only a missing file is an error at once
    with pytest.raises(ValueError, match="no such file"):
        params.check_checkpoint("/no/such/model.safetensors")


def test_max_categories_default_is_the_runtimes():
    """The node's parameter table is imported without torch, so it cannot import the constant: it must agree."""
    from synseg_model.backends import DEFAULT_MAX_CATEGORIES

    assert params.SPECS["max_categories"].default == DEFAULT_MAX_CATEGORIES


def _configured(factory, overrides=()):
    from synseg_ros.node import SynSegNode

    node = SynSegNode(factory, parameter_overrides=list(overrides))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    return node


@pytest.mark.ros
def test_default_vocabulary_is_the_default_models_card(ros_context):
    from synseg_model import load_checkpoint
    from synseg_ros.segmenter import load_segmenter

    node = _configured(load_segmenter, [Parameter("device", value="cpu"), Parameter("backend", value="torch")])
    try:
        classes = load_checkpoint().model_card["classes"]
        assert node.get_parameter("vocabulary").value == classes
        assert node._segmenter.vocabulary == classes
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_a_model_without_classes_waits_for_a_vocabulary(ros_context):
    node = _configured(FakeSegmenter)
    try:
        assert node.get_parameter("vocabulary").type_ == Parameter.Type.NOT_SET
        assert node.set_parameters([Parameter("vocabulary", value=["red"])])[0].successful
        assert node._segmenter._labels == ["red"]
    finally:
        node.destroy_node()


@pytest.mark.ros
@pytest.mark.slow
def test_node_starts_on_a_named_model_from_the_hub_cache(ros_context, tmp_path, monkeypatch):
    """The README's robot: launch on clipseg-rd64-refined (offline, from the cache), then set a vocabulary."""
    from synseg_ros.msg import SegmentationMasks

    write_clipseg_repo(tmp_path / "hf")
    use_hf_home(monkeypatch, tmp_path / "hf", tmp_path / "converted")   # read by the node's process
    monkeypatch.setenv("SYNSEG_ENGINE_CACHE", str(tmp_path / "engines"))
    log = tmp_path / "node.log"
    proc = start_node("synseg_ros.node", ["--ros-args", "-r", "__ns:=/hub", "-r", "image:=/hub/image_raw",
                                          "-p", "autostart:=true", "-p", "checkpoint:=clipseg-rd64-refined",
                                          "-p", "device:=cpu", "-p", "backend:=torch"], log)
    probe = Probe("probe_hub", "/hub/image_raw", {"/hub/synseg/masks": SegmentationMasks}, target="/hub/synseg")
    try:
        probe.wait_for_node(timeout=180)       # torch, the conversion of the cached CLIPSeg, the warm-up
        assert probe.set_parameter("vocabulary", ["cat", "dog"]).successful
        frame = np.zeros((32, 40, 3), np.uint8)
        probe.publish_until(lambda: image_msg(frame, "rgb8", probe.now()),
                            lambda: probe.messages("/hub/synseg/masks"), timeout=60, what="masks")
        assert list(probe.messages("/hub/synseg/masks")[-1].labels) == ["cat", "dog"]
    finally:
        probe.close()
        code = stop_node(proc)
        text = log.read_text()
        print(text)
    assert code == 0
    assert "Model: clipseg-rd64-refined: CLIPSeg rd64-refined" in text and "No vocabulary" in text
    assert any((tmp_path / "converted" / "CIDAS--clipseg-rd64-refined").rglob("clipseg-v*.safetensors"))


@pytest.mark.ros
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "no_network"])
def test_a_named_model_that_cannot_be_had_fails_in_seconds(ros_context, tmp_path, monkeypatch, offline):
    """hf-hub:some/repo, not cached, without a network (the tests' sandbox has none): the node asked the Hub again
    and again (39-49 s), or with HF_HUB_OFFLINE=1 imported torch before it looked (16-31 s). Expected: one
    fatal line naming the cache and the way out, in under 5 s."""
    use_hf_home(monkeypatch, tmp_path / "hf", tmp_path / "converted", offline=offline)
    log = tmp_path / "node.log"
    started = time.monotonic()
    proc = start_node("synseg_ros.node", ["--ros-args", "-p", "checkpoint:=hf-hub:some/repo", "-p", "autostart:=true",
                                          "-p", "device:=cpu"], log)
    try:
        code = proc.wait(120)
        took = time.monotonic() - started
    finally:
        stop_node(proc)
        print(log.read_text())
    print(f"the node ended {took:.1f} s after it started")
    assert code == 1 and took < 5.0, (code, took)
    assert "hf-hub:some/repo is not in the Hugging Face cache" in log.read_text()
    assert ("HF_HUB_OFFLINE=1" if offline else "no connection to the Hub") in log.read_text()
