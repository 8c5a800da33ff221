"""quant/layout.py: is a file's weight stored `[out, in]` or `[in, out]`?

`decide_layout` on hand-built layer sources: the non-square layers decide, per storage class (fp8 /
full precision); square layers cannot tell and follow the file; a file whose layers disagree is
refused naming the layer (a square layer of such a file would compute garbage silently, as in
Lightricks/LTX-2 issue #205); a shape that fits neither layout is refused. Then the same through the
loader, numerically: a transposed file's square layers load correctly, and a wrong shape is refused.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.files import base_files, rewrite
from support.numerics import inputs, rel_err

from quant.encodings import LayerSource
from quant.errors import CheckpointError
from quant.fp8 import quantize
from quant.layout import IN_OUT, OUT_IN, LayoutDecision, decide_layout
from quant.linear import QuantLinear
from quant.plan import plan_checkpoint
from quant.report import build_report
from quant.safetensors_header import TensorInfo
from quant.stream import load
from tools import ltx2_fixture as LF

SEED = 7
CFG = LF.TINY
PATH = "/models/hand-built.safetensors"
P = "model.diffusion_model."

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def ref_weight(layer: str) -> torch.Tensor:
    """The true full-precision weight (float32 as generated), [out, in]."""
    return LF.reference_tensor(CFG, layer + ".weight", SEED, torch.float32)


def ref_bias(layer: str) -> torch.Tensor:
    return LF.reference_tensor(CFG, layer + ".bias", SEED, torch.float32)


# -- decide_layout on hand-built layers ------------------------------------------------------------


def layer(name: str, stored, fp8: bool = True, bias: int | None = None, scale=()) -> LayerSource:
    """A layer as classify() describes it: `stored` is the weight's shape in the file; `bias` the
    length of a bias beside it; `scale` the shape of its weight scale (fp8 only)."""
    w = TensorInfo(P + name + ".weight", "F8_E4M3" if fp8 else "BF16", tuple(stored), 0, 0)
    b = None if bias is None else TensorInfo(P + name + ".bias", "BF16", (bias,), 0, 0)
    s = TensorInfo(P + name + ".weight_scale", "F32", tuple(scale), 0, 0) if fp8 else None
    return LayerSource(name, w, "ltx-core" if fp8 else "full-precision", bias=b, scale=s)


def by_name(*srcs: LayerSource) -> dict[str, LayerSource]:
    return {s.name: s for s in srcs}


# [out, in] the model expects (a square one among them).
EXPECTED = {"ff.up": (256, 64), "ff.down": (64, 256), "attn.q": (64, 64), "full.up": (128, 32)}


def test_out_in_file_decided_by_a_non_square_layer():
    ls = by_name(layer("attn.q", (64, 64)), layer("ff.up", (256, 64)), layer("full.up", (128, 32), fp8=False))
    decision, warnings = decide_layout(ls, PATH, EXPECTED)
    assert decision == LayoutDecision(OUT_IN, OUT_IN, {"fp8": "ff.up", "full": "full.up"})
    assert warnings == []


def test_in_out_file_square_layers_follow_the_file():
    # Every fp8 layer stored transposed; the square one cannot tell, the non-square ones decide.
    ls = by_name(layer("attn.q", (64, 64)), layer("ff.up", (64, 256)), layer("ff.down", (256, 64)))
    decision, warnings = decide_layout(ls, PATH, EXPECTED)
    assert decision == LayoutDecision(IN_OUT, OUT_IN, {"fp8": "ff.up"})
    assert warnings == []  # no full-precision layer: nothing to warn about for that class


def test_storage_classes_are_decided_apart():
    # fp8 weights transposed (as cuBLAS wants them), full-precision ones [out, in]: not a conflict.
    ls = by_name(layer("ff.up", (64, 256)), layer("full.up", (128, 32), fp8=False))
    decision, warnings = decide_layout(ls, PATH, EXPECTED)
    assert (decision.fp8, decision.full) == (IN_OUT, OUT_IN)
    assert decision.evidence == {"fp8": "ff.up", "full": "full.up"}
    assert warnings == []


def test_full_precision_in_out_is_transposed_with_a_warning():
    ls = by_name(layer("full.up", (32, 128), fp8=False))
    decision, warnings = decide_layout(ls, PATH, EXPECTED)
    assert decision == LayoutDecision(OUT_IN, IN_OUT, {"full": "full.up"})
    assert warnings == ["full-precision weights are stored [in, out]; transposing them at load"]


def test_a_disagreeing_file_is_refused_naming_both_layers():
    ls = by_name(layer("ff.up", (256, 64)), layer("attn.q", (64, 64)), layer("ff.down", (256, 64)))
    with pytest.raises(CheckpointError) as ei:
        decide_layout(ls, PATH, EXPECTED)
    e = ei.value
    assert e.file == PATH and e.tensor == P + "ff.down.weight"
    assert "layer ff.down: stored [in, out] but layer ff.up of the same file is stored [out, in]" in str(e)
    assert "one layout" in str(e) and PATH in str(e)


def test_a_square_weight_where_the_model_wants_a_non_square_one_is_refused():
    with pytest.raises(CheckpointError) as ei:
        decide_layout(by_name(layer("ff.up", (64, 64))), PATH, EXPECTED)
    assert ei.value.tensor == P + "ff.up.weight"
    assert "layer ff.up: weight shape [64, 64] but the model expects [256, 64]" in str(ei.value)


def test_a_shape_that_fits_neither_layout_is_refused():
    with pytest.raises(CheckpointError) as ei:
        decide_layout(by_name(layer("ff.up", (250, 64))), PATH, EXPECTED)
    assert ei.value.tensor == P + "ff.up.weight"
    assert "[250, 64] matches neither [out, in] = [256, 64] nor its transpose" in str(ei.value)


def test_all_square_or_unknown_shapes_assume_out_in_with_a_warning():
    # Only square layers, and a non-square one nothing can size (no model, no bias, one scale).
    ls = by_name(layer("attn.q", (64, 64)), layer("x.proj", (16, 48)), layer("full.q", (32, 32), fp8=False))
    decision, warnings = decide_layout(ls, PATH, {"attn.q": (64, 64), "full.q": (32, 32)})
    assert decision == LayoutDecision(OUT_IN, OUT_IN, {})
    assert warnings == [
        "fp8 layers are all square or of unknown shape: layout cannot be checked, assuming [out, in]",
        "full layers are all square or of unknown shape: layout cannot be checked, assuming [out, in]",
    ]


@pytest.mark.parametrize(
    "stored, bias, scale, want",
    [
        ((48, 16), 48, (), OUT_IN),  # a bias of `out` rows
        ((16, 48), 48, (), IN_OUT),
        ((48, 16), None, (48,), OUT_IN),  # a per-row scale of `out` rows
        ((16, 48), None, (48, 1), IN_OUT),
    ],
)
def test_without_a_model_the_bias_or_per_row_scale_tells_out(stored, bias, scale, want):
    decision, warnings = decide_layout(by_name(layer("x.proj", stored, bias=bias, scale=scale)), PATH, None)
    assert decision == LayoutDecision(want, OUT_IN, {"fp8": "x.proj"})
    assert warnings == []


# -- through the loader: a transposed file, numerically ----------------------------------------------


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


# -- through the loader: wrong shapes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_files(tmp_path_factory.mktemp("base"), 5)


@pytest.mark.parametrize("encoding", ["ltx-core", "bf16"])
def test_weight_of_the_wrong_shape(base, tmp_path, encoding):
    fx = base[encoding]
    layer = "transformer_blocks.1.ff.net.0.proj"  # [256, 64]
    key = fx.prefix + layer + ".weight"
    t = torch.full((250, 64), 0.01, dtype=torch.bfloat16)
    if encoding == "ltx-core":
        t = quantize(t.float())[0]
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: t})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert layer in str(ei.value) and "[250, 64]" in str(ei.value)
    # A square weight where the model wants a non-square one.
    t = torch.full((64, 64), 0.01, dtype=torch.bfloat16)
    if encoding == "ltx-core":
        t = quantize(t.float())[0]
    path = rewrite(fx.path, tmp_path / "y.safetensors", replace={key: t})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert layer in str(ei.value) and "[256, 64]" in str(ei.value)
