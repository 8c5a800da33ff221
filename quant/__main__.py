"""Command line: `python -m quant inspect FILE [--json]`, `python -m quant verify FILE --reference REF`."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .backends import BackendUnavailable
from .errors import CheckpointError
from .plan import plan_checkpoint
from .policy import PolicyError
from .report import build_report, format_text
from .verify import verify

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quant", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("file")
    common.add_argument(
        "--policy",
        default="auto",
        help="preset, rules and an optional weight budget, e.g. 'fp8-cast; transformer_blocks.0.*=bf16' "
        "or 'auto; budget=20GB'",
    )
    common.add_argument("--activation-scale", default="static", choices=("static", "dynamic"))
    common.add_argument("--backend", default="auto", choices=("auto", "torch", "tensorrt-llm"))
    common.add_argument("--device", default="cpu")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    ins = sub.add_parser("inspect", parents=[common], help="report a file without loading tensor data")
    ins.add_argument("--dtype", default="bfloat16", choices=sorted(_DTYPES))
    ins.add_argument("--rows", type=int, default=40, help="layers shown in the text report")
    ver = sub.add_parser("verify", parents=[common], help="per-layer error against a reference file")
    ver.add_argument("--reference", required=True)
    ver.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    ver.add_argument(
        "--budget-moved", action="store_true", help="only the layers the policy's weight budget moved to fp8"
    )
    ver.add_argument(
        "--budget-dtype",
        default="bfloat16",
        choices=sorted(_DTYPES),
        help="the dtype a policy's budget counts full-precision weights in (inspect's --dtype)",
    )
    args = ap.parse_args(argv)
    try:
        if args.cmd == "inspect":
            plan = plan_checkpoint(
                args.file,
                args.policy,
                device=args.device,
                compute_dtype=_DTYPES[args.dtype],
                activation=args.activation_scale,
                backend=args.backend,
            )
            report = build_report(plan)
            print(json.dumps(report, indent=1) if args.json else format_text(report, args.rows))
        else:
            result = verify(
                args.file,
                args.reference,
                args.policy,
                compute_dtype=_DTYPES[args.dtype],
                activation=args.activation_scale,
                backend=args.backend,
                device=args.device,
                budget_dtype=_DTYPES[args.budget_dtype],
                moved_only=args.budget_moved,
            )
            print(json.dumps(result, indent=1) if args.json else _verify_text(result))
    except (CheckpointError, PolicyError, BackendUnavailable, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _verify_text(result: dict) -> str:
    lines = [
        f"{result['file']} vs {result['reference']} (policy {result['policy']}, compute {result['compute_dtype']})",
        f"{'layer':60s} {'mode':9s} {'weight_rel_err':>15s} {'output_rel_err':>15s}",
    ]
    for r in result["layers"]:
        name = r["name"] if len(r["name"]) <= 60 else "..." + r["name"][-57:]
        lines.append(f"{name:60s} {r['mode']:9s} {r['weight_rel_err']:15.3e} {r['output_rel_err']:15.3e}")
    for k, v in result["max"].items():
        lines.append(f"max {k}: {v:.3e}")
    b = result.get("budget")
    if b:
        p, w, o = b["predicted_error"], b["measured_weight_error"], b["measured_output_error"]
        lines.append(
            f"budget {b['budget']}: {b['moved_layers']} layers moved to fp8; weight error predicted worst "
            f"{p['worst']:.3e} / weighted mean {p['weighted_mean']:.3e}, measured worst {w['worst']:.3e} / "
            f"weighted mean {w['weighted_mean']:.3e}; output error measured worst {o['worst']:.3e} / "
            f"weighted mean {o['weighted_mean']:.3e}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
