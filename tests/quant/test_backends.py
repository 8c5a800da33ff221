"""quant/backends.py: a GEMM backend asked for but not installed is refused by name; `auto` falls
back to torch quietly, and fp8-cast needs no GEMM backend at all."""

from __future__ import annotations

import pytest
import torch
from support.files import base_files

from quant.backends import BackendUnavailable, tensorrt_llm_available
from quant.fp8 import Fp8Weight, quantize
from quant.layer import QuantLayer
from quant.linear import QuantLinear
from quant.plan import plan_checkpoint

SEED = 5


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_files(tmp_path_factory.mktemp("base"), SEED)


@pytest.mark.skipif(tensorrt_llm_available(), reason="tensorrt_llm is installed here")
def test_tensorrt_llm_asked_for_without_it(base):
    path = base["ltx-core"].path
    with pytest.raises(BackendUnavailable) as ei:
        plan_checkpoint(path, "scaled-mm", backend="tensorrt-llm")
    assert "tensorrt_llm" in str(ei.value) and "tensorrt-llm" in str(ei.value)
    # auto falls back to torch quietly; fp8-cast needs no GEMM backend at all.
    assert plan_checkpoint(path, "scaled-mm", backend="auto").backend == "torch"
    assert plan_checkpoint(path, "fp8-cast", backend="tensorrt-llm").backend == "torch"
    codes, scale = quantize(torch.randn(32, 64))
    with pytest.raises(BackendUnavailable, match="tensorrt_llm"):
        QuantLinear(QuantLayer("x", Fp8Weight(codes, scale), None, "scaled-mm"), backend="tensorrt-llm")
