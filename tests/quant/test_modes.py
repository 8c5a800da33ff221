"""quant/modes.py: the one decision of a layer's mode, over every preset, storage, layer kind,
device and kernel shape, written out as a table (the rules of the policy, not the code's logic)."""

from __future__ import annotations

import itertools

import pytest

from quant.device import DeviceCaps
from quant.modes import Fallback, decide_mode, fallback_warning, kernel_accepts
from quant.policy import Policy

CPU = DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)  # torch._scaled_mm runs, slowly
SM86 = DeviceCaps("cuda:0 (NVIDIA GeForce RTX 3090, sm_86)", fp8_gemm=False, fp8_gemm_fast=False)
SM90 = DeviceCaps("cuda:0 (NVIDIA H100, sm_90)", fp8_gemm=True, fp8_gemm_fast=True)
DEVICES = {"cpu": CPU, "sm_86": SM86, "sm_90": SM90}

BLOCK = "transformer_blocks.3.attn1.to_q"  # a linear inside a transformer block
SENSITIVE = "proj_out"  # a top-level layer: the official files never quantize it
GOOD_DIMS, GATE_DIMS = (4096, 4096), (24, 4096)  # gate logits [heads, dim] of a 24-head model

# (preset, stored as e4m3, layer) -> what the policy asks for; "best" = the device's best fp8 mode.
REQUESTED = {
    ("auto", True, BLOCK): "best",
    ("auto", False, BLOCK): "bf16",
    ("auto", True, SENSITIVE): "best",
    ("auto", False, SENSITIVE): "bf16",
    ("fp8-cast", True, BLOCK): "fp8-cast",
    ("fp8-cast", False, BLOCK): "fp8-cast",
    ("fp8-cast", True, SENSITIVE): "best",  # sensitive layers keep the file's storage
    ("fp8-cast", False, SENSITIVE): "bf16",
    ("scaled-mm", True, BLOCK): "scaled-mm",
    ("scaled-mm", False, BLOCK): "scaled-mm",
    ("scaled-mm", True, SENSITIVE): "best",
    ("scaled-mm", False, SENSITIVE): "bf16",
    ("bf16", True, BLOCK): "bf16",
    ("bf16", False, BLOCK): "bf16",
    ("bf16", True, SENSITIVE): "bf16",
    ("bf16", False, SENSITIVE): "bf16",
}
BEST = {"cpu": "fp8-cast", "sm_86": "fp8-cast", "sm_90": "scaled-mm"}
# (device, dims accepted by the fp8 GEMM) -> how a layer asked to run as scaled-mm runs, and why not.
SCALED_MM = {
    ("cpu", True): ("scaled-mm", None),
    ("cpu", False): ("fp8-cast", Fallback.KERNEL_DIMS),
    ("sm_86", True): ("fp8-cast", Fallback.NO_FP8_GEMM),
    ("sm_86", False): ("fp8-cast", Fallback.KERNEL_DIMS),  # the kernel reason is named first
    ("sm_90", True): ("scaled-mm", None),
    ("sm_90", False): ("fp8-cast", Fallback.KERNEL_DIMS),
}


@pytest.mark.parametrize(
    "preset, stored, layer, device, dims",
    list(
        itertools.product(
            ("auto", "fp8-cast", "scaled-mm", "bf16"),
            (True, False),
            (BLOCK, SENSITIVE),
            DEVICES,
            (GOOD_DIMS, GATE_DIMS),
        )
    ),
)
def test_every_preset_storage_layer_device_and_shape(preset, stored, layer, device, dims):
    requested = REQUESTED[(preset, stored, layer)]
    requested = BEST[device] if requested == "best" else requested
    mode, fallback = SCALED_MM[(device, dims == GOOD_DIMS)] if requested == "scaled-mm" else (requested, None)
    d = decide_mode(Policy(preset), layer, dims, stored, DEVICES[device])
    assert (d.mode, d.requested, d.fallback) == (mode, requested, fallback)
    assert bool(d.message) == (fallback is not None)


def test_rules_win_over_preset_and_sensitivity():
    p = Policy.from_string(f"bf16; {SENSITIVE}=scaled-mm; transformer_blocks.3.*=fp8-cast; *=auto")
    assert decide_mode(p, SENSITIVE, GOOD_DIMS, False, SM90).mode == "scaled-mm"  # named: obeyed
    assert decide_mode(p, BLOCK, GOOD_DIMS, True, SM90).mode == "fp8-cast"  # first match wins
    other = "transformer_blocks.4.ff.net.2"
    assert decide_mode(p, other, GOOD_DIMS, True, SM90).mode == "scaled-mm"  # `auto` rule: best fp8
    assert decide_mode(p, other, GOOD_DIMS, False, SM90).mode == "bf16"  # `auto` keeps full precision
    # A rule asking scaled-mm still meets the kernel and the device.
    d = decide_mode(p, SENSITIVE, GATE_DIMS, False, SM90)
    assert (d.mode, d.requested, d.fallback) == ("fp8-cast", "scaled-mm", Fallback.KERNEL_DIMS)
    d = decide_mode(p, SENSITIVE, GOOD_DIMS, False, SM86)
    assert (d.mode, d.requested, d.fallback) == ("fp8-cast", "scaled-mm", Fallback.NO_FP8_GEMM)


def test_messages_name_the_context():
    d = decide_mode(Policy("scaled-mm"), BLOCK, GATE_DIMS, True, SM90)
    assert d.message == "scaled-mm needs dims multiple of 16, got [24, 4096]"
    d = decide_mode(Policy("scaled-mm"), BLOCK, GOOD_DIMS, True, SM86)
    assert d.message == f"{SM86.name} has no fp8 GEMM (needs CUDA compute capability 8.9+)"
    names = [f"transformer_blocks.{i}.attn1.to_gate_logits" for i in range(6)]
    w = fallback_warning(Fallback.KERNEL_DIMS, names, SM90.name)
    assert w.startswith("6 layers have dims not multiple of 16") and names[3] in w and names[4] not in w
    w = fallback_warning(Fallback.NO_FP8_GEMM, names, SM86.name)
    assert "6 layers run as fp8-cast" in w and SM86.name in w


@pytest.mark.parametrize(
    "out_in, ok", [((16, 16), True), ((4096, 16384), True), ((32, 4096), True), ((8, 4096), False), ((4096, 24), False)]
)
def test_kernel_accepts(out_in, ok):
    assert kernel_accepts(*out_in) is ok
