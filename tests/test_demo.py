"""`make run`'s demo (tools/demo.py) end to end, with DEMO_EXIT=1 (what `make demo-check` runs):
it writes the demo files, starts its own host on a free port, queues the example workflows and
prints the VRAM reports and the per-mode agreement table, then exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from support import hostlib

from tools import demo

REPO = Path(__file__).resolve().parent.parent

ROW = re.compile(
    r"^\s+(?P<mode>.+?)\s{2,}(?P<ref>bf16(?: \+ LoRA)?)\s+(?P<video>[0-9.]+e[-+]\d+)\s+"
    r"(?P<audio>[0-9.]+e[-+]\d+)\s*$"
)


def test_demo_assets_are_idempotent(tmp_path):
    logs: list[str] = []
    paths = demo.ensure_assets(tmp_path, log=logs.append)
    assert {p.name for p in paths.values()} == {demo.DEMO_FP8, demo.DEMO_BF16, demo.DEMO_LORA}
    assert paths["fp8"].parent == tmp_path / "checkpoints" and paths["lora"].parent == tmp_path / "loras"
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert len(logs) == 1
    demo.ensure_assets(tmp_path, log=logs.append)
    assert len(logs) == 1, "second run rewrote the files"
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
    paths["lora"].write_bytes(b"")  # damaged: regenerated
    demo.ensure_assets(tmp_path, log=logs.append)
    assert len(logs) == 2 and paths["lora"].stat().st_size > 0
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.host
def test_demo_runs_and_prints_the_agreement_table(tmp_path):
    port = hostlib.free_port()
    env = dict(os.environ, DEMO_EXIT="1", PORT=str(port), HOST_BASE=str(tmp_path / "host"))
    t0 = time.monotonic()
    proc = subprocess.run(
        [hostlib.host_python(), str(REPO / "tools" / "demo.py")],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    log = tmp_path / "host" / "demo-host.log"
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no host log)"
    assert proc.returncode == 0, f"demo exited {proc.returncode} after {time.monotonic() - t0:.0f} s\n{out}\n{tail}"
    assert f"127.0.0.1:{port}" in out
    for name in ("ltx_fp8_single", "ltx_fp8_mix", "lora_reference"):
        assert f"[demo] {name}: success" in out, out
    assert out.count("=== VRAM Report") == 2, out
    assert "ltx23_demo_fp8.safetensors [scaled-mm]" in out and "ltx23_demo_bf16.safetensors [bf16]" in out

    rows = {}
    for line in out[out.index("per-mode agreement") :].splitlines():
        m = ROW.match(line)
        if m:
            rows[m["mode"].strip()] = (m["ref"], float(m["video"]), float(m["audio"]))
    assert {"fp8-cast", "scaled-mm", "fp8-cast + LoRA", "(bf16 + LoRA)"} <= set(rows), out
    assert any(k.startswith("auto (") for k in rows), out
    # Same bounds as tests/test_e2e_workflows.py (measured numbers are documented there).
    for mode, tol in (("fp8-cast", 4e-2), ("scaled-mm", 6e-2)):
        ref, v, a = rows[mode]
        assert ref == "bf16" and 1e-4 < v <= tol and 1e-4 < a <= tol, (mode, rows[mode])
    ref, v, a = rows["fp8-cast + LoRA"]
    assert ref == "bf16 + LoRA" and v <= 3 * rows["fp8-cast"][1] and a <= 3 * rows["fp8-cast"][2], rows
    assert rows["(bf16 + LoRA)"][1] > 4 * v, rows
    assert "DEMO_EXIT set: stopping the host" in out
    # The files went where `make serve` would find them, and the host is gone.
    assert (tmp_path / "host" / "models" / "checkpoints" / demo.DEMO_FP8).is_file()
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=2)
