"""bridge.vram inside the real host (its ModelPatcher in-process): a loaded file's live figures are
its planned figures.

The load report and the loader's badge describe the file as planned (quant.holdings.plan_holdings,
bytes decided per mode); the VRAM Report and the Apply Quant Policy badge describe the live model
(bridge.vram.model_holdings, the real tensors). Both go through quant.holdings.holdings, and for a
loaded file they must agree on every figure: bytes, layers and parameters per mode, the other
tensors, the total and the blocks by mode.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON

pytestmark = [pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON), pytest.mark.usefixtures("one_thread")]

PRESETS = ("fp8-cast", "scaled-mm", "bf16", "auto")
LAYER = "transformer_blocks.1.attn1.to_q"  # quantized in the fixture (block 0 stays bf16)
SEED = 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tools.host_inprocess import import_pack
    from tools.ltx2_fixture import TINY, write_checkpoint, write_lora

    pack = import_pack()
    d = tmp_path_factory.mktemp("vram")
    ckpt, lora = d / "m.safetensors", d / "l.safetensors"
    write_checkpoint(ckpt, TINY, "ltx-core", seed=SEED)
    write_lora(lora, TINY, [LAYER], rank=4, seed=7)
    mods = {n: importlib.import_module(f"{pack.__name__}.{n}") for n in ("bridge.vram", "quant.holdings")}
    return pack, mods, ckpt, lora


def _load(pack, ckpt, policy):
    """(planned holdings, ModelPatcher) of `ckpt` loaded with `policy`. The planned figures are
    taken after the build, in the compute dtype the host picked for full-precision weights."""
    plan = pack.quant.plan.plan_checkpoint(str(ckpt), policy, device="cpu")
    prepared = pack.bridge.host_model.host_plan(plan, CPU)  # the plan in the host's weight dtype
    patcher = pack.bridge.host_model.build_model_patcher(prepared, load_device=CPU, offload_device=CPU)
    return importlib.import_module(f"{pack.__name__}.quant.holdings").plan_holdings(prepared.plan), patcher


@pytest.mark.parametrize("policy", PRESETS)
def test_live_figures_are_the_planned_figures(env, policy):
    pack, mods, ckpt, _ = env
    planned, patcher = _load(pack, ckpt, policy)
    live = mods["bridge.vram"].model_holdings(patcher)
    assert live == planned
    assert live["modes"] and live["other"]["tensors"] > 0
    if policy != "bf16":
        assert any(m != "bf16" for m in live["modes"]), live["modes"]
    # The VRAM Report's flat keys are views of the same figures; every byte is resident on CPU.
    stats = mods["bridge.vram"].model_stats(patcher, "x")
    assert stats["holdings"] == live and stats["total_bytes"] == live["total_bytes"] == stats["resident_bytes"]
    assert stats["weight_bytes_by_mode"] == {
        **{m: v["bytes"] for m, v in live["modes"].items()},
        "other": live["other"]["bytes"],
    }
    assert sum(stats["weight_bytes_by_dtype"].values()) == live["total_bytes"]


def test_apply_quant_policy_and_lora_keep_the_planned_figures(env):
    """fp8-cast -> scaled-mm through Apply Quant Policy shares the codes: the clone holds what a
    scaled-mm load of the file holds. A LoRA merged into an fp8 layer is re-quantized in place:
    the patched model holds what the fp8-cast load held."""
    import comfy.sd
    import comfy.utils

    pack, mods, ckpt, lora = env
    vram = mods["bridge.vram"]
    planned_cast, patcher = _load(pack, ckpt, "fp8-cast")
    planned_mm, _ = _load(pack, ckpt, "scaled-mm")
    caps = pack.quant.device.DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)
    clone, _ = pack.bridge.apply_policy.apply_policy(patcher, pack.quant.policy.Policy("scaled-mm"), caps)
    assert vram.model_holdings(clone) == planned_mm
    assert vram.model_holdings(patcher) == planned_cast, "the input MODEL is unchanged"

    patched, _ = comfy.sd.load_lora_for_models(patcher, None, comfy.utils.load_torch_file(str(lora)), 1.0, 0.0)
    patched.patch_model(device_to=CPU)
    try:
        m = comfy.utils.get_attr(patched.model.diffusion_model, LAYER)
        assert m.weight.dtype == torch.float8_e4m3fn and m.fp8().scale is not m.weight_scale, "merged"
        assert vram.model_holdings(patched) == planned_cast
    finally:
        patched.unpatch_model(device_to=CPU)


def test_layer_state_decides_the_mode_of_a_live_linear(env):
    """Ours: the module's quant_mode with codes, scale and input scale; a scale-less fp8 weight:
    the host's own fp8 storage; anything else: full precision."""
    pack, mods, ckpt, _ = env
    vram, holdings = mods["bridge.vram"], mods["quant.holdings"]
    _, patcher = _load(pack, ckpt, "scaled-mm")
    ours = pack.bridge.model_view.linears(patcher)[LAYER]
    mode, tensors = vram.layer_state(ours)
    assert mode == "scaled-mm" and tensors == (ours.weight, ours.weight_scale, ours.input_scale)

    host = torch.nn.Linear(32, 16, bias=False)
    assert vram.layer_state(host) == ("bf16", (host.weight,))
    host.weight = torch.nn.Parameter(host.weight.data.to(torch.float8_e4m3fn), requires_grad=False)
    assert vram.layer_state(host) == (holdings.HOST_FP8, (host.weight,))
