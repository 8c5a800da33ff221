"""quant/linear.py: QuantLinear's fp8-cast and scaled-mm forwards against independent float64
references (CPU, real `torch._scaled_mm`), and the kernel's limit (dims multiples of 16): layers it
cannot take fall back to fp8-cast at load, with one warning.

Every expected value here is computed in the test with plain torch ops in float64 on the fixture's
reference weights (tools.ltx2_fixture.reference_tensor), never with the code under test. The error
bounds are explained in tests/support/numerics.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.numerics import DT_IDS, DTYPES, E4M3_REL, E4M3_SUB_ABS, LAYERS, U, dequant64, inputs, rel_err

from quant.fp8 import FP8, Fp8Weight, quantize
from quant.layer import QuantLayer
from quant.linear import QuantLinear
from quant.report import build_report
from quant.stream import load
from tools import ltx2_fixture as LF

SEED = 7
CFG = LF.TINY

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ref_weight(layer: str) -> torch.Tensor:
    """The true full-precision weight (float32 as generated), [out, in]."""
    return LF.reference_tensor(CFG, layer + ".weight", SEED, torch.float32)


def ref_bias(layer: str) -> torch.Tensor:
    return LF.reference_tensor(CFG, layer + ".bias", SEED, torch.float32)


def make_layer(layer: str, per_row: bool, mode: str, dtype: torch.dtype, input_scale=None):
    codes, scale = quantize(ref_weight(layer), per_row=per_row)
    bias = ref_bias(layer).to(dtype)
    isc = None if input_scale is None else torch.tensor(float(input_scale), dtype=torch.float32)
    return QuantLayer(layer, Fp8Weight(codes, scale, isc), bias, mode, "test"), codes, scale, bias


# -- fp8-cast --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("layer", LAYERS[:3])
def test_fp8_cast_equals_float64_dequantized_linear(layer, per_row, dtype):
    q, codes, scale, bias = make_layer(layer, per_row, "fp8-cast", dtype)
    mod = QuantLinear(q)
    assert mod.weight.dtype == FP8 and mod.weight_scale.dtype == torch.float32  # codes kept, not dequantized
    x = inputs(q.in_features, dtype)
    y = mod(x)
    assert y.dtype == dtype and y.shape == (x.shape[0], q.out_features)

    w64 = dequant64(codes, scale)
    y_ref = F.linear(x.double(), w64, bias.double())
    u, n = U[dtype], q.in_features
    mag = x.double().abs() @ w64.abs().T + bias.double().abs()
    err = (y.double() - y_ref).abs()
    assert bool((err <= (3 * u + n * 2.0**-24) * mag).all()), float((err / mag).max())
    assert rel_err(y, y_ref) <= 2 * u + n**0.5 * 2.0**-24
    # ... and it is an fp8 layer: against the original weight it sits at the fp8 floor.
    y_orig = F.linear(x.double(), ref_weight(layer).double(), bias.double())
    assert 0.005 < rel_err(y, y_orig) < 0.05


def test_fp8_cast_3d_input():
    q, codes, scale, bias = make_layer(LAYERS[0], False, "fp8-cast", torch.float32)
    x = inputs(q.in_features, torch.float32, rows=24).reshape(2, 12, -1)
    y = QuantLinear(q)(x)
    y_ref = F.linear(x.double(), dequant64(codes, scale), bias.double())
    assert y.shape == (2, 12, q.out_features)
    assert rel_err(y, y_ref) < 1e-6


# -- scaled-mm -------------------------------------------------------------------------------------


def _scaled_mm_bound(x64, w64, b64, a: float, dtype) -> torch.Tensor:
    """Elementwise bound: activation rounding (2^-4 relative, 2^-10 * a absolute below the normal
    range) through |W|, plus output rounding and fp32 accumulation."""
    u, n = U[dtype], x64.shape[1]
    act = (E4M3_REL * x64.abs() + E4M3_SUB_ABS * a * 1.01) @ w64.abs().T
    return act + (2 * u + n * 2.0**-24) * ((1 + E4M3_REL) * x64.abs() @ w64.abs().T + b64.abs())


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("activation", ["static", "dynamic"])
@pytest.mark.parametrize("layer", LAYERS[:3])
def test_scaled_mm_within_activation_quantization_error(layer, activation, per_row, dtype):
    input_scale = 0.0123  # 448 * 0.0123 = 5.5 > |x| <= 4: nothing clamps
    q, codes, scale, bias = make_layer(layer, per_row, "scaled-mm", dtype, input_scale)
    mod = QuantLinear(q, activation=activation, backend="torch")
    assert mod.backend == "torch"
    x = inputs(q.in_features, dtype)
    y = mod(x)
    assert y.dtype == dtype and torch.isfinite(y).all()

    x64, w64, b64 = x.double(), dequant64(codes, scale), bias.double()
    y_ref = F.linear(x64, w64, b64)
    a = input_scale if activation == "static" else float(x64.abs().max()) / 448.0
    err = (y.double() - y_ref).abs()
    bound = _scaled_mm_bound(x64, w64, b64, a, dtype)
    assert bool((err <= bound).all()), float((err / bound).max())
    r = rel_err(y, y_ref)
    assert r < 0.05, r
    # The activation really was quantized: clearly off the exact product, and off fp8-cast.
    assert r > 0.005, r
    y_cast = QuantLinear(q.with_mode("fp8-cast"))(x)
    assert rel_err(y, y_cast) > 0.005


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("activation", ["static", "dynamic"])
def test_scaled_mm_quantizes_activation_exactly_so(activation, per_row):
    """fp32: the output is F.linear of (e4m3(clamp(x / a)) * a) with the dequantized weight, where
    a is the file's input_scale (static) or amax(x) / 448 (dynamic)."""
    layer = LAYERS[1]
    input_scale = 0.0095  # 448 * 0.0095 = 4.26: some of |x| <= 4.5 is near the top of the range
    q, codes, scale, bias = make_layer(layer, per_row, "scaled-mm", torch.float32, input_scale)
    x = inputs(q.in_features, torch.float32, bound=4.5)
    y = QuantLinear(q, activation=activation, backend="torch")(x)
    a = torch.tensor(input_scale, dtype=torch.float32) if activation == "static" else x.abs().amax() / 448.0
    xq = (x / a).clamp(-448.0, 448.0).to(FP8)
    y_emul = F.linear(xq.double() * a.double(), dequant64(codes, scale), bias.double())
    assert rel_err(y, y_emul) < 1e-5
    # Static and dynamic scales give different (both valid) quantizations.
    other = QuantLinear(q, activation="dynamic" if activation == "static" else "static", backend="torch")(x)
    assert rel_err(other, y) > 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_scaled_mm_16bit_activation_scale_is_consistent(per_row, dtype):
    """A 16-bit activation is divided by the scale rounded to its dtype (0.0123 -> 0.01233 in bf16,
    +0.24%); the GEMM must multiply back by that same value, or every output is biased by the
    scale's rounding. Checked as the mean relative bias <y - y_e, y_e> / <y_e, y_e> against the
    emulation (the same activation codes; unbiased output rounding leaves ~1e-5 there)."""
    layer = LAYERS[1]
    # Scales that round badly in each dtype: bf16 -0.24%, fp16 -0.044% (near half an ulp).
    input_scale = 0.0123 if dtype == torch.bfloat16 else float(torch.tensor(2.0**-6 + 0.45 * 2.0**-16))
    q, codes, scale, bias = make_layer(layer, per_row, "scaled-mm", dtype, input_scale)
    x = inputs(q.in_features, dtype, rows=96)
    y = QuantLinear(q, activation="static", backend="torch")(x).double()
    a = torch.tensor(input_scale, dtype=torch.float32).to(dtype)
    assert abs(float(a) / float(q.input_scale) - 1) > 3e-4  # the rounding this test is about
    xq = (x / a).clamp(-448.0, 448.0).to(FP8)
    y_e = F.linear(xq.double() * float(a), dequant64(codes, scale), bias.double())
    assert rel_err(y, y_e) < 2 * U[dtype]
    mean_bias = float(((y - y_e) * y_e).sum() / (y_e * y_e).sum())
    assert abs(mean_bias) < 1e-4, mean_bias


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_scaled_mm_clamps_activations_beyond_static_range(per_row, dtype):
    input_scale = 0.01  # representable range: |x| <= 4.48
    layer = LAYERS[0]
    q, codes, scale, bias = make_layer(layer, per_row, "scaled-mm", dtype, input_scale)
    x = inputs(q.in_features, torch.float32).float()
    x[::3, ::5] = 1.0e4
    x[1::3, 2::7] = -3.0e4
    x = x.to(dtype)
    y = QuantLinear(q, activation="static", backend="torch")(x)
    assert torch.isfinite(y).all(), "activations past 448 * input_scale must clamp, not overflow to NaN/inf"
    w64, b64 = dequant64(codes, scale), bias.double()
    lim = 448.0 * input_scale
    y_clamped = F.linear(x.double().clamp(-lim, lim), w64, b64)
    assert rel_err(y, y_clamped) < 0.05
    assert rel_err(y, F.linear(x.double(), w64, b64)) > 0.9  # the huge values really were cut


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_scaled_mm_dynamic_on_all_zero_input(dtype):
    # amax = 0: the dynamic scale must stay positive in x's dtype (fp16 used to give 0/0 = NaN).
    q, _, _, bias = make_layer(LAYERS[2], False, "scaled-mm", dtype)
    x = torch.zeros(5, q.in_features, dtype=dtype)
    y = QuantLinear(q, activation="dynamic", backend="torch")(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y, bias.expand_as(y))


def test_static_mode_without_input_scale_falls_back_to_dynamic():
    q, codes, scale, bias = make_layer(LAYERS[1], False, "scaled-mm", torch.float32, None)
    x = inputs(q.in_features, torch.float32) * 100  # far outside any calibrated static range
    y = QuantLinear(q, activation="static", backend="torch")(x)
    y_ref = F.linear(x.double(), dequant64(codes, scale), bias.double())
    assert 0.005 < rel_err(y, y_ref) < 0.05


# -- kernel fallback: dims not multiple of 16 -------------------------------------------------------


@pytest.fixture(scope="module")
def core_file(tmp_path_factory):
    return LF.write_checkpoint(tmp_path_factory.mktemp("core") / "c.safetensors", CFG, "ltx-core", seed=SEED)


def test_gate_layers_fall_back_to_fp8_cast_under_scaled_mm(core_file):
    plan, layers, _ = load(core_file.path, "scaled-mm")
    # Block 1 is fp8 in the file, block 0 full precision (quantized at load for scaled-mm).
    gates = [
        lp for lp in plan.layers if lp.name.endswith("to_gate_logits") and lp.name.startswith("transformer_blocks.")
    ]
    assert len(gates) == 2 * 6
    for lp in gates:
        out_f, in_f = LF.expected_linear_shapes(CFG)[lp.name]
        assert out_f == 4 and out_f % 16  # 4 heads: cuBLAS fp8 cannot take it
        assert lp.requested == "scaled-mm" and lp.mode == "fp8-cast"
        assert "multiple of 16" in lp.note
        lay = layers[lp.name]
        assert lay.mode == "fp8-cast" and lay.weight.dtype == FP8
        x = inputs(in_f, torch.float32, seed=5)
        y = QuantLinear(lay, backend="torch")(x)
        y_ref = F.linear(x.double(), ref_weight(lp.name).double(), ref_bias(lp.name).double())
        assert rel_err(y, y_ref) < 0.05
    assert any("multiple of 16" in w and "12 layers" in w for w in plan.warnings), plan.warnings
    rows = {r["name"]: r for r in build_report(plan)["layers"]}
    assert all("multiple of 16" in rows[lp.name]["note"] for lp in gates)
    # Every other block linear (all dims multiples of 16) runs scaled-mm.
    others = [lp for lp in plan.layers if lp.name.startswith("transformer_blocks.") and lp not in gates]
    assert others and all(lp.mode == "scaled-mm" for lp in others)
