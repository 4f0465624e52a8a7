"""Training config: YAML + dotted overrides parse; bad keys and values are rejected before any work."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, load_config
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
CC12M = ROOT / "config" / "train_cc12m.yaml"


def test_overrides_parse_into_typed_values():
    cfg = load_config(TINY, ["optim.lr=1e-4", "train.steps=7", "data.classes=[grass, circle]",
                             "loss.weights=[1, 0, 1, 1]", "model={clip_model: ViT-B-16, reduce_dim: 64}",
                             "val.options={short_side: 64}", "train.record_keys=true", "init_decoder=x.pth"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)  # "1e-4" is a YAML string
    assert cfg.train.steps == 7
    assert cfg.data.classes == ["grass", "circle"]
    assert cfg.loss.weights == [1.0, 0.0, 1.0, 1.0]
    assert cfg.model == {"clip_model": "ViT-B-16", "reduce_dim": 64}
    assert cfg.val.options == {"short_side": 64}
    assert cfg.train.record_keys is True


def test_paper_settings_in_cc12m_config():
    cfg = load_config(CC12M)
    assert cfg.task == "mccl" and cfg.init_checkpoint == "clipseg-rd64-refined" and cfg.model is None
    assert cfg.data.image_size == 224 and cfg.data.max_labels == 8
    assert cfg.optim.lr == pytest.approx(2e-4) and cfg.optim.weight_decay == pytest.approx(0.05)
    assert cfg.optim.warmup_steps == 1000 and cfg.loss.weights == [1.0, 1.0, 1.0, 1.0]
    assert cfg.loss.templates == ["a photo of a {}."]


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("optim.lr=abc", "'optim.lr': expected a number"),
    ("optim.lr=-1", "'optim.lr': must be positive"),
    ("train.batch_size=2.5", "'train.batch_size': expected an integer"),
    ("train.steps=0", "'train.steps'"),
    ("train.record_keys=maybe", "expected true or false"),
    ("task=segment", "'task': must be one of"),
    ("loss.weights=[1, 1]", "four weights"),
    ("loss.templates=[a photo]", "placeholder"),
    ("train.precision=fp8", "'train.precision'"),
    ("val.every=10", "'val.dataset': is required"),
    ("init_checkpoint=x.safetensors", "either a model"),
    ("data=3", "section 'data' must be a mapping"),
    ("noequals", "must look like key=value"),
])
def test_bad_values_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")) as info:
        load_config(TINY, [override])
    assert "train_tiny.yaml" in str(info.value) or "key=value" in str(info.value)


def test_main_rejects_bad_model_and_data_before_any_work(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown SynSeg model"):
        main(["--config", str(TINY), "model=no-such-model", f"train.out_dir={out}"])
    with pytest.raises(ConfigError, match="matches no file"):
        main(["--config", str(TINY), f"data.shards={tmp_path}/none-*.tar", f"train.out_dir={out}"])
    with pytest.raises(ConfigError, match="unknown SynSegConfig key"):
        main(["--config", str(TINY), "model={clip_modle: x}", f"train.out_dir={out}"])
    assert not out.exists()  # nothing was written


def test_print_config_shows_resolved_values(capsys):
    assert main(["--config", str(TINY), "--print-config", "train.steps=3"]) is None
    assert "steps: 3" in capsys.readouterr().out
