"""quant/verify.py: `verify()` in process for every encoding and preset; it also measures the
per-encoding / per-mode error maxima, prints them (pytest -s) and writes them to
test-artifacts/quant-verify-errors.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quant.verify import verify
from tools import ltx2_fixture as LF

REPO = Path(__file__).resolve().parents[2]
SEED = 11
FLOOR = (0.01, 0.05)
FULL_MAX = 0.01

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    return {"ref": LF.write_checkpoint(d / "ref.safetensors", LF.TINY, "fp32", seed=SEED)}


# -- the measured table -------------------------------------------------------------------------------


def test_verify_error_table(tmp_path_factory, fx):
    """verify() (in process) for every encoding and preset, plus per-row / transposed variants and
    dynamic activation scales: quantized layers at the fp8 floor, full-precision ones near zero.
    Prints (pytest -s) and writes test-artifacts/quant-verify-errors.md: per mode the layers ran in,
    max weight_rel_err / max output_rel_err (and, in brackets, the same over the layers stored fp8
    in the file, where they differ)."""
    d = tmp_path_factory.mktemp("table")
    ref = fx["ref"]
    files = [(enc, LF.write_checkpoint(d / f"{enc}.safetensors", LF.TINY, enc, seed=SEED)) for enc in LF.ENCODINGS]
    files += [
        ("ltx-core per-row", LF.write_checkpoint(d / "pr.safetensors", LF.TINY, "ltx-core", seed=SEED, per_row=True)),
        (
            "ltx-core transposed",
            LF.write_checkpoint(d / "tr.safetensors", LF.TINY, "ltx-core", seed=SEED, transposed=True),
        ),
        (
            "comfy-legacy per-row [out,1] transposed",
            LF.write_checkpoint(
                d / "lg.safetensors", LF.TINY, "comfy-legacy", seed=SEED, per_row=True, scale_2d=True, transposed=True
            ),
        ),
    ]
    runs = [
        ("auto", "static"),
        ("fp8-cast", "static"),
        ("scaled-mm", "static"),
        ("scaled-mm", "dynamic"),
        ("bf16", "static"),
    ]
    modes = ("bf16", "fp8-cast", "scaled-mm")
    lines = [
        "| file | policy | " + " | ".join(f"{m}: n, max w / max out" for m in modes) + " |",
        "|---|---|" + "---|" * len(modes),
    ]

    def cell(rows, in_file):
        if not rows:
            return "-"
        w, o = max(r["weight_rel_err"] for r in rows), max(r["output_rel_err"] for r in rows)
        txt = f"{len(rows)}, {w:.4f} / {o:.4f}"
        fp8 = [r for r in rows if r["name"] in in_file]
        if fp8 and len(fp8) != len(rows):
            txt += (
                f" (fp8 in file: {max(r['weight_rel_err'] for r in fp8):.4f} / "
                f"{max(r['output_rel_err'] for r in fp8):.4f})"
            )
        return txt

    for label, f in files:
        for policy, act in runs:
            res = verify(f.path, ref.path, policy, activation=act)
            rows = res["layers"]
            assert len(rows) == len(f.linear_names())
            pol = policy + (f" ({act} act.)" if policy == "scaled-mm" else "")
            lines.append(
                f"| {label} | {pol} | "
                + " | ".join(cell([r for r in rows if r["mode"] == m], f.quantized) for m in modes)
                + " |"
            )
            for r in rows:
                if r["name"] in f.quantized or r["mode"] != "bf16":
                    assert FLOOR[0] < r["weight_rel_err"] < FLOOR[1], (label, policy, r)
                    assert r["output_rel_err"] < (0.06 if r["mode"] == "scaled-mm" else FLOOR[1]), (label, policy, r)
                else:
                    assert r["weight_rel_err"] < FULL_MAX and r["output_rel_err"] < FULL_MAX, (label, policy, r)
    table = "\n".join(lines)
    print("\n" + table)
    art = REPO / "test-artifacts"
    art.mkdir(exist_ok=True)
    (art / "quant-verify-errors.md").write_text(
        f"TINY config (2 blocks, block 0 bf16 in the fp8 files), seed {SEED}; reference = the fp32 file of the "
        f"same seed; compute float32, CPU, torch._scaled_mm. Errors are relative Frobenius norms; "
        f"output on {64} random N(0,1) tokens vs float64 F.linear with the reference weight.\n\n{table}\n"
    )
