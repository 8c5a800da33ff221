"""What a model holds: one schema for a planned file and for a live model.

Both are described as rows, and `holdings` turns rows into the schema every consumer reads (the
load report, the VRAM Report, both canvas badges and web/ltx_fp8.js):

    {
      "modes": {mode: {"layers": n, "params": out*in summed, "bytes": weights + their scales}},
      "other": {"tensors": n, "bytes": b},   # biases, norms, scale-shift tables, registers...
      "total_bytes": sum of the modes' bytes + the other bytes,
      "blocks_by_mode": {mode or "mixed": transformer blocks},
    }

A planned file's rows come from its LoadPlan here (`plan_holdings`: bytes as they will be loaded,
decided by `layer_weight_bytes`); a live model's rows come from its ModelPatcher in bridge/vram.py
(the real tensors, so merged LoRAs and codes shared between modes count as they are held).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from .plan import LayerPlan, LoadPlan

# A linear holding fp8 codes without a scale of ours: the host's own fp8 storage (a model from
# the host's loaders, whose fp8 weights ComfyUI casts at forward). Only a live model has them.
HOST_FP8 = "host-fp8"

# A transformer block counts under one mode when that mode holds at least BLOCK_MAJORITY of the
# block's linear weights (tiny layers such as gate logits kept in another precision do not make a
# block "mixed"); otherwise it counts as "mixed". Layer counts stay exact per mode.
BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.")
BLOCK_MAJORITY = 0.9
MIXED = "mixed"

_FULL_PRECISION = ("BF16", "F16", "F32", "F64")


class LayerRow(NamedTuple):
    """One linear: canonical name (no `diffusion_model.` prefix), mode, `[out, in]`, bytes held
    for its weight and scales (its bias is an other tensor)."""

    name: str
    mode: str
    out_features: int
    in_features: int
    bytes: int


class TensorRow(NamedTuple):
    """One tensor that is not a linear's weight or scale."""

    name: str
    bytes: int


def blocks_by_mode(layers: Iterable[LayerRow]) -> dict[str, int]:
    """{mode or "mixed": transformer blocks}, each block under the mode holding most of its weights."""
    per_block: dict[int, Counter] = defaultdict(Counter)
    for r in layers:
        m = BLOCK_RE.match(r.name)
        if m:
            per_block[int(m.group(1))][r.mode] += max(r.out_features * r.in_features, 1)
    out: Counter = Counter()
    for weights in per_block.values():
        mode, n = weights.most_common(1)[0]
        out[mode if n >= BLOCK_MAJORITY * sum(weights.values()) else MIXED] += 1
    return dict(out)


def holdings(layers: Iterable[LayerRow], others: Iterable[TensorRow]) -> dict:
    """The schema (see the module docstring) from per-layer rows and other-tensor rows."""
    layers = [LayerRow(*r) for r in layers]
    modes: dict[str, dict[str, int]] = {}
    for r in layers:
        m = modes.setdefault(r.mode, {"layers": 0, "params": 0, "bytes": 0})
        m["layers"] += 1
        m["params"] += r.out_features * r.in_features
        m["bytes"] += r.bytes
    other = {"tensors": 0, "bytes": 0}
    for r in others:
        other["tensors"] += 1
        other["bytes"] += TensorRow(*r).bytes
    return {
        "modes": modes,
        "other": other,
        "total_bytes": sum(m["bytes"] for m in modes.values()) + other["bytes"],
        "blocks_by_mode": blocks_by_mode(layers),
    }


def by_mode(h: dict, key: str = "bytes") -> dict[str, int]:
    """{mode: figure} of a holdings dict (`key`: "layers", "params" or "bytes"), linears only."""
    return {mode: m[key] for mode, m in h["modes"].items()}


# ----- a planned file ------------------------------------------------------------------------


def layer_weight_bytes(
    lp: LayerPlan, compute_dtype: torch.dtype, mode: str | None = None, per_row_quant: bool = False
) -> int:
    """Bytes the weight (+ its scales) will hold once loaded in `mode` (default: the planned one):
    1 per fp8 parameter + fp32 scales ([] or one per row, + the input scale), else the compute
    dtype's size. The one place a planned layer's loaded bytes are decided."""
    out_f, in_f = lp.out_in
    if (mode or lp.mode) == "bf16":
        return out_f * in_f * compute_dtype.itemsize
    per_row = (lp.scale is not None and lp.scale.dim() == 1) or (lp.scale is None and per_row_quant)
    return fp8_weight_bytes(out_f, in_f, per_row, lp.input_scale is not None)


def fp8_weight_bytes(out_features: int, in_features: int, per_row: bool, input_scale: bool) -> int:
    """Bytes of an fp8 weight: 1 per code, an fp32 scale per tensor or per row, and the fp32 static
    input scale if it has one (quant/fp8.Fp8Weight.nbytes of such a weight)."""
    return out_features * in_features + 4 * (out_features if per_row else 1) + (4 if input_scale else 0)


def _other_rows(plan: LoadPlan) -> list[TensorRow]:
    """Other tensors as stored, except full precision in the compute dtype; biases in the compute dtype."""
    item = plan.compute_dtype.itemsize
    rows = [
        TensorRow(name, i.numel * (item if i.dtype in _FULL_PRECISION else i.nbytes // max(i.numel, 1)))
        for name, i in plan.contents.tensors.items()
    ]
    return rows + [TensorRow(lp.name + ".bias", lp.src.bias.numel * item) for lp in plan.layers if lp.src.bias]


def plan_holdings(plan: LoadPlan) -> dict:
    """What the model of a planned file will hold once loaded."""
    layers = [
        LayerRow(lp.name, lp.mode, *lp.out_in, layer_weight_bytes(lp, plan.compute_dtype, None, plan.per_row_quant))
        for lp in plan.layers
    ]
    return holdings(layers, _other_rows(plan))


def other_tensor_bytes(plan: LoadPlan) -> int:
    """Bytes of a planned file's biases and non-linear tensors, as loaded."""
    return sum(r.bytes for r in _other_rows(plan))
