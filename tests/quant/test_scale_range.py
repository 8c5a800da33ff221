"""quant/scale_range.py: a finite, positive scale that makes a layer meaningless is refused naming
the layer and tensor; an implausible one loads with one warning naming the layers."""

from __future__ import annotations

import pytest
import torch

from quant.errors import CheckpointError
from quant.fp8 import Fp8Weight
from quant.linear import linear_forward
from quant.plan import plan_checkpoint
from tools.ltx2_fixture import TINY, write_checkpoint

LAYER = "transformer_blocks.1.attn1.to_k"


def test_why_an_input_scale_of_1e30_is_refused():
    # Static scaled-mm quantizes x / input_scale to e4m3: at 1e30 every activation rounds to zero
    # and the layer outputs its bias alone (the case this module exists for).
    torch.manual_seed(0)
    w = torch.randn(32, 64) * 0.05
    bias = torch.randn(32)
    x = torch.randn(4, 64) * 10
    fp8 = Fp8Weight.quantize(w, input_scale=torch.tensor(1e30))
    y = linear_forward(x, fp8, bias, "scaled-mm", "static")
    assert torch.equal(y, bias.expand_as(y))


@pytest.mark.parametrize("value", [1e30, 1e9, 1e-13])
def test_meaningless_input_scale_is_refused_naming_the_layer(tmp_path, value):
    p = tmp_path / "m.safetensors"
    write_checkpoint(p, TINY, "ltx-core", seed=1, input_scale=value)
    with pytest.raises(CheckpointError, match="input scale") as err:
        plan_checkpoint(str(p), "auto", device="cpu")
    assert err.value.tensor.endswith(".input_scale") and "layer transformer_blocks." in str(err.value)
    assert str(p) in str(err.value)


def test_implausible_input_scale_loads_with_one_warning_naming_the_layers(tmp_path):
    p = tmp_path / "m.safetensors"
    write_checkpoint(p, TINY, "ltx-core", seed=1, input_scale=500.0)
    plan = plan_checkpoint(str(p), "auto", device="cpu")
    lines = [w for w in plan.warnings if "implausible scales" in w]
    assert len(lines) == 1
    fp8_layers = [lp.name for lp in plan.layers if lp.src.stored_fp8]
    assert f"{len(fp8_layers)} layer(s) with implausible scales" in lines[0]
    assert f"{fp8_layers[0]}: input scale 500" in lines[0]


def test_plausible_scales_say_nothing(tmp_path):
    p = tmp_path / "m.safetensors"
    write_checkpoint(p, TINY, "ltx-core", seed=1)  # amax/448 scales, as the official files
    plan = plan_checkpoint(str(p), "auto", device="cpu")
    assert not [w for w in plan.warnings if "implausible" in w]


def test_weight_scale_range():
    from quant.scale_range import check_weight_scale

    assert check_weight_scale(torch.tensor(0.0013), LAYER, "f", "k") is None  # the official example
    assert check_weight_scale(torch.tensor(1e-9), LAYER, "f", "k") == "weight scale 1e-09"
    # Per-row: an all-zero row's tiny scale is harmless; judged by the largest row.
    assert check_weight_scale(torch.tensor([1e-12, 0.002]), LAYER, "f", "k") is None
    with pytest.raises(CheckpointError, match="makes weights up to") as err:
        check_weight_scale(torch.tensor(1e7), LAYER, "f", "k")
    assert err.value.tensor == "k" and LAYER in str(err.value)
