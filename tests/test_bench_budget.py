"""bench/budget.py on its smoke profile (tiny files, seconds): the figures it writes are the
planner's (bytes within the budget, the refusal with its smallest size, verify's measurement)."""

from __future__ import annotations

import json

from bench import budget as bench_budget


def test_budget_bench_smoke(tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "B.md"
    assert (
        bench_budget.main(["--profile", "smoke", "--out", str(out), "--md", str(md), "--workdir", str(tmp_path)]) == 0
    )
    r = json.loads(out.read_text())
    runs = {(x["file"], x["budget"]): x for x in r["runs"]}
    fits = runs[("smoke_fp8.safetensors", "0.8MB")]
    assert not fits["refused"] and fits["report_total_bytes"] == fits["fit"]["total_bytes"] <= 800_000
    assert fits["fit"]["moved_layers"] > 0 and fits["plan_over_read"] > 0
    v = fits["verify"]
    assert (
        v["measured_weight_error"]["worst"] == fits["fit"]["predicted_error"]["worst"]
        or abs(v["measured_weight_error"]["worst"] - fits["fit"]["predicted_error"]["worst"])
        < 1e-6 * fits["fit"]["predicted_error"]["worst"]
    )
    refused = runs[("smoke_fp8.safetensors", "0.1MB")]
    assert refused["refused"] and refused["minimum_bytes"] > 100_000 and "cannot be met" in refused["message"]
    bf16 = runs[("smoke_bf16.safetensors", "0.9MB")]
    assert bf16["fit"]["total_bytes"] <= 900_000 and bf16["fit"]["moved_layers"] > 0
    text = md.read_text()
    assert "<!-- BEGIN bench:budget -->" in text and "refused before loading" in text
    assert not list(tmp_path.glob("smoke_*.safetensors"))  # generated files deleted
