"""The load report: per layer, how it was stored and how it will compute; totals by mode."""

from __future__ import annotations

from collections import Counter

import torch

from .holdings import by_mode, layer_weight_bytes, plan_holdings
from .plan import LayerPlan, LoadPlan, layer_note
from .units import format_gb

_FILE_DTYPES = {
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
}


def _scalar_or_list(t: torch.Tensor | None):
    if t is None:
        return None
    return t.item() if t.dim() == 0 else t.tolist()


def layer_row(lp: LayerPlan, plan: LoadPlan) -> dict:
    src = lp.src
    fit = plan.budget
    held = "float8_e4m3fn" if lp.held_fp8 else str(plan.compute_dtype).replace("torch.", "")
    return {
        "name": lp.name,
        "encoding": src.encoding,
        "storage": _FILE_DTYPES.get(src.weight.dtype, src.weight.dtype),
        "held": held,
        "shape": list(lp.out_in),
        "layout": "[in, out]" if lp.transposed else "[out, in]",
        "transposed": lp.transposed,
        "mode": lp.mode,
        "requested_mode": lp.requested,
        "scale": _scalar_or_list(lp.scale),
        "input_scale": _scalar_or_list(lp.input_scale),
        "activation_scale": ("static" if (plan.activation == "static" and lp.input_scale is not None) else "dynamic")
        if lp.mode == "scaled-mm"
        else None,
        "bytes": layer_weight_bytes(lp, plan.compute_dtype, per_row_quant=plan.per_row_quant),
        "note": layer_note(lp),
        # The weight budget moved this layer to fp8 (quant/budget.py), with its predicted error.
        "by_budget": lp.decision.by_budget,
        "predicted_error": fit.errors.get(lp.name) if fit is not None and lp.decision.by_budget else None,
    }


def build_report(plan: LoadPlan) -> dict:
    rows = [layer_row(lp, plan) for lp in plan.layers]
    held = plan_holdings(plan)
    passengers = {
        g: {"keys": len(keys), "bytes": sum(plan.index.tensors[k].nbytes for k in keys)}
        for g, keys in plan.contents.passengers.items()
    }
    encodings = Counter(r["encoding"] for r in rows)
    report = {
        "file": plan.path,
        "prefix": plan.contents.prefix,
        "encodings": dict(encodings),
        "layout": {"fp8": plan.layout.fp8, "full_precision": plan.layout.full, "decided_by": plan.layout.evidence},
        "policy": plan.policy.to_string(),
        "device": plan.caps.name,
        "compute_dtype": str(plan.compute_dtype).replace("torch.", ""),
        "activation_scale": plan.activation,
        "backend": plan.backend,
        "layers": rows,
        "holdings": held,
        # Flat views of `holdings`, kept for readers of this JSON (`python -m quant inspect --json`):
        # bytes_by_mode counts the linears only; the other tensors are other_tensor_bytes.
        "layers_by_mode": by_mode(held, "layers"),
        "bytes_by_mode": by_mode(held, "bytes"),
        "other_tensor_bytes": held["other"]["bytes"],
        "total_bytes": held["total_bytes"],
        "passengers": passengers,
        "markers": plan.contents.markers,
        "unexpected": plan.contents.unexpected,
        "warnings": plan.warnings,
        # The weight budget (quant/budget.BudgetFit.as_dict): budget, bytes, moved layers and their
        # predicted error; None when the policy has no budget.
        "budget": plan.budget.as_dict() if plan.budget is not None else None,
    }
    report["summary"] = summary_line(report)
    return report


def summary_line(report: dict) -> str:
    """One log line per load, e.g.
    `ltx-fp8: ckpt.safetensors: 1632 layers (scaled-mm 1462, bf16 170), 21.9 GB; ltx-core; ...`"""
    import os

    modes = ", ".join(f"{m} {n}" for m, n in sorted(report["layers_by_mode"].items()))
    enc = ", ".join(f"{e} {n}" for e, n in sorted(report["encodings"].items()))
    pas = sum(p["keys"] for p in report["passengers"].values())
    return (
        f"ltx-fp8: {os.path.basename(report['file'])}: {len(report['layers'])} linears ({modes}), "
        f"weights {format_gb(report['total_bytes'])}; encodings: {enc}; layout fp8 {report['layout']['fp8']}; "
        f"{pas} passenger keys ({', '.join(report['passengers']) or 'none'}); "
        f"{len(report['warnings'])} warnings" + (f"; {budget_line(report['budget'])}" if report.get("budget") else "")
    )


def budget_figures(budget: dict | None) -> dict | None:
    """The budget's figures for the canvas badge and the VRAM Report: the ceiling, the planned
    bytes, how many layers it moved and their predicted error (the full list stays in the report)."""
    if not budget:
        return None
    keys = ("budget", "budget_bytes", "total_bytes", "unbudgeted_bytes", "moved_layers", "predicted_error")
    return {k: budget[k] for k in keys}


def budget_line(budget: dict) -> str:
    """e.g. `budget 20GB: 19.87 GB of 20.00 GB, 96 layers moved to fp8 (predicted weight error
    worst 2.7e-02, weighted mean 2.6e-02)`."""
    head = f"budget {budget['budget']}: {format_gb(budget['total_bytes'])} of {format_gb(budget['budget_bytes'])}"
    if not budget["moved_layers"]:
        return f"{head}, nothing moved (without it {format_gb(budget['unbudgeted_bytes'])})"
    err = budget["predicted_error"]
    return (
        f"{head}, {budget['moved_layers']} layers moved to fp8 (predicted weight error worst "
        f"{err['worst']:.2e}, weighted mean {err['weighted_mean']:.2e}; without the budget "
        f"{format_gb(budget['unbudgeted_bytes'])})"
    )


def format_text(report: dict, max_rows: int = 40) -> str:
    """A human-readable report (the loader node's STRING output and `inspect` without --json)."""
    lines = [
        report["summary"],
        f"policy: {report['policy']}  device: {report['device']}  "
        f"compute: {report['compute_dtype']}  activation scale: {report['activation_scale']}  "
        f"backend: {report['backend']}",
    ]
    lines.append(
        "bytes by mode: "
        + ", ".join(f"{m} {format_gb(b)}" for m, b in sorted(report["bytes_by_mode"].items()))
        + f", other tensors {format_gb(report['other_tensor_bytes'])}"
    )
    budget = report.get("budget")
    if budget:
        lines.append(budget_line(budget))
        worst = sorted(budget["moved"], key=lambda m: -m["predicted_error"])
        for m in worst[:max_rows]:
            lines.append(
                f"  moved by the budget: {m['name']} (predicted weight error {m['predicted_error']:.2e}, "
                f"saves {format_gb(m['saved_bytes'])}, order: {m['order']})"
            )
        if len(worst) > max_rows:
            lines.append(f"  ... {len(worst) - max_rows} more moved layers")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    lines.append(
        f"{'layer':60s} {'encoding':14s} {'storage':14s} {'layout':10s} {'mode':9s} {'scale':>10s} {'in_scale':>10s}"
    )
    for r in report["layers"][:max_rows]:
        sc = r["scale"]
        sc = f"{sc:.3g}" if isinstance(sc, float) else ("per-row" if isinstance(sc, list) else "-")
        isc = f"{r['input_scale']:.3g}" if r["input_scale"] is not None else "-"
        name = r["name"] if len(r["name"]) <= 60 else "..." + r["name"][-57:]
        lines.append(
            f"{name:60s} {r['encoding']:14s} {r['storage']:14s} {r['layout']:10s} "
            f"{r['mode']:9s} {sc:>10s} {isc:>10s}" + (f"  ({r['note']})" if r["note"] else "")
        )
    if len(report["layers"]) > max_rows:
        lines.append(f"... {len(report['layers']) - max_rows} more layers")
    return "\n".join(lines)
