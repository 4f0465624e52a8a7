"""The training losses: MCCL against hand-computed values (paper eq. 3-6), and every term of a fixed batch."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from synseg_model import mccl_loss
from training import tasks
from training.config import AbsentLoss, AnchorLoss, AreaLoss, LossConfig, MCCLLoss, PeakLoss
from training.text_cache import TextEmbeddingCache

LO, HI = 0.005, 0.995


def _vec(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_two_labels_by_hand():
    # Unit vectors at known angles make every cosine exact.
    t = torch.stack([_vec(1, 0), _vec(0, 1)])[None]
    f = torch.stack([_vec(1, 0), _vec(math.cos(1.0), math.sin(1.0))])[None]   # sim(f0,t0)=1 -> HI
    b = torch.stack([_vec(0, 1), _vec(1, 0)])[None]
    out = mccl_loss(f, b, t)
    def c(x: torch.Tensor, y: torch.Tensor) -> float:
        return min(max(float(torch.nn.functional.cosine_similarity(x, y, dim=0)), LO), HI)

    f0, f1, b0, b1, t0, t1 = f[0, 0], f[0, 1], b[0, 0], b[0, 1], t[0, 0], t[0, 1]
    align = -(math.log(c(f0, t0)) + math.log(c(f1, t1))) / 2
    cont = -(math.log(1 - c(f0, b0)) + math.log(1 - c(f1, b1))) / 2
    back = -(2 * math.log(c(b0, b1))) / 4            # pairs (0,1), (1,0); divided by N^2
    sep = -(2 * math.log(1 - c(f0, f1))) / 4
    for name, value in dict(align=align, cont=cont, back=back, sep=sep).items():
        assert out[name].item() == pytest.approx(value, rel=1e-12), name


def test_clipping_at_both_bounds():
    v = _vec(1.0, 0.0)
    same = torch.stack([v, v])[None]          # cosine 1 everywhere -> clipped to HI
    out = mccl_loss(same, same, same)
    assert out["align"].item() == pytest.approx(-math.log(HI))
    assert out["cont"].item() == pytest.approx(-math.log(1 - HI))
    opposite = -same                          # cosine -1 -> clipped to LO
    out = mccl_loss(same, opposite, opposite)
    assert out["align"].item() == pytest.approx(-math.log(LO))
    assert out["cont"].item() == pytest.approx(-math.log(1 - LO))


def test_single_label_has_no_pair_terms():
    f, b, t = (torch.randn(1, 1, 8, dtype=torch.float64) for _ in range(3))
    out = mccl_loss(f, b, t)
    assert out["back"].item() == 0.0 and out["sep"].item() == 0.0
    assert out["align"].item() > 0


def test_padding_mask_ignores_padded_slots():
    g = torch.Generator().manual_seed(0)
    f, b, t = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = mccl_loss(f, b, t, mask)
    first = mccl_loss(f[:1, :2], b[:1, :2], t[:1, :2])
    second = mccl_loss(f[1:, :1], b[1:, :1], t[1:, :1])
    for name in ("align", "cont", "back", "sep"):
        assert out[name].item() == pytest.approx((first[name].item() + second[name].item()) / 2, rel=1e-12)
    # Garbage in the padding changes nothing.
    f2 = f.clone()
    f2[0, 2] = 1e6
    again = mccl_loss(f2, b, t, mask)
    assert {k: v.item() for k, v in again.items()} == pytest.approx({k: v.item() for k, v in out.items()}, rel=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        mccl_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))


# Every term of a fixed batch on the tiny model, as computed before the loss options were regrouped by term
# (commit 38954b4: weights [1, 0.5, 2, 1], sim_clip [0.005, 0.9999], area 0.3, peak 0.5 and relative peak 0.7
# on 5% of the pixels, absent 2.0 with 2 labels and cosine bound 0.95, anchor 1.5, one min_peak 0.548 for both,
# visual projector input). The weighted terms the task returns; the trainer sums them.
PINNED = {"align": 2.6866214275360107, "cont": 4.6050872802734375, "back": 7.779456791467965e-05,
          "sep": 3.5817344188690186, "area": 0.1458144336938858, "peak": 0.27426281571388245,
          "peak_relative": 0.47509652376174927, "anchor": 1.0447962284088135, "absent": 1.712472677230835}


def test_every_term_of_a_fixed_batch_keeps_its_value(tiny_model):
    model = copy.deepcopy(tiny_model)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(3, 3, 64, 64, generator=g),
             "labels": [["cat", "dog"], ["cat"], ["tree", "sky", "dog"]],
             "label_mask": torch.tensor([[True, True, False], [True, False, False], [True, True, True]])}
    loss = LossConfig(mccl=MCCLLoss(align=1.0, cont=0.5, back=2.0, sep=1.0, sim_clip=[0.005, 0.9999],
                                    projector_input="visual"),
                      area=AreaLoss(weight=0.3), peak=PeakLoss(weight=0.5, fraction=0.05),
                      peak_relative=PeakLoss(weight=0.7, fraction=0.05),
                      absent=AbsentLoss(weight=2.0, labels=2, max_cosine=0.95, fraction=0.05, min_peak=0.548),
                      anchor=AnchorLoss(weight=1.5, min_peak=0.548))
    task = tasks.create_task("mccl", model, TextEmbeddingCache(model, ["a photo of a {}."]), loss).eval()
    with torch.no_grad():  # the trained model moves away from its frozen anchor
        for p in model.decoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    torch.manual_seed(5)  # L_absent draws its labels
    losses = task.training_forward(batch)
    assert list(losses) == list(PINNED)  # the order the trainer sums them in
    # One float32 rounding of slack, for other CPUs' kernels; on this machine they agree to the bit.
    assert {k: v.item() for k, v in losses.items()} == pytest.approx(PINNED, rel=1e-5, abs=1e-7)
