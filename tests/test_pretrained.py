"""Models by name (synseg_model.pretrained), offline, from a Hugging Face cache written by the test."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_fixtures import CLIPSEG_COMMIT, CLIPSEG_REPO, repo_snapshot, use_hf_home, write_clipseg_repo

from synseg_model import (
    CheckpointError,
    Segmenter,
    SynSeg,
    card_summary,
    load_hf_clipseg,
    pretrained,
    resolve_checkpoint,
    save_checkpoint,
    weights,
)
from synseg_model.weights import HF_CONVERTER_VERSION

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
HUB_NAME = f"hf-hub:{CLIPSEG_REPO}"


@pytest.fixture(scope="module")
def clipseg_cache(tmp_path_factory):
    """(HF model, HF_HOME) of the fixture cache; tests that damage it work on a copy."""
    home = tmp_path_factory.mktemp("hf_home")
    model, _ = write_clipseg_repo(home)
    return model, home


@pytest.fixture
def offline(clipseg_cache, tmp_path, monkeypatch):
    """The fixture cache, offline, with an empty converted-model cache."""
    model, home = clipseg_cache
    env = use_hf_home(monkeypatch, home, tmp_path / "converted")
    return model, home, env


def test_hub_clipseg_equals_load_hf_clipseg_and_the_hf_model(offline):
    hf, home, _ = offline
    model = SynSeg.from_checkpoint(HUB_NAME)
    reference = load_hf_clipseg(repo_snapshot(home, CLIPSEG_REPO, CLIPSEG_COMMIT))
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    prompts = ["a photo of a cat.", "a dog", "traffic light"]
    for size in (64, 96):  # 96 resizes the 4x4 position grid to 6x6
        image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected = hf(input_ids=model._tokenizer(prompts), pixel_values=image.expand(3, -1, -1, -1)).logits
            logits = model(image, model.encode_prompts(prompts))[0]
        # The equivalence test's tolerance (tests/test_model.py): float32 rounding of the logit range.
        assert (logits - expected).abs().max().item() <= 1e-5 * expected.abs().max().item() + 1e-4
    card = model.model_card
    assert card["source"] == f"{HUB_NAME}@{CLIPSEG_COMMIT}" and card["converter_version"] == HF_CONVERTER_VERSION
    assert "not MCCL-trained" in card_summary(card)


def test_second_load_uses_the_converted_cache(offline, tmp_path, monkeypatch):
    first, _ = resolve_checkpoint(HUB_NAME)
    assert first == (tmp_path / "converted" / CLIPSEG_REPO.replace("/", "--") / CLIPSEG_COMMIT
                     / f"clipseg-v{HF_CONVERTER_VERSION}.safetensors")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(weights, "hf_clipseg_checkpoint", no_conversion)   # where the conversion comes from
    model = SynSeg.from_checkpoint("clipseg-rd64-refined")  # the registered name: same repository and commit
    assert resolve_checkpoint(HUB_NAME)[0] == first
    assert model.model_card["name"] == "clipseg-rd64-refined"  # the registered card, over the file's
    assert card_summary(model.model_card).startswith("clipseg-rd64-refined: CLIPSeg rd64-refined")
    segmenter = Segmenter.from_checkpoint("clipseg-rd64-refined", device="cpu", backend="torch")
    segmenter.set_vocabulary(["cat", "dog"])
    assert segmenter.segment(torch.zeros(40, 30, 3, dtype=torch.uint8).numpy()).masks.shape == (2, 40, 30)


def test_an_unreadable_converted_model_is_converted_again(offline):
    path, _ = resolve_checkpoint(HUB_NAME)
    path.write_bytes(path.read_bytes()[:1000])
    assert resolve_checkpoint(HUB_NAME)[0] == path
    SynSeg.from_checkpoint(path)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(CheckpointError, match="unknown model 'clipseg-rd65'; known: synseg-shapes, "
                                              "clipseg-rd64-refined, clipseg-rd64, clipseg-rd16"):
        SynSeg.from_checkpoint("clipseg-rd65")
    with pytest.raises(CheckpointError, match="expected hf-hub:ORG/REPO"):
        resolve_checkpoint("hf-hub:just-a-name")


def test_uncached_repository_offline_is_one_clear_error(offline):
    _, home, _ = offline
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("hf-hub:someone/absent-model")
    message = str(info.value)
    assert "hf-hub:someone/absent-model" in message and str(home / "hub") in message
    assert "HF_HUB_OFFLINE=1" in message and "python -m synseg_model.pretrained download" in message
    with pytest.raises(CheckpointError, match=r"clipseg-rd16 \(hf-hub:CIDAS/clipseg-rd16@a4d02d2"):
        resolve_checkpoint("clipseg-rd16")


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst, symlinks=True)
    return dst


def test_corrupt_cached_file_offline_is_one_clear_error(clipseg_cache, tmp_path, monkeypatch):
    home = _copy_tree(clipseg_cache[1], tmp_path / "home")
    use_hf_home(monkeypatch, home, tmp_path / "converted")
    weights = repo_snapshot(home, CLIPSEG_REPO, CLIPSEG_COMMIT) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"cached file .*model.safetensors is corrupt .*HF_HUB_OFFLINE=1, so "
                                              r"it cannot be fetched again"):
        SynSeg.from_checkpoint(HUB_NAME)


def test_corrupt_cached_file_is_fetched_again_when_online(clipseg_cache, tmp_path, monkeypatch):
    import huggingface_hub

    home = _copy_tree(clipseg_cache[1], tmp_path / "home")
    use_hf_home(monkeypatch, home, tmp_path / "converted", offline=False)
    weights = repo_snapshot(home, CLIPSEG_REPO, CLIPSEG_COMMIT) / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-100])
    calls = []

    def fake_download(repo, filename, revision=None, force_download=False, **kwargs):  # the Hub, as a stand-in
        calls.append((filename, force_download))
        path = repo_snapshot(home, repo, CLIPSEG_COMMIT) / filename
        if force_download:
            path.write_bytes(good)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(pretrained, "_unreachable_hub", lambda: None)       # the sandbox has no network
    SynSeg.from_checkpoint(HUB_NAME)
    assert ("model.safetensors", True) in calls


def test_a_repository_in_the_projects_format_loads_as_is(tiny_model, offline):
    _, home, _ = offline
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_checkpoint(tiny_model, repo_snapshot(home, "someone/synseg-tiny", commit) / "model.safetensors",
                    card={"name": "tiny", "summary": "a tiny random SynSeg"})
    model = SynSeg.from_checkpoint(f"hf-hub:someone/synseg-tiny@{commit}")
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in model.state_dict().items())
    assert model.model_card["source"] == f"hf-hub:someone/synseg-tiny@{commit}"
    assert card_summary(model.model_card) == "tiny: a tiny random SynSeg"


def test_registered_cards_and_the_command(offline, capsys):
    from synseg_model.pretrained.__main__ import main

    assert pretrained.list_pretrained()[0] == pretrained.DEFAULT_MODEL
    for name in pretrained.list_pretrained():
        card = pretrained.REGISTRY[name].card
        assert {"summary", "source", "licence", "training_data"} <= card.keys(), name
    assert "not MCCL-trained" in pretrained.REGISTRY["clipseg-rd64-refined"].card["summary"]
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "clipseg-rd64-refined" in listing and "not cached" in listing
    assert main(["info", "clipseg-rd64-refined"]) == 0
    assert "PhraseCut" in capsys.readouterr().out
    assert main(["info", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_command_downloads_from_the_cache_named_by_the_environment(offline, tmp_path):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, in a fresh process."""
    _, _, env = offline
    run = subprocess.run([sys.executable, "-m", "synseg_model.pretrained", "download", "clipseg-rd64-refined"],
                         cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ready" in run.stdout and str(tmp_path / "converted") in run.stdout
    assert "converting hf-hub:CIDAS/clipseg-rd64-refined" in run.stderr


@pytest.mark.slow
def test_training_and_evaluation_accept_hub_names(offline, tmp_path):
    import json

    from eval_fixtures import write_dataset
    from train_helpers import write_shards, write_sidecars

    from training.evaluate import main as evaluate
    from training.train import main as train

    shards = write_shards(tmp_path / "shards", shards=1, per_shard=4, size=(64, 64))
    write_sidecars(shards, tmp_path / "labels")
    result = train(["--config", str(ROOT / "config" / "train_tiny.yaml"), "model=null", f"init_checkpoint={HUB_NAME}",
                    f"data.shards={shards[0]}", f"data.labels_dir={tmp_path / 'labels'}", "train.steps=1",
                    f"train.out_dir={tmp_path / 'run'}"])
    assert result.step == 1 and result.model.model_card["source"].startswith(HUB_NAME)

    write_dataset("voc", tmp_path / "voc")
    out = tmp_path / "voc.json"
    assert evaluate(["--dataset", "voc", "--data-root", str(tmp_path / "voc"), "--checkpoint", HUB_NAME,
                     "--device", "cpu", "--json", str(out), "--no-progress", "--short-side", "32",
                     "--crop-size", "32", "--stride", "32"]) == 0
    assert json.loads(out.read_text())["num_images"] == 2
