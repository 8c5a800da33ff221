"""bench/convert.py end to end on a tiny bundle (the harness of the full-size convert figures): every
row measured against the raw copy of the same run, outputs checked and deleted, results merged into
the given results.json without touching its other sections, the BENCHMARKS block written. No
timing is asserted (figures are reported by the benchmark, never checked by a timed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools import ltx2_fixture as LF

REPO = Path(__file__).resolve().parent.parent


def test_convert_profile_on_a_tiny_bundle(tmp_path):
    src = LF.write_checkpoint(tmp_path / "bundle.safetensors", LF.TINY, "ltx-core", seed=3)
    out, md = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    out.write_text(json.dumps({"load": {"kept": True}}))
    md.write_text("# Benchmarks\n\n<!-- BEGIN bench:load -->\nkept\n<!-- END bench:load -->\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "bench.convert", "--src", src.path, "--out", str(out), "--md", str(md)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["load"] == {"kept": True}
    c = r["convert"]
    copy, *converts = c["rows"]
    assert copy["kind"] == "copy" and copy["ok"] and copy["wall_s"] > 0
    assert [row["encoding"] for row in converts] == ["ltx-core", "comfy-native"]
    for row in converts:
        assert row["time_vs_copy"] > 0 and row["peak_rss_anon"] > 0
        chk = row["check"]
        assert chk["fp8_layers"] == chk["src_fp8_layers"] == len(src.quantized)
        assert all(chk["sampled_identical"].values()) and chk["config_kept"]
        assert chk["quant_metadata"] == (row["encoding"] == "comfy-native")
    assert sorted(os.listdir(tmp_path)) == ["BENCHMARKS.md", "bundle.safetensors", "results.json"]  # outputs deleted
    text = md.read_text()
    assert "kept" in text and "<!-- BEGIN bench:convert -->" in text and "time vs raw copy" in text
