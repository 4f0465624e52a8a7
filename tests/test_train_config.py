"""Training config: YAML + dotted overrides parse; bad keys and values are rejected before any work."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.config import ConfigError, load_config
from training.train import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
CC12M = ROOT / "config" / "train_cc12m.yaml"
CC12M_PAPER = ROOT / "config" / "train_cc12m_paper.yaml"
MCCL = {"align": 1.0, "cont": 1.0, "back": 1.0, "sep": 1.0}


def test_overrides_parse_into_typed_values():
    cfg = load_config(TINY, ["optim.lr=1e-4", "train.steps=7", "data.classes=[grass, circle]",
                             "loss.mccl.cont=0", "model={clip_model: ViT-B-16, reduce_dim: 64}",
                             "val.options={short_side: 64}", "train.record_keys=true", "init_decoder=x.pth"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)  # "1e-4" is a YAML string
    assert cfg.train.steps == 7
    assert cfg.data.classes == ["grass", "circle"]
    assert cfg.loss.terms() == {"align": 1.0, "back": 1.0, "sep": 1.0}
    assert cfg.model == {"clip_model": "ViT-B-16", "reduce_dim": 64}
    assert cfg.val.options == {"short_side": 64}
    assert cfg.train.record_keys is True


def test_paper_settings_in_cc12m_config():
    cfg = load_config(CC12M_PAPER)
    assert cfg.task == "mccl" and cfg.init_checkpoint == "clipseg-rd64-refined" and cfg.model is None
    assert cfg.data.image_size == 224 and cfg.data.max_labels == 8
    assert cfg.optim.lr == pytest.approx(2e-4) and cfg.optim.weight_decay == pytest.approx(0.05)
    assert cfg.optim.warmup_steps == 1000
    assert cfg.loss.templates == ["a photo of a {}."]


def test_paper_exact_cc12m_config_trains_the_four_mccl_losses_and_nothing_else():
    cfg = load_config(CC12M_PAPER)
    assert cfg.loss.terms() == MCCL
    assert cfg.loss.mccl.sim_clip == [0.005, 0.995] and cfg.loss.mccl.projector_input == "conditional"
    assert cfg.optim.projector_warmup is None


def test_cc12m_recipe_is_the_paper_run_plus_its_deviations():
    recipe, paper = load_config(CC12M).to_dict(), load_config(CC12M_PAPER).to_dict()
    assert load_config(CC12M).loss.terms() == {**MCCL, "peak": 1.0, "peak_relative": 1.0, "anchor": 1.0, "absent": 1.0}
    assert recipe["optim"].pop("projector_warmup") == {"steps": 1000, "lr_mult": 10.0}
    assert recipe["loss"]["mccl"].pop("projector_input") == "visual"
    for name in ("peak", "peak_relative", "anchor", "absent"):
        recipe["loss"][name] = None
    for section in (paper["optim"], paper["loss"]["mccl"]):
        section.pop("projector_warmup", None)
        section.pop("projector_input", None)
    assert recipe == paper


def test_base_file_merges_under_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text(TINY.read_text())
    (tmp_path / "top.yaml").write_text("base: base.yaml\nloss: {peak: {weight: 2.0}}\ntrain: {steps: 3}\n")
    cfg = load_config(tmp_path / "top.yaml")
    assert cfg.train.steps == 3 and cfg.train.batch_size == 4  # the base's other keys stay
    assert cfg.loss.terms() == {**MCCL, "peak": 2.0}
    (tmp_path / "base.yaml").write_text("base: top.yaml\n")
    with pytest.raises(ConfigError, match="form a loop"):
        load_config(tmp_path / "top.yaml")


def test_absent_term_with_min_peak_zero_is_refused():
    """At min_peak 0 the starting model 'recognises' every label (a sigmoid is above 0), so no label is ever
    taken as absent and L_absent trains a term that is always 0."""
    with pytest.raises(ConfigError, match=r"'loss.absent.min_peak': must be in \(0, 1\]: at 0 .* none is ever absent"):
        load_config(TINY, ["loss.absent={weight: 1.0, min_peak: 0}"])
    assert load_config(TINY, ["loss.absent={weight: 1.0}"]).loss.absent.min_peak == 0.5


@pytest.mark.parametrize("overrides, message", [
    (["loss.peak={weight: 0}"], "'loss.peak.weight': must be > 0 (loss.peak: null turns the term off)"),
    (["loss.mccl.align=0", "loss.mccl.cont=0", "loss.mccl.back=0", "loss.mccl.sep=0"],
     "not all 0 (loss.mccl: null trains without MCCL)"),
    (["loss.mccl=null"], "'loss': no term is on"),
    (["loss.absent={weight: 1, max_cosine: -1}"], "every label is a near-synonym and none is ever absent"),
    (["loss.anchor={weight: 1, min_peak: 1}"], "'loss.anchor.min_peak': must be in [0, 1)"),
    (["loss.outside={weight: 1, frames: 0}"], "'loss.outside': takes nothing as absent"),
    (["loss.outside={weight: 1, words: /nowhere/words.txt}"], "'loss.outside.words': /nowhere/words.txt: file not"),
    (["loss.peak_relative={weight: 1, fraction: 0}"], "'loss.peak_relative.fraction': must be in (0, 1]"),
    (["optim.projector_warmup={steps: 0, lr_mult: 10}"], "'optim.projector_warmup.steps': must be at least 1"),
    (["optim.projector_warmup={lr_mult: 10}"], "'optim.projector_warmup.steps' is required"),
    (["loss.peak={fraction: 0.1}"], "'loss.peak.weight' is required"),
    (["task=dense_bce", "data.labels_dir=null", "loss.peak={weight: 1}"],
     "'loss.peak': task dense_bce trains on its per-pixel BCE alone"),
    (["task=dense_bce", "data.labels_dir=null", "loss.mccl.sep=0"], "'loss.mccl': task dense_bce"),
    (["task=dense_bce", "data.labels_dir=null", "optim.projector_warmup={steps: 2}"],
     "task dense_bce never trains the projector"),
    (["task=dense_bce"], "'data.labels_dir': task dense_bce reads its labels from the shards' seg.png"),
    (["data.dense_negatives=2"], "'data.dense_negatives': adds all-negative masks for task dense_bce"),
    (["loss.peak_weight=1"], "unknown config key 'loss.peak_weight' (known in this section: absent, anchor"),
    (["optim.decay_norm_and_bias=true"], "unknown config key 'optim.decay_norm_and_bias'"),
])
def test_options_that_would_do_nothing_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY, overrides)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("optim.lr=abc", "'optim.lr': expected a number"),
    ("optim.lr=-1", "'optim.lr': must be positive"),
    ("train.batch_size=2.5", "'train.batch_size': expected an integer"),
    ("train.steps=0", "'train.steps'"),
    ("train.record_keys=maybe", "expected true or false"),
    ("task=segment", "'task': must be one of"),
    ("loss.mccl.sim_clip=[0.5]", "'loss.mccl.sim_clip': needs two values"),
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
