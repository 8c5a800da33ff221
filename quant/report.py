"""The load report: per layer, how it was stored and how it will compute; totals by mode."""

from __future__ import annotations

from collections import Counter

import torch

from .plan import LayerPlan, LoadPlan, layer_note

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


def layer_weight_bytes(
    lp: LayerPlan, compute_dtype: torch.dtype, mode: str | None = None, per_row_quant: bool = False
) -> int:
    """Bytes the weight (+ its scales) will hold once loaded in `mode` (default: the planned one):
    1 per fp8 parameter + fp32 scales, else the compute dtype's size."""
    out_f, in_f = lp.out_in
    n = out_f * in_f
    if (mode or lp.mode) == "bf16":
        return n * compute_dtype.itemsize
    per_row = (lp.scale is not None and lp.scale.dim() == 1) or (lp.scale is None and per_row_quant)
    return n + 4 * (out_f if per_row else 1) + (4 if lp.input_scale is not None else 0)


def other_tensor_bytes(plan: LoadPlan) -> int:
    """Biases and the non-linear tensors (norms, scale-shift tables, registers), as loaded."""
    item = plan.compute_dtype.itemsize
    other = sum(
        i.numel * (item if i.dtype in ("BF16", "F16", "F32", "F64") else i.nbytes // max(i.numel, 1))
        for i in plan.contents.tensors.values()
    )
    return other + sum(lp.src.bias.numel * item for lp in plan.layers if lp.src.bias)


def layer_row(lp: LayerPlan, plan: LoadPlan) -> dict:
    src = lp.src
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
    }


def build_report(plan: LoadPlan) -> dict:
    rows = [layer_row(lp, plan) for lp in plan.layers]
    bytes_by_mode: Counter = Counter()
    layers_by_mode: Counter = Counter()
    for r in rows:
        bytes_by_mode[r["mode"]] += r["bytes"]
        layers_by_mode[r["mode"]] += 1
    other_bytes = other_tensor_bytes(plan)
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
        "layers_by_mode": dict(layers_by_mode),
        "bytes_by_mode": dict(bytes_by_mode),
        "other_tensor_bytes": other_bytes,
        "total_bytes": sum(bytes_by_mode.values()) + other_bytes,
        "passengers": passengers,
        "markers": plan.contents.markers,
        "unexpected": plan.contents.unexpected,
        "warnings": plan.warnings,
    }
    report["summary"] = summary_line(report)
    return report


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def summary_line(report: dict) -> str:
    """One log line per load, e.g.
    `ltx-fp8: ckpt.safetensors: 1632 layers (scaled-mm 1462, bf16 170), 21.9 GB; ltx-core; ...`"""
    import os

    modes = ", ".join(f"{m} {n}" for m, n in sorted(report["layers_by_mode"].items()))
    enc = ", ".join(f"{e} {n}" for e, n in sorted(report["encodings"].items()))
    pas = sum(p["keys"] for p in report["passengers"].values())
    return (
        f"ltx-fp8: {os.path.basename(report['file'])}: {len(report['layers'])} linears ({modes}), "
        f"weights {_gb(report['total_bytes'])}; encodings: {enc}; layout fp8 {report['layout']['fp8']}; "
        f"{pas} passenger keys ({', '.join(report['passengers']) or 'none'}); "
        f"{len(report['warnings'])} warnings"
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
        + ", ".join(f"{m} {_gb(b)}" for m, b in sorted(report["bytes_by_mode"].items()))
        + f", other tensors {_gb(report['other_tensor_bytes'])}"
    )
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
