"""Numerics of the quant core against independent float64 references (CPU, real `torch._scaled_mm`).

Every expected value here is computed in the test with plain torch ops in float64 on the fixture's
reference weights (tools.ltx2_fixture.reference_tensor), never with the code under test.

Bounds used (round to nearest):
- e4m3 has 3 mantissa bits: a value in the normal range (|v| >= 2^-6) rounds with relative error
  <= 2^-4; below it (subnormals, spacing 2^-9) the absolute error is <= 2^-10. In units of the
  scale s: |q(w) - w| <= max(2^-4 |w|, 2^-10 s). For Gaussian weights this gives a relative
  Frobenius error of ~0.026 (the "fp8 floor").
- A compute dtype with unit roundoff u (bf16 2^-8, fp16 2^-11, fp32 2^-24) rounds the weight and
  the output once each: |y - y_ref| <= ~2u (|x| |W|^T + |b|), plus fp32 accumulation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quant.fp8 import FP8, Fp8Weight, dequantize, quantize  # noqa: E402
from quant.layer import QuantLayer  # noqa: E402
from quant.linear import QuantLinear  # noqa: E402
from quant.report import build_report  # noqa: E402
from quant.stream import load  # noqa: E402
from tools import ltx2_fixture as LF  # noqa: E402

SEED = 7
CFG = LF.TINY
U = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
E4M3_REL = 2.0**-4  # relative rounding error bound of e4m3 normals
E4M3_SUB_ABS = 2.0**-10  # absolute rounding error bound of e4m3 subnormals (in units of the scale)
DTYPES = [torch.bfloat16, torch.float32, torch.float16]
DT_IDS = ["bf16", "fp32", "fp16"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# (key, [out, in]) of the TINY model: non-square both ways, square, audio-width.
LAYERS = [
    "transformer_blocks.1.ff.net.0.proj",  # [256, 64]
    "transformer_blocks.1.ff.net.2",  # [64, 256]
    "transformer_blocks.1.attn1.to_q",  # [64, 64]
    "transformer_blocks.1.audio_ff.net.0.proj",
]  # [128, 32]


def ref_weight(layer: str) -> torch.Tensor:
    """The true full-precision weight (float32 as generated), [out, in]."""
    return LF.reference_tensor(CFG, layer + ".weight", SEED, torch.float32)


def ref_bias(layer: str) -> torch.Tensor:
    return LF.reference_tensor(CFG, layer + ".bias", SEED, torch.float32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def dequant64(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.double()
    return codes.double() * (s[:, None] if s.dim() == 1 else s)


def inputs(n_in: int, dtype: torch.dtype, rows: int = 48, seed: int = 0, bound: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n_in, generator=g).clamp_(-bound, bound).to(dtype)


def make_layer(layer: str, per_row: bool, mode: str, dtype: torch.dtype, input_scale=None):
    codes, scale = quantize(ref_weight(layer), per_row=per_row)
    bias = ref_bias(layer).to(dtype)
    isc = None if input_scale is None else torch.tensor(float(input_scale), dtype=torch.float32)
    return QuantLayer(layer, Fp8Weight(codes, scale, isc), bias, mode, "test"), codes, scale, bias


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


def test_fp8_weight_without_scale_is_refused():
    codes, _ = quantize(ref_weight(LAYERS[2]))
    with pytest.raises(ValueError, match="scale"):
        QuantLayer("x", codes, None, "bf16")
    with pytest.raises(ValueError, match="scale"):
        QuantLayer("x", ref_weight(LAYERS[2]), None, "fp8-cast")


# -- layout, tested numerically --------------------------------------------------------------------


@pytest.fixture(scope="module")
def transposed_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    return {
        per_row: LF.write_checkpoint(
            d / f"t{int(per_row)}.safetensors", CFG, "ltx-core", seed=SEED, transposed=True, per_row=per_row
        )
        for per_row in (False, True)
    }


SQUARE = "transformer_blocks.1.attn1.to_q"  # 64 x 64
SQUARE_AUDIO = "transformer_blocks.1.audio_attn1.to_v"  # 32 x 32


@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
def test_square_layer_in_transposed_file_loads_correctly(transposed_files, per_row):
    fx = transposed_files[per_row]
    key = fx.prefix + SQUARE + ".weight"
    assert fx.keys[key] == ("F8_E4M3", (64, 64))  # the shape cannot tell the layout
    plan, layers, _ = load(fx.path, "auto")
    assert plan.layout.fp8 == "[in, out]"
    # The layout was decided by a non-square fp8 layer, never by a square one.
    decided_by = plan.layout.evidence["fp8"]
    o, i = LF.expected_linear_shapes(CFG)[decided_by]
    assert o != i
    row = {r["name"]: r for r in build_report(plan)["layers"]}

    for name in (SQUARE, SQUARE_AUDIO, "transformer_blocks.1.ff.net.0.proj", "transformer_blocks.1.ff.net.2"):
        lay = layers[name]
        assert plan.layer(name).transposed and row[name]["layout"] == "[in, out]"
        w_ref = ref_weight(name).double()
        eff = lay.effective_weight(torch.float64)
        assert eff.shape == w_ref.shape
        assert 0.005 < rel_err(eff, w_ref) < 0.05, name
        if eff.shape[0] == eff.shape[1]:
            # What a loader that trusts the square shape would compute: garbage of the same shape.
            assert rel_err(eff.T, w_ref) > 0.5, name
        # The forward, in both fp8 modes (scaled-mm hands cuBLAS codes.t() of the [out, in] codes).
        x = inputs(lay.in_features, torch.float32, seed=3)
        b = ref_bias(name).double()
        y_ref = F.linear(x.double(), w_ref, b)
        for mode in ("fp8-cast", "scaled-mm"):
            y = QuantLinear(lay.with_mode(mode), activation="dynamic", backend="torch")(x)
            assert rel_err(y, y_ref) < 0.06, (name, mode)
            if eff.shape[0] == eff.shape[1]:
                assert rel_err(F.linear(x.double(), eff.T, b), y_ref) > 0.5


def test_full_precision_layers_of_transposed_file_stay_out_in(transposed_files):
    fx = transposed_files[False]
    plan, layers, _ = load(fx.path, "auto")
    assert plan.layout.full == "[out, in]"
    for name in ("transformer_blocks.0.attn1.to_q", "patchify_proj", "adaln_single.emb.timestep_embedder.linear_2"):
        assert not plan.layer(name).transposed
        assert rel_err(layers[name].effective_weight(torch.float64), ref_weight(name)) < 0.01


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
