"""quant/fp8.py: quantize / dequantize against float64 references (tests/support/numerics.py has the
bounds): the round trip within the e4m3 rounding bound, per-row scales, saturation instead of NaN."""

from __future__ import annotations

import pytest
import torch
from support.numerics import DTYPES, E4M3_REL, E4M3_SUB_ABS, LAYERS, U, dequant64, rel_err

from quant import fp8
from quant.fp8 import FP8, dequantize, quantize
from tools import ltx2_fixture as LF

SEED = 7
CFG = LF.TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ref_weight(layer: str) -> torch.Tensor:
    """The true full-precision weight (float32 as generated), [out, in]."""
    return LF.reference_tensor(CFG, layer + ".weight", SEED, torch.float32)


# -- quantize / dequantize round trip ------------------------------------------------------------


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("layer", LAYERS)
def test_round_trip_within_e4m3_bound(layer, per_row):
    w = ref_weight(layer).double()
    codes, scale = quantize(ref_weight(layer), per_row=per_row)
    assert codes.dtype == FP8 and scale.dtype == torch.float32
    # The scale maps the amax (of the tensor or of each row) exactly to 448.
    amax = w.abs().amax(dim=1) if per_row else w.abs().amax()
    assert scale.shape == amax.shape
    assert torch.allclose(scale.double(), amax / 448.0, rtol=1e-6, atol=0)
    c = codes.double().abs()
    assert torch.equal(c.amax(dim=1) if per_row else c.amax(), torch.full_like(amax, 448.0))

    deq = dequant64(codes, scale)
    s = scale.double()[:, None] if per_row else scale.double()
    bound = torch.maximum(E4M3_REL * w.abs(), E4M3_SUB_ABS * s.expand_as(w)) * (1 + 1e-6)
    err = (deq - w).abs()
    assert bool((err <= bound).all()), f"max err/bound {float((err / bound).max()):.3f}"
    # Normal-range values: relative error <= 2^-4 elementwise.
    normal = (w.abs() / s) >= 2.0**-6
    assert float(normal.double().mean()) > 0.95
    assert float((err[normal] / w.abs()[normal]).max()) <= E4M3_REL * (1 + 1e-6)
    # Gaussian weights: ~0.026 relative Frobenius error (the fp8 floor); never 0 (it did quantize).
    r = rel_err(deq, w)
    assert 0.015 < r < 0.035, r
    # dequantize() into each compute dtype adds only that dtype's rounding.
    for dt in DTYPES:
        d = dequantize(codes, scale, dt)
        assert d.dtype == dt
        assert rel_err(d, deq) <= U[dt], (dt, rel_err(d, deq))


def test_per_row_scales_beat_per_tensor_on_uneven_rows():
    # Rows 1e5 apart (e4m3 normals span 448 / 2^-6 = 28672x): per-tensor scaling pushes the small
    # rows into e4m3 subnormals.
    w = ref_weight(LAYERS[0]).double()
    w[::2] *= 1e-5
    wt = w.float()
    r_tensor = rel_err(dequant64(*quantize(wt)), w)
    codes, scale = quantize(wt, per_row=True)
    rows = dequant64(codes, scale)
    small = slice(0, None, 2)
    assert rel_err(rows[small], w[small]) < 0.035
    assert rel_err(dequant64(*quantize(wt))[small], w[small]) > 0.1
    assert rel_err(rows, w) < 0.035 and r_tensor > rel_err(rows, w)


def test_quantize_saturates_instead_of_nan():
    # Values past 448 * scale cast to NaN in e4m3fn without the clamp.
    w = ref_weight(LAYERS[2])
    scale = w.abs().amax() / 448.0 / 4.0  # 4x too small: most of the range overflows
    codes, s = quantize(w, scale=scale)
    assert torch.equal(s, scale)
    c = codes.float()
    assert torch.isfinite(c).all()
    assert float(c.abs().max()) == 448.0
    over = (w.double() / scale.double()).abs() > 464  # beyond the rounding boundary of 448
    assert bool((c[over].abs() == 448).all()) and bool(over.any())


# -- large weights: quantize converts a slab of rows at a time on CPU ------------------------------


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize(
    "shape", [(1100, 640), (3, 300_000), (257, 1031)], ids=["many-slabs", "row-wider-than-slab", "ragged-last-slab"]
)
def test_slab_quantize_matches_whole_tensor_arithmetic_and_the_float64_bound(shape, per_row):
    g = torch.Generator().manual_seed(11)
    w = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.02).to(torch.bfloat16)
    w[-1, -1] = 3.0  # an outlier in the last slab sets the per-tensor scale
    assert w.numel() > fp8._QUANTIZE_SLAB  # the slab path, not the whole-tensor one
    codes, scale = quantize(w, per_row=per_row)
    # The definition, written out once here: fp32 divide by the scale, clamp to +-448, cast.
    s = scale[:, None] if per_row else scale
    expected = (w.float() / s).clamp(-448.0, 448.0).to(FP8)
    assert torch.equal(codes.view(torch.uint8), expected.view(torch.uint8))
    # And against float64 math: each code within the e4m3 rounding bound of the true value.
    w64, s64 = w.double(), (scale.double()[:, None] if per_row else scale.double())
    bound = torch.maximum(E4M3_REL * w64.abs(), E4M3_SUB_ABS * s64.expand_as(w64)) * (1 + 1e-6)
    assert bool(((dequant64(codes, scale) - w64).abs() <= bound).all())


def test_slab_quantize_saturates_in_every_slab():
    g = torch.Generator().manual_seed(12)
    w = torch.randn((2048, 512), generator=g)
    scale = w.abs().amax() / 448.0 / 4.0  # 4x too small: values overflow in every slab
    codes, _ = quantize(w, scale=scale)
    c = codes.float()
    assert torch.isfinite(c).all()
    rows = fp8._QUANTIZE_SLAB // w.shape[1]
    for start in range(0, w.shape[0], rows):  # every slab saturated its overflowing values
        part = c[start : start + rows]
        assert float(part.abs().max()) == 448.0
