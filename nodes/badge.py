"""The compact figures the canvas badges of web/ltx_fp8.js show (the nodes' `ui["ltx_fp8"]`).

A transformer block counts under one mode when that mode holds at least `BLOCK_MAJORITY` of the
block's linear weights (tiny layers such as gate logits kept in another precision do not make a
block "mixed"); otherwise it counts as "mixed". Layer counts stay exact in `layers_by_mode`.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.")
BLOCK_MAJORITY = 0.9


def blocks_by_mode(layers: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """`layers`: (canonical layer name, mode, weight element count). Returns {mode: blocks}."""
    per_block: dict[int, Counter] = defaultdict(Counter)
    for name, mode, numel in layers:
        m = BLOCK_RE.match(name)
        if m:
            per_block[int(m.group(1))][mode] += max(int(numel), 1)
    out: Counter = Counter()
    for weights in per_block.values():
        mode, n = weights.most_common(1)[0]
        out[mode if n >= BLOCK_MAJORITY * sum(weights.values()) else "mixed"] += 1
    return dict(out)


def report_layers(report: dict) -> list[tuple[str, str, int]]:
    """(name, mode, numel) of each row of a quant.report load report."""
    return [(r["name"], r["mode"], r["shape"][0] * r["shape"][1]) for r in report["layers"]]


def patcher_layers(patcher) -> list[tuple[str, str, int]]:
    """(name, mode, numel) of each linear of a ModelPatcher as it will run, classified like
    bridge.vram.model_stats (a scale-less fp8 weight is the host's own fp8 storage)."""
    import torch

    from ..bridge import model_view

    out = []
    for name, m in model_view.linears(patcher).items():
        scale = getattr(m, "weight_scale", None)
        mode = getattr(m, "quant_mode", None) or "bf16"
        if scale is None and mode != "bf16":
            mode = "bf16"
        w = m.weight
        if w is not None and w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and scale is None:
            mode = "host-fp8"
        out.append((name, mode, 0 if w is None else w.numel()))
    return out
