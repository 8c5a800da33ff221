"""`make gpu-check`'s CPU dry run (`tools/gpu_check.py --dry-run`): every step of the GPU check runs
end to end at tiny widths, so the prepared command does not first fail on the GPU machine.
Figures are checked for what they mean (quantization happened, outputs finite, every mode
measured), never for speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_check
from tools import ltx2_fixture as F

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    p = subprocess.run(
        [sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(out), "--workdir", str(tmp / "work")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text()), tmp


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_every_step_ran_and_passed(dry_run):
    r, _ = dry_run
    assert r["dry_run"] is True and r["failed"] == []
    for step in ("env", "cuda_tests", "block_forward", "model_step", "file_load"):
        assert r[step].get("ok") is True, (step, r[step])
    assert r["env"]["host"] == "ComfyUI importable"
    # The GPU tests are found by their marker (they skip here: no CUDA).
    assert "tests/test_cuda.py" in r["cuda_tests"]["files"]
    assert r["cuda_tests"]["returncode"] == 0


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_model_step_runs_each_mode_on_the_bundle_layout(dry_run):
    r, _ = dry_run
    ms = r["model_step"]
    rows = {x["mode"]: x for x in ms["rows"]}
    assert set(rows) == {"bf16", "fp8-cast", "scaled-mm"}
    cfg = F.config(F.TINY)
    n_fp8 = len(gpu_check.fp8_layers_of_bundle(cfg))
    assert ms["fp8_layers_of_bundle"] == n_fp8 > 0
    for mode, x in rows.items():
        assert x["finite"] and x["step_s"] > 0, (mode, x)
    assert rows["bf16"]["layers_by_mode"] == {"bf16": sum(rows["bf16"]["layers_by_mode"].values())}
    # fp8 presets, decided as a load of the bundle decides them (quant.modes.decide_mode): every
    # block linear fp8 (the bundle's bf16 block quantized at load; scaled-mm falls back to fp8-cast
    # where the kernel refuses the dims), the layers outside the blocks kept in bf16.
    blocks = sum(1 for n in F.expected_linear_shapes(cfg) if n.startswith("transformer_blocks."))
    total = sum(rows["bf16"]["layers_by_mode"].values())
    for mode in ("fp8-cast", "scaled-mm"):
        counts = rows[mode]["layers_by_mode"]
        assert counts.get("fp8-cast", 0) + counts.get("scaled-mm", 0) == blocks > n_fp8, (mode, counts)
        assert counts.get("bf16", 0) == total - blocks, (mode, counts)
        # Quantized for real: the output moved off the bf16 one, by about the fp8 floor.
        err = rows[mode]["video_rel_error_vs_bf16"]
        assert 1e-4 < err < 0.2, (mode, err)
    assert rows["scaled-mm"]["layers_by_mode"].get("scaled-mm", 0) > 0  # CPU torch runs _scaled_mm
    w, h, frames = 64, 64, 9
    assert ms["tokens"]["video"] == ((frames - 1) // 8 + 1) * (h // 32) * (w // 32)
    assert ms["tokens"]["audio"] == math.ceil(frames / gpu_check.FPS * 25)


@pytest.mark.slow
@pytest.mark.timeout(700)
def test_forward_benchmark_and_file_load(dry_run):
    r, tmp = dry_run
    modes = {x["mode"] for x in r["block_forward"]["rows"]}
    assert {"full-precision", "fp8-cast", "scaled-mm"} <= modes
    rows = r["file_load"]["rows"]
    assert [x["temperature"] for x in rows[:2]] == ["cold", "warm"]
    for x in rows:
        assert x["load_s"] > 0, x
    core = rows[0]
    assert core["read_s"] > 0 and core["layers_by_mode"].get("fp8-cast", 0) > 0
    assert rows[-1]["route"].startswith("node path")
    # The generated bundle is deleted; nothing partial is left.
    assert not list((tmp / "work").glob("*.safetensors*"))


def test_random_bundle_is_a_loadable_ltx23_file(tmp_path):
    """The file the GPU check writes (random weights drawn on the device) is what the official
    bundle looks like to the pack: config, fp8 layers with both scales, bf16 elsewhere."""
    import torch

    from quant.plan import plan_checkpoint

    cfg = F.config(F.TINY)
    path = str(tmp_path / "b.safetensors")
    made = gpu_check.write_random_bundle(path, cfg, torch.device("cpu"))
    plan = plan_checkpoint(path, "fp8-cast")
    fp8 = {lp.name for lp in plan.layers if lp.src.stored_fp8}
    assert fp8 == gpu_check.fp8_layers_of_bundle(cfg) and made["fp8_layers"] == len(fp8)
    assert all(lp.input_scale is not None and lp.scale is not None for lp in plan.layers if lp.name in fp8)
    assert plan.config.transformer["num_layers"] == cfg["num_layers"]
    assert not os.path.exists(path + ".partial")
