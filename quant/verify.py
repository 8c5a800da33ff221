"""`verify`: how far a loaded file is from its full-precision original, layer by layer.

Both errors are measured against float64 math on the reference's weights, never against the code
under test: `weight_rel_err = |W_eff - W_ref| / |W_ref|` (Frobenius) and `output_rel_err` of the
loaded layer on a fixed random input against `F.linear` in float64.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .layer import QuantLayer
from .linear import QuantLinear
from .plan import plan_checkpoint
from .safetensors_header import TensorSource
from .stream import iter_load, materialize

TOKENS = 64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = b.norm()
    return float((a - b).norm() / denom) if denom > 0 else float((a - b).norm())


def verify(
    path: str,
    reference: str,
    policy="auto",
    *,
    compute_dtype=torch.float32,
    activation="static",
    backend="auto",
    device="cpu",
    seed=0,
    budget_dtype=torch.bfloat16,
    moved_only=False,
) -> dict:
    """`budget_dtype`: the dtype a policy's weight budget counts full-precision bytes in (the plan
    `inspect` and the loader make by default); the layers are then computed in `compute_dtype`.
    `moved_only`: only the layers the policy's budget moved to fp8.

    One layer of each file is in memory at a time (the reference's in float64): a full-size file
    is verified in the memory of its largest layer, not of the model."""
    plan = plan_checkpoint(
        path, policy, device=device, compute_dtype=budget_dtype, activation=activation, backend=backend
    )
    plan = replace(plan, compute_dtype=compute_dtype)
    ref_plan = plan_checkpoint(reference, "bf16", compute_dtype=torch.float64)
    ref_layers = {lp.name: lp for lp in ref_plan.layers}
    missing = [lp.name for lp in plan.layers if lp.name not in ref_layers]
    if missing:
        raise ValueError(f"reference {reference} lacks {len(missing)} layer(s) of {path}, first: {missing[0]}")
    names = {lp.name for lp in plan.layers if lp.decision.by_budget or not moved_only}
    gen = torch.Generator().manual_seed(seed)
    fit = plan.budget
    rows = []
    with open(reference, "rb", buffering=0) as rf, TensorSource(rf, reference) as ref_source:
        for name, layer in iter_load(plan, device, names=names):
            ref = materialize(ref_layers[name], ref_source, ref_plan)
            rows.append(_compare(name, layer, ref, gen, activation, backend, compute_dtype, device))
            del ref, layer
            rows[-1].update(
                by_budget=plan.layer(name).decision.by_budget,
                predicted_error=fit.errors.get(name) if fit is not None else None,
            )
    return {
        "file": path,
        "reference": reference,
        "policy": plan.policy.to_string(),
        "compute_dtype": str(compute_dtype).replace("torch.", ""),
        "layers": rows,
        "max": _maxima(rows),
        "budget": _budget(fit, rows),
    }


def _compare(name: str, layer: QuantLayer, ref: QuantLayer, gen, activation, backend, compute_dtype, device) -> dict:
    """One layer against its reference (float64), weight and output on a fixed random input."""
    w_ref = ref.weight.double()
    x = torch.randn(TOKENS, layer.in_features, generator=gen, dtype=torch.float64)
    y_ref = F.linear(x, w_ref, None if ref.bias is None else ref.bias.double())
    y = QuantLinear(layer, activation, backend)(x.to(device=device, dtype=compute_dtype))
    return {
        "name": name,
        "mode": layer.mode,
        "encoding": layer.source,
        "quantized": layer.quantized,
        "weight_rel_err": rel_err(layer.effective_weight(torch.float64).cpu(), w_ref),
        "output_rel_err": rel_err(y.cpu(), y_ref),
    }


def _budget(fit, rows: list[dict]) -> dict | None:
    """The budget's moved layers: the error the planner predicted beside the one measured here
    (worst and weighted by parameters, as the load report gives the prediction)."""
    if fit is None:
        return None
    moved = [r for r in rows if r["by_budget"]]
    params = {m.name: m.params for m in fit.moved}
    total = sum(params.get(r["name"], 0) for r in moved)

    def mean(key):
        return sum(r[key] * params.get(r["name"], 0) for r in moved) / total if total else 0.0

    return {
        "budget": fit.budget,
        "budget_bytes": fit.budget_bytes,
        "total_bytes": fit.total_bytes,
        "moved_layers": len(moved),
        "predicted_error": {"worst": fit.worst_error, "weighted_mean": fit.mean_error},
        "measured_weight_error": {
            "worst": max((r["weight_rel_err"] for r in moved), default=0.0),
            "weighted_mean": mean("weight_rel_err"),
        },
        "measured_output_error": {
            "worst": max((r["output_rel_err"] for r in moved), default=0.0),
            "weighted_mean": mean("output_rel_err"),
        },
    }


def _maxima(rows: list[dict]) -> dict:
    out = {}
    for key in ("weight_rel_err", "output_rel_err"):
        out[key] = max((r[key] for r in rows), default=0.0)
        for mode in sorted({r["mode"] for r in rows}):
            out[f"{key}[{mode}]"] = max(r[key] for r in rows if r["mode"] == mode)
    return out
