"""Command line: `python -m quant inspect FILE [--json]`, `python -m quant verify FILE --reference REF`,
`python -m quant convert SRC OUT [--policy P] [--encoding ltx-core|comfy-native] [--per-row]`."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from .backends import BackendUnavailable
from .convert import ENCODINGS, convert
from .errors import CheckpointError
from .plan import plan_checkpoint
from .policy import PolicyError
from .report import build_report, format_text
from .units import format_gb
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
    con = sub.add_parser(
        "convert",
        help="write an fp8 bundle: SRC streamed through the load policy into OUT, one tensor at a time",
    )
    con.add_argument("src")
    con.add_argument("out")
    con.add_argument(
        "--policy",
        default="auto",
        help="which layers are fp8: preset and rules as for a load, e.g. 'fp8-cast; transformer_blocks.0.*=bf16' "
        "(auto keeps the file's storage)",
    )
    con.add_argument(
        "--encoding",
        default="ltx-core",
        choices=ENCODINGS,
        help="ltx-core: LTX-2's own conventions; comfy-native: plus the header ComfyUI's own loader needs",
    )
    con.add_argument("--per-row", action="store_true", help="layers quantized here get one scale per output row")
    con.add_argument("--json", action="store_true", help="machine-readable summary")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "convert":
            result = convert(
                args.src, args.out, args.policy, args.encoding, args.per_row, progress=_Progress(sys.stderr)
            )
            print(json.dumps(result.to_dict(), indent=1) if args.json else _convert_text(result))
        elif args.cmd == "inspect":
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
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    return 0


class _Progress:
    """One progress line on stderr: rewritten in place on a terminal, else a line per 10%."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.last = -1.0

    def __call__(self, done: int, total: int, key: str) -> None:
        frac = done / total if total else 1.0
        now = time.perf_counter()
        elapsed = now - self.t0
        if self.tty and (now - self.last < 0.2 and done < total):
            return
        if not self.tty and int(frac * 10) == int(self.last) and done < total:
            return
        self.last = now if self.tty else int(frac * 10)
        line = (
            f"convert: {format_gb(done)} / {format_gb(total)} ({100 * frac:.0f}%), "
            f"{done / elapsed / 1e9 if elapsed > 0 else 0:.2f} GB/s"
        )
        self.stream.write(f"\r{line}\x1b[K" + ("\n" if done >= total else "") if self.tty else line + "\n")
        self.stream.flush()


def _convert_text(r) -> str:
    layers = r.layers
    lines = [
        f"wrote {r.out} ({r.encoding}, policy {r.policy}{', per-row' if r.per_row else ''}): {r.tensors} tensors, "
        f"{format_gb(r.bytes)} in {r.seconds:.1f} s ({r.gb_per_s:.2f} GB/s)",
        f"fp8 layers: {layers['fp8_kept']} kept as in the source, {layers['fp8_quantized']} quantized here; "
        f"full precision: {layers['full_precision']}; {r.passengers} keys outside the transformer copied as they are",
    ]
    if r.dropped_markers:
        lines.append(
            f"format marker(s) not copied (the {r.encoding} encoding replaces them): {', '.join(r.dropped_markers)}"
        )
    return "\n".join(lines)


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
