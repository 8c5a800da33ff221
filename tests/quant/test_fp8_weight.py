"""quant/fp8.Fp8Weight against float64 references: the amax maps to 448, every code is within
e4m3's rounding of the true weight, re-quantizing keeps the granularity and the input scale."""

from __future__ import annotations

import pytest
import torch

from quant.fp8 import FP8, Fp8Weight

E4M3_MAX = 448.0
# e4m3: 3 mantissa bits, so a normal value rounds within 2^-4 of itself; below 2^-6 (subnormals)
# the spacing is 2^-9, so the absolute error is within 2^-10 (both in units of the scale).
REL, SUB = 2.0**-4, 2.0**-10
MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7, torch.float16: 10}


def weight(out=48, inp=64, seed=0, row_spread=True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    if row_spread:  # rows of very different magnitudes: where per-row scales matter
        w *= torch.logspace(-5, 1, out, dtype=torch.float64)[:, None]
    return w


def amax64(w: torch.Tensor, per_row: bool) -> torch.Tensor:
    return w.abs().amax(dim=1) if per_row else w.abs().max()


def within_e4m3(fp8: Fp8Weight, w: torch.Tensor) -> None:
    s = fp8.scale.double()
    s = s[:, None] if s.dim() == 1 else s
    true = fp8.codes.double() * s
    err = (true - w).abs()
    bound = torch.maximum(REL * w.abs(), SUB * s.expand_as(w))
    assert bool((err <= bound * (1 + 1e-6)).all()), float((err / bound).max())


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_quantize_maps_amax_to_448_and_rounds_within_e4m3(per_row):
    w = weight()
    fp8 = Fp8Weight.quantize(w.float(), per_row)
    assert fp8.codes.dtype == FP8 and fp8.scale.dtype == torch.float32 and fp8.per_row is per_row
    assert tuple(fp8.scale.shape) == ((48,) if per_row else ())
    ref_scale = amax64(w.float().double(), per_row) / E4M3_MAX
    assert torch.allclose(fp8.scale.double(), ref_scale, rtol=2e-7, atol=0)
    peak = fp8.codes.double().abs().amax(dim=1) if per_row else fp8.codes.double().abs().max()
    assert bool((peak == E4M3_MAX).all())  # each amax lands exactly on the e4m3 maximum
    within_e4m3(fp8, w.float().double())
    assert fp8.input_scale is None


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_is_codes_times_scale_in_the_dtype(per_row, dtype):
    fp8 = Fp8Weight.quantize(weight(row_spread=False).float(), per_row)
    s = fp8.scale.double()
    ref = fp8.codes.double() * (s[:, None] if per_row else s)
    got = fp8.dequantize(dtype)
    assert got.dtype == dtype and got.shape == (48, 64)
    # One rounding into `dtype` (relative half an ulp of its mantissa).
    half_ulp = 2.0 ** -(MANTISSA_BITS[dtype] + 1)
    assert bool(((got.double() - ref).abs() <= half_ulp * ref.abs() * (1 + 1e-9)).all())


def test_per_row_scales_keep_small_rows_accurate():
    w = weight()
    err = {}
    for per_row in (False, True):
        fp8 = Fp8Weight.quantize(w.float(), per_row)
        small = fp8.dequantize(torch.float64)[:4] - w.float().double()[:4]
        err[per_row] = float(small.norm() / w[:4].norm())
    assert err[True] < 0.04 and err[False] > 0.5, err  # per tensor, rows 1e-5 of the amax vanish


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_requantize_fresh_scale_same_granularity_keeps_input_scale(per_row):
    w = weight()
    input_scale = torch.tensor(0.02, dtype=torch.float32)
    fp8 = Fp8Weight.quantize(w.float(), per_row, input_scale)
    merged_w = w.float() + 0.5 * weight(seed=1).float()  # e.g. a LoRA merged at full precision
    merged = fp8.requantize(merged_w)
    assert merged.per_row is per_row and merged.input_scale is input_scale
    assert torch.allclose(merged.scale.double(), amax64(merged_w.double(), per_row) / E4M3_MAX, rtol=2e-7, atol=0)
    assert not torch.equal(merged.scale, fp8.scale)
    within_e4m3(merged, merged_w.double())
    # The original value is untouched.
    assert fp8.input_scale is input_scale and fp8.codes.shape == merged.codes.shape


@pytest.mark.parametrize("per_row, with_input", [(False, False), (False, True), (True, False), (True, True)])
def test_nbytes_counts_codes_and_scales(per_row, with_input):
    out, inp = 48, 64
    isc = torch.tensor(0.5) if with_input else None
    fp8 = Fp8Weight.quantize(weight(out, inp).float(), per_row, isc)
    assert fp8.nbytes == out * inp + 4 * (out if per_row else 1) + (4 if with_input else 0)


def test_to_moves_every_part_and_shapes_follow_codes():
    fp8 = Fp8Weight.quantize(weight().float(), True, torch.tensor(0.5))
    moved = fp8.to("meta")
    assert {t.device.type for t in (moved.codes, moved.scale, moved.input_scale)} == {"meta"}
    assert moved.shape == fp8.shape == (48, 64) and moved.dtype == FP8
    assert fp8.scale_like(torch.empty(48, 64, dtype=torch.bfloat16)).shape == (48, 1)


def test_invalid_values_are_refused():
    codes = torch.zeros(8, 16, dtype=FP8)
    with pytest.raises(ValueError, match="codes"):
        Fp8Weight(codes.float(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="codes"):
        Fp8Weight(torch.zeros(8, 16, dtype=torch.float8_e5m2), torch.tensor(1.0))
    with pytest.raises(ValueError, match="scale"):
        Fp8Weight(codes, torch.ones(16))
