"""quant/__main__.py, the CLI, run as users run it (`python -m quant ...` from the repo root, in a
subprocess, or its `main` in process): `inspect FILE [--json]` and
`verify FILE --reference REF [--policy P] [--json]`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quant.__main__ import main as cli_main
from tools import ltx2_fixture as LF

REPO = Path(__file__).resolve().parents[2]

SEED = 11
BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
FLOOR = (0.01, 0.05)
FULL_MAX = 0.01


# Tiny matrices: one thread is ~10x faster than OpenMP's two on a busy 2-core machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run_in_process(capsys, *args):
    """The same entry point without a new interpreter (torch's import costs ~2 s a process)."""
    rc = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def run_cli(*args, check=None):
    p = subprocess.run(
        [sys.executable, "-m", "quant", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV
    )
    if check is not None:
        assert (p.returncode == 0) == check, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    return p


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = {
        "file": LF.write_checkpoint(d / "ltx-core.safetensors", LF.TINY, "ltx-core", seed=SEED),
        "ref": LF.write_checkpoint(d / "ref.safetensors", LF.TINY, "fp32", seed=SEED),
        "per_row": LF.write_checkpoint(
            d / "per_row.safetensors", LF.TINY, "comfy-legacy", seed=SEED, per_row=True, transposed=True, prefix=""
        ),
    }
    return out


# -- inspect --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inspect_json(fx):
    return json.loads(run_cli("inspect", fx["file"].path, "--json", check=True).stdout)


def test_inspect_json(fx, inspect_json):
    f = fx["file"]
    rep = inspect_json
    rows = {r["name"]: r for r in rep["layers"]}
    assert set(rows) == set(f.linear_names())
    for name, r in rows.items():
        for k in ("name", "storage", "layout", "scale", "input_scale"):
            assert k in r
        assert r["layout"] == "[out, in]"
        if name in f.quantized:
            q = f.quantized[name]
            assert r["storage"] == "float8_e4m3fn" and r["encoding"] == "ltx-core"
            assert isinstance(r["scale"], float) and r["scale"] == pytest.approx(float(q.scale), rel=1e-7)
            assert r["input_scale"] == pytest.approx(q.input_scale, rel=1e-7)
            assert r["mode"] == "fp8-cast"  # auto on CPU
        else:
            assert r["storage"] == "bfloat16" and r["scale"] is None and r["input_scale"] is None
            assert r["mode"] == "bf16"
    assert rep["prefix"] == "model.diffusion_model."
    assert set(rep["passengers"]) == {"vae", "audio_vae", "vocoder", "text_embedding_projection"}
    assert rep["unexpected"] == [] and rep["warnings"] == []
    assert rep["layers_by_mode"] == {"fp8-cast": 34, "bf16": len(rows) - 34}


def test_inspect_json_per_row_transposed(fx):
    f = fx["per_row"]
    rep = json.loads(run_cli("inspect", f.path, "--json", "--policy", "scaled-mm", check=True).stdout)
    rows = {r["name"]: r for r in rep["layers"]}
    for name, q in f.quantized.items():
        r = rows[name]
        out_f = LF.expected_linear_shapes(LF.TINY)[name][0]
        assert isinstance(r["scale"], list) and len(r["scale"]) == out_f
        assert r["scale"] == pytest.approx(q.scale.tolist(), rel=1e-7)
        assert r["layout"] == "[in, out]" and r["transposed"] is True
        assert r["encoding"] == "comfy-legacy"
        assert r["mode"] == ("fp8-cast" if out_f % 16 else "scaled-mm")
    assert rep["markers"] == ["scaled_fp8"]
    assert rep["layout"]["fp8"] == "[in, out]"


def test_inspect_text(fx, inspect_json):
    f = fx["file"]
    rep = inspect_json
    p = run_cli("inspect", f.path, "--rows", "200", check=True)
    lines = p.stdout.splitlines()
    assert lines[0] == rep["summary"]
    assert lines[0].startswith("ltx-fp8: ltx-core.safetensors: 110 linears (bf16 76, fp8-cast 34)")
    assert "policy: auto" in lines[1]
    assert any(line.startswith("transformer_blocks.1.attn1.to_k ") and "fp8-cast" in line for line in lines)


@pytest.mark.parametrize(
    "kind, subprocess_",
    [
        ("missing_scale", True),
        ("mixed_layout", False),
        ("negative_scale", False),
        ("unexpected_key", False),
        ("truncate", False),
    ],
)
def test_inspect_broken_file_exits_nonzero_naming_the_culprit(tmp_path, capsys, kind, subprocess_):
    f = LF.write_checkpoint(tmp_path / f"{kind}.safetensors", LF.TINY, "ltx-core", seed=SEED, breakage=kind)
    args = ("inspect", f.path, "--json")
    p = run_cli(*args) if subprocess_ else run_in_process(capsys, *args)
    assert p.returncode != 0
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("error: ")
    assert f.path in p.stderr and f.broken.tensor in p.stderr
    if f.broken.layer:
        assert f.broken.layer in p.stderr


def test_cli_usage_errors(fx, capsys):
    f = fx["file"]
    p = run_in_process(capsys, "inspect", f.path, "--policy", "fp8-cast; transformer_blocks.*=fast")
    assert p.returncode != 0 and "transformer_blocks.*=fast" in p.stderr
    p = run_in_process(capsys, "verify", f.path, "--reference", str(Path(f.path).with_name("nope.safetensors")))
    assert p.returncode != 0 and "nope.safetensors" in p.stderr
    p = run_in_process(capsys, "inspect", f.path, "--policy", "scaled-mm", "--backend", "tensorrt-llm")
    if p.returncode != 0:  # (tensorrt_llm is not installed on CPU machines)
        assert "tensorrt_llm" in p.stderr and "Traceback" not in p.stderr


# -- verify -----------------------------------------------------------------------------------------


def _check_verify_rows(result, f, expect_mode):
    assert result["reference"].endswith("ref.safetensors")
    rows = result["layers"]
    assert {r["name"] for r in rows} == set(f.linear_names())
    for r in rows:
        for k in ("name", "mode", "weight_rel_err", "output_rel_err"):
            assert k in r
        assert r["mode"] == expect_mode(r["name"]), r
        if r["name"] in f.quantized or r["mode"] != "bf16":
            assert FLOOR[0] < r["weight_rel_err"] < FLOOR[1], r
            assert FLOOR[0] < r["output_rel_err"] < (0.06 if r["mode"] == "scaled-mm" else FLOOR[1]), r
        else:
            assert r["weight_rel_err"] < FULL_MAX and r["output_rel_err"] < FULL_MAX, r
    mx = result["max"]
    assert mx["weight_rel_err"] == max(r["weight_rel_err"] for r in rows)
    assert mx["output_rel_err"] == max(r["output_rel_err"] for r in rows)
    for mode in {r["mode"] for r in rows}:
        assert mx[f"weight_rel_err[{mode}]"] == max(r["weight_rel_err"] for r in rows if r["mode"] == mode)


def test_verify_json_default_policy(fx):
    f, ref = fx["file"], fx["ref"]
    p = run_cli("verify", f.path, "--reference", ref.path, "--json", check=True)
    result = json.loads(p.stdout)
    assert result["policy"] == "auto" and result["compute_dtype"] == "float32"
    _check_verify_rows(result, f, lambda n: "fp8-cast" if n in f.quantized else "bf16")
    assert FLOOR[0] < result["max"]["weight_rel_err"] < FLOOR[1]
    assert result["max"]["weight_rel_err[bf16]"] < FULL_MAX


def test_verify_policy_rule_makes_block_1_bf16(fx):
    f, ref = fx["file"], fx["ref"]
    policy = "fp8-cast; transformer_blocks.1.*=bf16"
    p = run_cli("verify", f.path, "--reference", ref.path, "--policy", policy, "--json", check=True)
    result = json.loads(p.stdout)
    assert result["policy"] == policy

    def mode(n):
        m = BLOCK.match(n)
        if not m:
            return "bf16"
        return "bf16" if m.group(1) == "1" else "fp8-cast"

    _check_verify_rows(result, f, mode)
    rows = {r["name"]: r for r in result["layers"]}
    # Block 1 is fp8 in the file: bf16 mode dequantizes it (the file's error, no more);
    # block 0 is bf16 in the file and was quantized at load.
    assert all(r["mode"] == "bf16" for n, r in rows.items() if n.startswith("transformer_blocks.1."))
    assert all(r["mode"] == "fp8-cast" for n, r in rows.items() if n.startswith("transformer_blocks.0."))


def test_verify_text_and_scaled_mm(fx, capsys):
    f, ref = fx["file"], fx["ref"]
    p = run_in_process(
        capsys, "verify", f.path, "--reference", ref.path, "--policy", "scaled-mm", "--activation-scale", "dynamic"
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert "policy scaled-mm" in out[0]
    assert any(line.startswith("transformer_blocks.1.ff.net.2 ") and " scaled-mm " in line for line in out)
    mx = {m.group(1): float(m.group(2)) for m in (re.match(r"max (\S+): (\S+)", line) for line in out) if m}
    assert FLOOR[0] < mx["output_rel_err[scaled-mm]"] < 0.06
    assert mx["weight_rel_err[bf16]"] < FULL_MAX


def test_verify_refuses_broken_file(tmp_path, fx, capsys):
    f = LF.write_checkpoint(tmp_path / "nan.safetensors", LF.TINY, "ltx-core", seed=SEED, breakage="nan_codes")
    p = run_in_process(capsys, "verify", f.path, "--reference", fx["ref"].path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert f.broken.layer in p.stderr and "NaN" in p.stderr
