""""Trainable" is defined once, on the model: a module added there is optimised, checkpointed and exported."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from synseg_model import SynSeg, get_model_config, save_checkpoint
from training.config import load_config
from training.distributed import init_distributed
from training.tasks import create_task
from training.text_cache import TextEmbeddingCache
from training.train import Trainer

TINY = Path(__file__).resolve().parents[1] / "config" / "train_tiny.yaml"


class WithExtraHead(SynSeg):
    """SynSeg plus one more module, declared nowhere but here."""

    def __init__(self, config):
        super().__init__(config)
        self.extra_head = nn.Linear(3, 2)


def test_new_module_is_optimised_checkpointed_and_exported(tmp_path):
    torch.manual_seed(0)
    model = WithExtraHead(get_model_config("synseg-tiny"))
    extra = dict(model.extra_head.named_parameters())
    assert set(model.trainable_modules()) == {"decoder", "projector", "extra_head"}

    cfg = load_config(TINY, [f"train.out_dir={tmp_path}"])
    task = create_task(cfg.task, model, TextEmbeddingCache(model, cfg.loss.templates), cfg.loss)
    trainer = Trainer(cfg, init_distributed("cpu"), task, tmp_path)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in extra.values()} <= optimised
    assert not optimised & {id(p) for p in model.clip.parameters()}

    assert {"extra_head.weight", "extra_head.bias"} <= trainer.state_dict()["model"].keys()

    with torch.no_grad():
        model.extra_head.weight.fill_(0.25)
    path = save_checkpoint(model, tmp_path / "export.safetensors", include_clip=False)
    assert torch.equal(load_file(str(path))["extra_head.weight"], model.extra_head.weight)
    assert torch.equal(WithExtraHead.from_checkpoint(path).extra_head.weight, model.extra_head.weight)
