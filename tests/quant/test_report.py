"""quant/report.py: a load's report counts each mode's layers and weight bytes exactly as the
loaded layers hold them, under every preset."""

from __future__ import annotations

from collections import defaultdict

import pytest

from quant.report import build_report
from quant.stream import load
from tools import ltx2_fixture as LF

SEED = 3
PRESETS = ("auto", "fp8-cast", "scaled-mm", "bf16")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ltx_core(tmp_path_factory):
    return LF.write_checkpoint(tmp_path_factory.mktemp("report") / "c.safetensors", LF.TINY, "ltx-core", seed=SEED)


def test_report_bytes_by_mode(ltx_core):
    fx = ltx_core
    for preset in PRESETS:
        plan, layers, _ = load(fx.path, preset)
        rep = build_report(plan)
        by_mode = defaultdict(int)
        for lay in layers.values():
            by_mode[lay.mode] += lay.weight_bytes()
        assert rep["bytes_by_mode"] == dict(by_mode), preset
        assert rep["layers_by_mode"] == {m: sum(1 for lay in layers.values() if lay.mode == m) for m in by_mode}
        assert rep["summary"].startswith("ltx-fp8: ") and f"{len(layers)} linears" in rep["summary"]
