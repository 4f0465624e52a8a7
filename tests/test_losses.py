"""MCCL losses against hand-computed values (method.md equations (3)-(7))."""
from __future__ import annotations

import math

import pytest
import torch

from synseg_model import mccl_loss

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
    assert out["total"].item() == pytest.approx(align + cont + back + sep, rel=1e-12)


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
    for name in ("align", "cont", "back", "sep", "total"):
        assert out[name].item() == pytest.approx((first[name].item() + second[name].item()) / 2, rel=1e-12)
    # Garbage in the padding changes nothing.
    f2 = f.clone()
    f2[0, 2] = 1e6
    assert mccl_loss(f2, b, t, mask)["total"].item() == pytest.approx(out["total"].item(), rel=1e-12)


@pytest.mark.parametrize("off", range(4))
def test_each_weight_at_zero(off):
    g = torch.Generator().manual_seed(1)
    f, b, t = (torch.randn(2, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    weights = [1.0] * 4
    weights[off] = 0.0
    out = mccl_loss(f, b, t, weights=weights)
    names = ["align", "cont", "back", "sep"]
    expected = sum(out[n].item() for i, n in enumerate(names) if i != off)
    assert out["total"].item() == pytest.approx(expected, rel=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        mccl_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))
