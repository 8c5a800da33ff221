"""quant/layer.py: the canonical layer refuses an fp8 weight without its scale."""

from __future__ import annotations

import pytest
import torch
from support.numerics import LAYERS

from quant.fp8 import quantize
from quant.layer import QuantLayer
from tools import ltx2_fixture as LF

SEED = 7
CFG = LF.TINY


def ref_weight(layer: str) -> torch.Tensor:
    """The true full-precision weight (float32 as generated), [out, in]."""
    return LF.reference_tensor(CFG, layer + ".weight", SEED, torch.float32)


def test_fp8_weight_without_scale_is_refused():
    codes, _ = quantize(ref_weight(LAYERS[2]))
    with pytest.raises(ValueError, match="scale"):
        QuantLayer("x", codes, None, "bf16")
    with pytest.raises(ValueError, match="scale"):
        QuantLayer("x", ref_weight(LAYERS[2]), None, "fp8-cast")
