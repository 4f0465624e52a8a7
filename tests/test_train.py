"""`training.train` on CPU with the tiny model: a full run, tasks, NaN handling, checkpoints, SIGTERM + resume."""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import write_shards, write_sidecars

from synseg_model import SynSeg, get_model_config, load_checkpoint, mccl_loss
from synseg_model.losses import peak_loss
from training import tasks
from training.checkpoint import list_checkpoints
from training.config import AbsentLoss, AnchorLoss, AreaLoss, LossConfig, MCCLLoss, PeakLoss
from training.text_cache import TextEmbeddingCache
from training.train import EXPORT_NAME, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "train_tiny.yaml"
# Resume replays data, RNG, optimizer and scheduler exactly; on one CPU the float operations repeat in the
# same order, so the weights agree to rounding. The stated tolerance (absolute, per weight):
RESUME_ATOL = 1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """4 shards x 12 samples with seg.png (so activation stats are logged); one corrupt image."""
    root = tmp_path_factory.mktemp("tiny_data")
    paths = write_shards(root / "shards", shards=4, per_shard=12, size=(72, 64), seg=True, corrupt={"000010003"})
    write_sidecars(paths, root / "labels")
    return root


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY), f"data.shards={data}/shards/{{00000..00003}}.tar",
            f"data.labels_dir={data}/labels", f"train.out_dir={out}", *extra]


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if not k.startswith("clip.")}


def test_tiny_run_trains_logs_and_exports(data, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import training.evaluate

    calls = []

    def fake_evaluate(model, dataset, data_root, *, limit=None, device=None, **options):
        calls.append((dataset, limit, model.training))
        return {"dataset": dataset, "miou": 12.5, "per_class": {}}

    monkeypatch.setattr(training.evaluate, "evaluate_model", fake_evaluate)
    result = main(_argv(data, tmp_path, "train.steps=6", "train.log_every=3", "val.every=3", "val.dataset=voc",
                        f"val.data_root={tmp_path}", "val.limit=2"))
    assert result.step == 6 and result.stopped_by is None
    assert calls == [("voc", 2, True), ("voc", 2, True)]  # every 3 steps, on the training model
    assert result.skipped["corrupt"] == 1  # the corrupt JPEG was met once, skipped and counted
    exported = load_checkpoint(result.export_path)  # the foundation's format
    for key, value in exported.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key].cpu()), key
    assert (tmp_path / "config.yaml").is_file() and list_checkpoints(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"loss/align", "loss/cont", "loss/back", "loss/sep", "loss/total", "train/lr",
                "train/images_per_s", "skipped/corrupt", "skipped/no_labels", "train/nonfinite_steps",
                "activation/act_on", "activation/act_off", "val/miou"}
    assert expected <= tags
    assert all(math.isfinite(e.value) for e in events.Scalars("loss/total"))


def test_dense_bce_trains_decoder_only(data, tmp_path):
    result = main(_argv(data, tmp_path, "task=dense_bce", "data.labels_dir=null", "data.classes=[grass, water]",
                        "train.steps=3", "train.log_every=3"))
    assert result.step == 3
    torch.manual_seed(0)  # train.seed: the run built its model right after this
    initial = SynSeg(get_model_config("synseg-tiny")).state_dict()
    trained = _trainable(result.export_path)
    # The projector serves MCCL only: frozen in dense_bce. The decoder moved.
    assert all(torch.equal(trained[k], initial[k]) for k in trained if k.startswith("projector."))
    assert any(not torch.equal(trained[k], initial[k]) for k in trained if k.startswith("decoder."))


def test_task_losses_match_their_definitions(tiny_model):
    model = copy.deepcopy(tiny_model).eval()  # no dropout: both paths see the same network
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": [["cat", "dog"], ["cat"]],
             "label_mask": torch.tensor([[True, True], [True, False]])}
    cache = TextEmbeddingCache(model, ["a photo of a {}."])
    task = tasks.create_task("mccl", model, cache, LossConfig(mccl=MCCLLoss(align=1.0, cont=0.0, back=2.0, sep=1.0)))
    losses = task.training_forward(batch)
    assert set(losses) == {"align", "back", "sep"}  # a zero weight removes its term
    out = model(batch["image"], cache.batch_embeddings(batch["labels"]), return_synergy=True)
    ref = mccl_loss(out.fg, out.bg, cache.batch_embeddings(batch["labels"]), batch["label_mask"])
    assert torch.allclose(losses["back"], 2.0 * ref["back"]) and torch.allclose(losses["align"], ref["align"])

    masks = torch.zeros(2, 2, 64, 64)
    masks[:, 0, :32] = 1.0
    dense = dict(batch, masks=masks, mask_valid=torch.ones(2, 2, dtype=torch.bool),
                 pixel_valid=torch.ones(2, 64, 64, dtype=torch.bool))
    dense["pixel_valid"][:, :, :8] = False
    bce_task = tasks.create_task("dense_bce", model, cache, LossConfig())
    bce = bce_task.training_forward(dense)["bce"]
    logits = model(dense["image"], cache.batch_embeddings(dense["labels"]))
    keep = dense["label_mask"][:, :, None, None] & dense["pixel_valid"][:, None]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep.expand_as(logits)],
                                                                    masks[keep.expand_as(masks)])
    assert torch.allclose(bce, expected, atol=1e-6)
    stats = bce_task.activation_stats(dense)
    assert 0 < stats["act_on"] < 1 and 0 < stats["act_off"] < 1


def test_stabiliser_terms_area_and_anchor(tiny_model):
    model = copy.deepcopy(tiny_model).eval()
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": [["cat", "dog"], ["cat"]],
             "label_mask": torch.tensor([[True, True], [True, False]])}
    cache = TextEmbeddingCache(model, ["a photo of a {}."])
    loss = LossConfig(area=AreaLoss(weight=0.5), anchor=AnchorLoss(weight=2.0, min_peak=0.0))
    task = tasks.create_task("mccl", model, cache, loss)
    # The anchor is a frozen copy of the starting model that shares its CLIP and stays in eval mode.
    assert task.anchor.clip is model.clip and task.anchor.decoder is not model.decoder
    assert not any(p.requires_grad for p in task.anchor.decoder.parameters())
    assert not task.train().anchor.training
    task.eval()  # no dropout: the task and the reference below see the same network
    logits = model(batch["image"], cache.batch_embeddings(batch["labels"]))
    real = batch["label_mask"][:, :, None, None].expand_as(logits)
    losses = task.training_forward(batch)
    assert torch.allclose(losses["area"], 0.5 * torch.sigmoid(logits)[real].reshape(3, -1).mean())
    # Unchanged weights: L_anchor is the maps' own binary entropy, and its gradient is zero.
    p = torch.sigmoid(logits)[real]
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    assert torch.allclose(losses["anchor"], 2.0 * entropy, atol=1e-5)
    losses["anchor"].backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in model.decoder.parameters())
    with torch.no_grad():  # the trained model moves; the anchor does not
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert task.training_forward(batch)["anchor"] > losses["anchor"] + 1e-3


def test_open_vocabulary_terms_peak_absent_and_confident_anchor(tiny_model):
    model = copy.deepcopy(tiny_model).eval()
    torch.manual_seed(0)
    batch = {"image": torch.randn(3, 3, 64, 64), "labels": [["cat", "dog"], ["cat"], ["tree"]],
             "label_mask": torch.tensor([[True, True], [True, False], [True, False]])}
    cache = TextEmbeddingCache(model, ["a photo of a {}."])
    loss = LossConfig(mccl=MCCLLoss(projector_input="visual"), peak=PeakLoss(weight=1.0, fraction=0.05),
                      absent=AbsentLoss(weight=1.0, labels=2, max_cosine=1.0, min_peak=1.0),
                      anchor=AnchorLoss(weight=1.0, min_peak=0.0))
    task = tasks.create_task("mccl", model, cache, loss).eval()
    logits = model(batch["image"], cache.batch_embeddings(batch["labels"]))
    top = logits.flatten(2).topk(round(0.05 * 64 * 64), dim=-1).values                      # (B, K, n)
    expected = -torch.nn.functional.logsigmoid(top).mean(-1)[batch["label_mask"]].mean()
    assert torch.allclose(task.training_forward(batch)["peak"], expected, atol=1e-6)

    # Absent: each image gets labels of the others that it does not name (with the cosine bound at 1, only its
    # own labels are excluded); near-synonyms never count.
    names, mask = task.absent_candidates(batch["labels"])
    assert mask.tolist() == [[True, False], [True, True], [True, True]]
    assert names[0][0] == "tree" and set(names[1]) == {"dog", "tree"} and set(names[2]) == {"cat", "dog"}
    loss.absent.max_cosine = -1.0  # every pair counts as near-synonyms: nothing is absent
    assert not task.absent_candidates(batch["labels"])[1].any()
    assert "absent" not in task.training_forward(batch)
    loss.absent.max_cosine = 1.0
    # What the starting model recognises in an image (its map peaks above the term's min_peak) is never taken
    # as absent, and only that is anchored; each term has its own threshold. At 1 no label is recognised, near 0
    # every one is (the config refuses 0 for L_absent: the term would always be 0).
    losses = task.training_forward(batch)
    assert losses["absent"] > 0 and losses["anchor"] > 0
    losses["absent"].backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.decoder.parameters())
    loss.absent.min_peak, loss.anchor.min_peak = 1e-6, 1 - 1e-6
    losses = task.training_forward(batch)
    assert losses["absent"] == 0 and losses["anchor"] == 0


def test_outside_term_pushes_down_drawn_words_and_frames_with_no_protection(tiny_model, tmp_path):
    """L_outside: the image's drawn words and the frames' labels are sure negatives; the starting model's
    recognising them (which would protect a label from L_absent) changes nothing."""
    from training.config import OutsideLoss
    from training.outside import random_frames

    model = copy.deepcopy(tiny_model).eval()
    torch.manual_seed(0)
    words = tmp_path / "words.txt"
    words.write_text("# a comment\nlamp\n\nteapot\n")
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": [["cat"], ["tree"]],
             "label_mask": torch.tensor([[True], [True]])}
    cache = TextEmbeddingCache(model, ["a photo of a {}."])
    options = OutsideLoss(weight=1.0, words=str(words), labels=2, frames=0)
    task = tasks.create_task("mccl", model, cache, LossConfig(mccl=None, outside=options)).eval()
    assert task.outside_words == ["lamp", "teapot"]
    torch.manual_seed(1)
    value = task.training_forward(batch)["outside"]
    torch.manual_seed(1)
    drawn = [task._draw_words(2) for _ in range(2)]
    logits = model(batch["image"], cache.batch_embeddings(drawn))
    top = logits.flatten(2).topk(round(0.02 * 64 * 64), dim=-1).values
    assert torch.allclose(value, torch.nn.functional.softplus(top).mean(), atol=1e-5)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.decoder.parameters())
    # Frames only: every label of the batch is absent from them.
    options.words, options.frames = None, 3
    task = tasks.create_task("mccl", model, cache, LossConfig(mccl=None, outside=options)).eval()
    assert task.training_forward(batch)["outside"] > 0
    frames = random_frames(3, 16, torch.Generator().manual_seed(0))
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == torch.uint8
    assert (frames[0] == frames[0, 0, 0]).all() and frames[1].float().std() > 1 and frames[2].unique().numel() > 2


def test_relative_peak_pulls_a_label_up_where_it_leads_not_where_its_map_is_highest():
    """L_peak's relative pixels: where the label's map most exceeds the image's other labels' maps."""
    logits = torch.full((1, 3, 4, 4), -4.0)
    logits[0, 0, :2] = 2.0           # label 0 ("circle"): the top half
    logits[0, 1, :2] = 1.0           # label 1 ("wood"), new: highest on the circle, and leads in the bottom half
    logits[0, 1, 2:] = -1.0
    logits[0, 2] = 9.0               # a padding slot: never a rival
    logits.requires_grad_(True)
    mask = torch.tensor([[True, True, False]])
    peak_loss(logits, mask, 0.5, relative=True).backward()
    wood = logits.grad[0, 1]
    assert (wood[2:] < 0).all() and (wood[:2] == 0).all()   # pulled up (descent) in the bottom half only
    logits.grad = None
    peak_loss(logits, mask, 0.5).backward()
    assert (logits.grad[0, 1, :2] < 0).all() and (logits.grad[0, 1, 2:] == 0).all()   # own highest: the top
    alone = torch.zeros(1, 2, 2, 2, requires_grad=True)      # a label alone in its image: its own map decides
    peak_loss(alone, torch.tensor([[True, False]]), 0.25, relative=True).backward()
    assert (alone.grad[0, 0] != 0).sum() == 1


def test_text_cache_encodes_each_label_once(tiny_model):
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model

        def encode_text(self, labels, templates=None):
            calls.append(list(labels))
            return tiny_model.encode_text(labels, templates)

    cache = TextEmbeddingCache(Counting(), capacity=2)
    first = cache.batch_embeddings([["cat", "dog"], ["cat"]])
    assert first.shape == (2, 2, tiny_model.text_dim) and torch.equal(first[1, 1], torch.zeros(tiny_model.text_dim))
    assert torch.equal(first[0, 0], first[1, 0])
    cache.embed(["dog", "cat"])
    assert calls == [["cat", "dog"]] and cache.hit_rate == pytest.approx(3 / 5)  # 3 of 5 lookups hit
    cache.embed(["bird"])  # capacity 2: the least recently used ("dog") is evicted
    cache.embed(["dog"])
    assert calls[-1] == ["dog"]


def test_nonfinite_losses_are_skipped_then_stop_the_run(data, tmp_path, monkeypatch):
    original = tasks.MCCLTask.training_forward
    calls = {"n": 0}

    def sometimes_nan(self, batch):
        calls["n"] += 1
        losses = original(self, batch)
        if calls["n"] in (2, 3):
            losses["align"] = losses["align"] * float("nan")
        return losses

    monkeypatch.setattr(tasks.MCCLTask, "training_forward", sometimes_nan)
    result = main(_argv(data, tmp_path / "a", "train.steps=4"))
    assert result.step == 4 and result.nonfinite_steps == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    monkeypatch.setattr(tasks.MCCLTask, "training_forward",
                        lambda self, batch: {"align": torch.tensor(float("inf"))})
    with pytest.raises(RuntimeError, match="3 consecutive non-finite losses or gradients"):
        main(_argv(data, tmp_path / "b", "train.max_nonfinite=3"))


def test_truncated_latest_checkpoint_falls_back_with_a_warning(data, tmp_path, caplog):
    main(_argv(data, tmp_path, "train.steps=4", "train.ckpt_every=2"))
    latest = list_checkpoints(tmp_path)[-1]
    assert latest.name == "step_00000004.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        result = main(_argv(data, tmp_path, "train.steps=6", "train.ckpt_every=2", "--resume"))
    assert any("step_00000004.pt is unreadable" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert any("resumed from" in r.getMessage() and "step_00000002.pt" in r.getMessage() for r in caplog.records)
    assert result.step == 6


@pytest.mark.slow
def test_sigterm_then_resume_equals_an_uninterrupted_run(data, tmp_path):
    steps = "train.steps=10"
    common = ("data.workers=2", "train.log_every=1", "train.ckpt_every=100")
    whole = main(_argv(data, tmp_path / "whole", steps, *common))

    out = tmp_path / "stopped"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *_argv(data, out, steps, *common)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "step 2/10" in line:
            proc.send_signal(signal.SIGTERM)
            break
    tail = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, tail
    stopped_at = int(list_checkpoints(out)[-1].stem.split("_")[1])
    assert 2 <= stopped_at < 10 and not (out / EXPORT_NAME).exists()

    resumed = main(_argv(data, out, steps, *common, "--resume"))
    assert resumed.step == 10
    a, b = _trainable(whole.export_path), _trainable(resumed.export_path)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= RESUME_ATOL, f"resumed weights differ by {worst}"


def test_projector_warmup_freezes_the_decoder_then_resumes_exactly(data, tmp_path):
    common = ("train.steps=6", "train.ckpt_every=1", "train.keep_checkpoints=10",
              "optim.projector_warmup={steps: 3, lr_mult: 10}", "optim.warmup_steps=2")
    whole = main(_argv(data, tmp_path / "whole", *common))
    torch.manual_seed(0)  # as training.train builds its model: the same seed gives the same initial weights
    start = SynSeg(get_model_config("synseg-tiny")).state_dict()
    states = {int(p.stem.split("_")[1]): torch.load(p, weights_only=True) for p in list_checkpoints(tmp_path / "whole")}
    for step in (1, 2, 3):
        model = states[step]["model"]
        assert all(torch.equal(model[k], start[k]) for k in model if k.startswith("decoder.")), step
        assert any(not torch.equal(model[k], start[k]) for k in model if k.startswith("projector.")), step
    assert any(not torch.equal(states[4]["model"][k], start[k]) for k in start if k.startswith("decoder."))

    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)  # a run stopped inside the warm-up, at step 2
    shutil.copy(list_checkpoints(tmp_path / "whole")[1], out / "checkpoints")
    resumed = main(_argv(data, out, *common, "--resume"))
    a, b = _trainable(whole.export_path), _trainable(resumed.export_path)
    # A resumed run agrees with the whole one to the last bits of float32, not to all of them: the text cache
    # encodes the labels it misses in one batch, and a resumed run's first batches group them differently
    # (1e-7 after one step). Adam divides each update by the root of its second moment, so for a weight whose
    # gradient is near zero (here the last bias) those bits become 4e-5, 3% of how far it moved. A resume
    # that restarted the warm-up or lost its schedule would differ by about the whole movement.
    for k in a:
        moved = (a[k] - start[k]).abs().max().item()
        assert (a[k] - b[k]).abs().max().item() <= RESUME_ATOL + 0.05 * moved, (k, moved)


def test_projector_warmup_schedule():
    from training.config import config_from_dict
    from training.train import build_optimizer, build_scheduler

    cfg = config_from_dict({"model": "synseg-tiny", "data": {"shards": "x", "labels_dir": "y"}, "train": {"steps": 14},
                            "optim": {"lr": 1.0, "warmup_steps": 2, "projector_warmup": {"steps": 4, "lr_mult": 10.0}}})
    decoder, projector = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = build_optimizer(cfg, [decoder, projector], [projector])
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(14):
        lrs.append({g["role"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert [lr["decoder"] for lr in lrs[:4]] == [0.0] * 4
    assert [lr["projector"] for lr in lrs[:4]] == [5.0, 10.0, 10.0, 10.0]   # linear warm-up to 10 x lr
    # then the usual schedule for both, from its own warm-up, over the remaining 10 steps
    assert [lr["decoder"] for lr in lrs[4:6]] == [0.5, 1.0] and lrs[4]["projector"] == 0.5
    assert lrs[-1]["decoder"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_logging_in_process_is_not_doubled(tmp_path):
    """Run in-process by a caller that already logs to stderr (the shapes pipeline), each line appears once."""
    import io

    from training.distributed import DistInfo
    from training.train import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    caller = logging.StreamHandler(stream)
    root.handlers = [caller]
    try:
        info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
        for _ in range(2):                      # two runs in one process
            setup_logging(tmp_path, info)
        logging.getLogger("training.train").info("one line")
        assert stream.getvalue().count("one line") == 1
        assert [type(h) for h in root.handlers] == [logging.StreamHandler, logging.FileHandler]
        assert (tmp_path / "train.log").read_text().count("one line") == 1
    finally:
        for handler in root.handlers[1:]:
            handler.close()
        root.handlers, root.level = saved
