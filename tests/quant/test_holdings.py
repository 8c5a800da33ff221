"""quant.holdings: the one schema of what a model holds, from rows; a planned file's rows against
the bytes its loaded layers really hold.

The live side (a ModelPatcher's rows, bridge/vram.py) is checked against the planned side inside
the real host in tests/bridge/test_vram.py.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from quant.holdings import (
    HOST_FP8,
    MIXED,
    LayerRow,
    TensorRow,
    blocks_by_mode,
    by_mode,
    holdings,
    layer_weight_bytes,
    plan_holdings,
)
from quant.plan import plan_checkpoint
from quant.stream import load
from tools import ltx2_fixture as LF

SEED = 3
PRESETS = ("auto", "fp8-cast", "scaled-mm", "bf16")
LAYER = "transformer_blocks.1.attn1.to_q"  # quantized in the fixture (block 0 stays bf16)


def test_rows_sum_per_mode_and_other():
    rows = [
        LayerRow("transformer_blocks.0.a", "scaled-mm", 4, 8, 40),
        LayerRow("transformer_blocks.0.b", "scaled-mm", 2, 8, 20),
        LayerRow("proj_out", "bf16", 3, 5, 30),
        LayerRow("transformer_blocks.1.a", HOST_FP8, 4, 8, 0),  # a meta weight: a layer, no bytes
    ]
    others = [TensorRow("scale_shift_table", 12), ("proj_out.bias", 6)]
    h = holdings(rows, others)
    assert h["modes"] == {
        "scaled-mm": {"layers": 2, "params": 48, "bytes": 60},
        "bf16": {"layers": 1, "params": 15, "bytes": 30},
        HOST_FP8: {"layers": 1, "params": 32, "bytes": 0},
    }
    assert h["other"] == {"tensors": 2, "bytes": 18}
    assert h["total_bytes"] == 60 + 30 + 18
    assert h["blocks_by_mode"] == {"scaled-mm": 1, HOST_FP8: 1}
    assert by_mode(h) == {"scaled-mm": 60, "bf16": 30, HOST_FP8: 0}
    assert by_mode(h, "layers") == {"scaled-mm": 2, "bf16": 1, HOST_FP8: 1}
    assert holdings([], []) == {
        "modes": {},
        "other": {"tensors": 0, "bytes": 0},
        "total_bytes": 0,
        "blocks_by_mode": {},
    }


def test_a_block_counts_under_the_mode_holding_ninety_percent_of_its_weights():
    def block(n, parts):
        return [LayerRow(f"transformer_blocks.{n}.l{i}", mode, out, 100, 0) for i, (mode, out) in enumerate(parts)]

    rows = (
        block(0, [("scaled-mm", 90), ("bf16", 10)])  # 90%: scaled-mm
        + block(1, [("scaled-mm", 89), ("bf16", 11)])  # 89%: mixed
        + block(2, [("bf16", 5), ("bf16", 5)])
        + block(10, [("fp8-cast", 1)])  # block 10, not block 1
        + [LayerRow("patchify_proj", "fp8-cast", 100, 100, 0)]  # not in a block
    )
    assert blocks_by_mode(rows) == {"scaled-mm": 1, MIXED: 1, "bf16": 1, "fp8-cast": 1}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("holdings")
    return {
        "per-tensor": LF.write_checkpoint(d / "t.safetensors", LF.TINY, "ltx-core", seed=SEED),
        "per-row": LF.write_checkpoint(d / "r.safetensors", LF.TINY, "ltx-core", seed=SEED, per_row=True),
        "bf16": LF.write_checkpoint(d / "b.safetensors", LF.TINY, "bf16", seed=SEED),
    }


def test_planned_layer_bytes_by_hand(fixtures):
    """fp8: 1 byte per weight + fp32 scales (one, or one per row) + the fp32 input scale; bf16: 2
    bytes per weight; the quantize-at-load fp8 of a bf16 file: one fp32 scale, no input scale."""
    out_f, in_f = LF.expected_linear_shapes(LF.TINY)[LAYER]
    n = out_f * in_f
    cases = [
        ("per-tensor", "fp8-cast", n + 4 + 4),
        ("per-row", "scaled-mm", n + 4 * out_f + 4),
        ("per-tensor", "bf16", 2 * n),
        ("bf16", "fp8-cast", n + 4),
    ]
    for name, policy, want in cases:
        plan = plan_checkpoint(fixtures[name].path, policy, device="cpu")
        lp = plan.layer(LAYER)
        assert lp.mode == policy and lp.out_in == (out_f, in_f), (name, policy, lp.mode)
        assert layer_weight_bytes(lp, plan.compute_dtype, None, plan.per_row_quant) == want, (name, policy)


@pytest.mark.parametrize("fixture", ["per-tensor", "per-row", "bf16"])
@pytest.mark.parametrize("policy", PRESETS)
def test_planned_modes_are_what_the_loaded_layers_hold(fixtures, fixture, policy):
    """Per mode, the planned bytes are the bytes of the loaded layers' real tensors (weight, scale,
    input scale), the layer and parameter counts those of the loaded layers."""
    plan, layers, _ = load(fixtures[fixture].path, policy, device="cpu")
    want: dict = defaultdict(lambda: {"layers": 0, "params": 0, "bytes": 0})
    for lay in layers.values():
        w = want[lay.mode]
        w["layers"] += 1
        held = (lay.weight.codes, lay.weight.scale, lay.weight.input_scale) if lay.quantized else (lay.weight,)
        w["params"] += held[0].numel()
        w["bytes"] += sum(t.numel() * t.element_size() for t in held if t is not None)
    assert plan_holdings(plan)["modes"] == dict(want)
    biases = sum(lay.bias.numel() * plan.compute_dtype.itemsize for lay in layers.values() if lay.bias is not None)
    assert plan_holdings(plan)["other"]["bytes"] >= biases > 0
