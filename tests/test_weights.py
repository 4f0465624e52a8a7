"""Weights I/O: CLIPSeg decoder files, the project checkpoint format and its errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from synseg_model import CheckpointError, SynSeg, create_model, load_checkpoint, load_clipseg_decoder, save_checkpoint

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "clipseg"


@pytest.fixture(scope="module")
def vit_b16_models():
    return {kind: create_model("synseg-vit-b-16" if kind == "refined" else "synseg-vit-b-16-uni",
                               clip_pretrained=None) for kind in ("uni", "refined")}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uni", "refined"])
def test_real_clipseg_files_load(vit_b16_models, kind):
    path = FIXTURES / ("rd64-uni.pth" if kind == "uni" else "rd64-uni-refined.pth")
    if not FIXTURES.is_dir():
        pytest.skip(f"CLIPSeg fixtures not found at {FIXTURES}")
    model = vit_b16_models[kind]
    load_clipseg_decoder(model, path)
    file = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in model.decoder.state_dict().items():
        assert torch.equal(value, file[key]), key
    # Every tensor of the file was used, except CLIPSeg's unused ``reduce`` layer.
    assert {k for k in file if not k.startswith("reduce.")} == set(model.decoder.state_dict())


@pytest.mark.slow
def test_clipseg_file_with_wrong_upsampler_is_named(vit_b16_models):
    if not FIXTURES.is_dir():
        pytest.skip(f"CLIPSeg fixtures not found at {FIXTURES}")
    with pytest.raises(CheckpointError, match="rd64-uni-refined.pth.*'refined' upsampler"):
        load_clipseg_decoder(vit_b16_models["uni"], FIXTURES / "rd64-uni-refined.pth")


def test_checkpoint_round_trip_is_bit_exact(tiny_model, tmp_path):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p))
    card = {"training_data": "unit test", "steps": 3, "metrics": {"miou": 1.5}}
    path = save_checkpoint(model, tmp_path / "m.safetensors", card=card)
    loaded = SynSeg.from_checkpoint(path)
    assert loaded.model_card == {**card, "summary": "no summary in the model card"}  # every card gets one
    assert loaded.config.to_dict() == model.config.to_dict()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_half_precision_clip_loads_as_float32(tiny_model, tmp_path):
    full = save_checkpoint(tiny_model, tmp_path / "f32.safetensors")
    half = save_checkpoint(tiny_model, tmp_path / "f16.safetensors", clip_dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_checkpoint(half)
    ours, theirs = tiny_model.state_dict(), loaded.state_dict()
    assert all(theirs[k].dtype == ours[k].dtype for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("clip."))  # heads exact
    torch.testing.assert_close(theirs["clip.visual.conv1.weight"], ours["clip.visual.conv1.weight"],
                               rtol=1e-3, atol=1e-4)


def test_checkpoint_without_clip_holds_only_trainable(tmp_path):
    model = create_model("synseg-tiny")
    path = save_checkpoint(model, tmp_path / "heads.safetensors", include_clip=False)
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("decoder.", "projector.")) for k in keys)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: file not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_checkpoint_is_named(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.safetensors"):
        load_checkpoint(path)


def test_mismatched_checkpoint_names_key_and_shapes(tiny_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["decoder.film_mul.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"m.safetensors: shape mismatch for 'decoder.film_mul.weight'"):
        load_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))
    path = tmp_path / "evil.pth"
    torch.save({"film_mul.weight": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_clipseg_decoder(create_model("synseg-tiny"), path)
