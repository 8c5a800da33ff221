"""The host's LoRA protocol on our fp8 layers, with the real ModelPatcher in-process.

Checks against float64 math on the fixture's reference weights: a LoRA on an fp8 layer is merged
at full precision and re-quantized with a fresh scale (input_scale kept), and the host's unpatch
restores the file's codes AND scale bit for bit (the scale lives beside the weight, so this is the
place a stale-scale bug would hide).
"""

from __future__ import annotations

import pytest
import torch

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON

pytestmark = pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON)

LAYER = "transformer_blocks.1.attn1.to_q"  # quantized in the fixture (block 0 stays bf16)
SEED = 3
RANK = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tools.host_inprocess import import_pack

    pack = import_pack()
    from tools.ltx2_fixture import TINY, write_checkpoint, write_lora

    d = tmp_path_factory.mktemp("lora")
    ckpt, lora = d / "m.safetensors", d / "l.safetensors"
    write_checkpoint(ckpt, TINY, "ltx-core", seed=SEED)
    write_lora(lora, TINY, [LAYER], rank=RANK, seed=7)
    return pack, TINY, ckpt, lora


def _load(pack, ckpt, policy):
    plan = pack.quant.plan.plan_checkpoint(str(ckpt), policy, device="cpu")
    return pack.bridge.host_model.build_model_patcher(
        plan, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
    )


def _lora_delta(lora_path) -> torch.Tensor:
    from safetensors.torch import load_file

    sd = load_file(str(lora_path))
    a = sd[f"diffusion_model.{LAYER}.lora_A.weight"].double()
    b = sd[f"diffusion_model.{LAYER}.lora_B.weight"].double()
    alpha = sd.get(f"diffusion_model.{LAYER}.alpha")
    scale = (float(alpha) / a.shape[0]) if alpha is not None else 1.0
    return (b @ a) * scale


def test_lora_on_fp8_layer_requantizes_and_unpatch_restores(env):
    import comfy.sd
    import comfy.utils

    from tools.ltx2_fixture import reference_tensor

    pack, cfg, ckpt, lora = env
    patcher = _load(pack, ckpt, "fp8-cast")
    module = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    codes0, scale0, in_scale0 = module.weight.clone(), module.weight_scale.clone(), module.input_scale.clone()
    assert codes0.dtype == torch.float8_e4m3fn and module.quant_mode == "fp8-cast"

    lora_sd = comfy.utils.load_torch_file(str(lora), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, 1.0, 0.0)
    patched.patch_model(device_to=torch.device("cpu"))
    try:
        m = comfy.utils.get_attr(patched.model.diffusion_model, LAYER)
        assert m.weight.dtype == torch.float8_e4m3fn, "LoRA merge must re-quantize, not leave full precision"
        assert not torch.equal(m.fp8().scale, scale0), "a fresh scale is computed for the merged weight"
        assert torch.equal(m.input_scale, in_scale0), "input_scale is kept"
        truth = reference_tensor(cfg, LAYER + ".weight", SEED, torch.float32).double() + _lora_delta(lora)
        eff = m.weight.double() * m.fp8().scale.double()
        rel = float((eff - truth).norm() / truth.norm())
        # e4m3 floor: quantizing the file's weight (~0.026) then re-quantizing the merged one.
        assert rel < 0.06, rel
        # Without the fresh scale (old scale on new codes) the weight would be off by the ratio.
        x = torch.randn(5, m.in_features, dtype=torch.float32)
        y = m(x)
        y_ref = torch.nn.functional.linear(x.double(), truth, m.bias.double())
        assert float((y.double() - y_ref).norm() / y_ref.norm()) < 0.06
    finally:
        patched.unpatch_model(device_to=torch.device("cpu"))
    m = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    assert torch.equal(m.weight.view(torch.uint8), codes0.view(torch.uint8)), "codes restored bit for bit"
    assert torch.equal(m.fp8().scale, scale0), "the file's scale is back with the file's codes"


def test_apply_policy_leaves_input_model_unchanged_and_shares_fp8_codes(env):
    import comfy.utils

    pack, cfg, ckpt, _ = env
    patcher = _load(pack, ckpt, "fp8-cast")
    caps = pack.quant.device.DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)
    policy = pack.quant.policy.Policy("scaled-mm")
    clone, summary = pack.bridge.apply_policy.apply_policy(patcher, policy, caps)
    assert summary["allocated_bytes"] == 0, "fp8-cast -> scaled-mm must not allocate weight memory"
    assert summary["changed"].get("fp8-cast->scaled-mm", 0) > 0
    original = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    swapped = clone.object_patches["diffusion_model." + LAYER]
    assert original.quant_mode == "fp8-cast" and swapped.quant_mode == "scaled-mm"
    assert swapped.weight.data_ptr() == original.weight.data_ptr(), "codes are shared, not copied"
    assert swapped.weight_scale.data_ptr() == original.weight_scale.data_ptr()

    bf16, summary = pack.bridge.apply_policy.apply_policy(patcher, pack.quant.policy.Policy("bf16"), caps)
    assert summary["allocated_bytes"] > 0, "fp8 -> bf16 dequantizes: new memory"
    m = bf16.object_patches["diffusion_model." + LAYER]
    assert m.weight.dtype != torch.float8_e4m3fn
    ref = original.weight.double() * original.weight_scale.double()
    assert torch.allclose(m.weight.double(), ref, rtol=1e-6, atol=0), "bf16 mode is the exact dequantized weight"


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _truth(cfg, lora):
    from tools.ltx2_fixture import reference_tensor

    return reference_tensor(cfg, LAYER + ".weight", SEED, torch.float32).double() + _lora_delta(lora)


def _lora_patched(patcher, lora):
    import comfy.sd
    import comfy.utils

    lora_sd = comfy.utils.load_torch_file(str(lora), safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, 1.0, 0.0)
    return patched


def test_in_place_lora_update_restores_codes_and_scale_and_never_writes_the_file(env):
    """ComfyUI's `weight_inplace_update` (and hook LoRAs) back up and restore only the weight's
    bytes, in place (comfy.utils.copy_to_param): the merged codes are written at the scale in
    force, so the restored codes pair with the file's scale; the file-backed weight is a
    copy-on-write mapping, so the file is never written."""
    import comfy.utils

    pack, cfg, ckpt, lora = env
    before = _sha(ckpt)
    patcher = _load(pack, ckpt, "fp8-cast")
    patcher.weight_inplace_update = True
    module = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    codes0, scale0 = module.weight.clone(), module.weight_scale.clone()
    param = module.weight
    from support.memory import backing

    assert backing({"w": param})["w"] == str(ckpt.resolve()), "the codes are a mapping of the file"
    patched = _lora_patched(patcher, lora)
    patched.patch_model(device_to=torch.device("cpu"))
    try:
        m = comfy.utils.get_attr(patched.model.diffusion_model, LAYER)
        assert m.weight is param, "in place: the same Parameter"
        assert not torch.equal(m.weight.view(torch.uint8), codes0.view(torch.uint8)), "the LoRA is merged"
        assert torch.equal(m.fp8().scale, scale0), "in place: the scale in force stays"
        eff = m.weight.double() * m.fp8().scale.double()
        truth = _truth(cfg, lora)
        assert float((eff - truth).norm() / truth.norm()) < 0.06
    finally:
        patched.unpatch_model(device_to=torch.device("cpu"))
    m = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    assert torch.equal(m.weight.view(torch.uint8), codes0.view(torch.uint8)), "codes restored bit for bit"
    assert torch.equal(m.fp8().scale, scale0), "paired with the file's scale"
    assert _sha(ckpt) == before, "the file on disk is unchanged"


def test_lowvram_partial_load_with_a_lora_runs_and_leaves_the_file(env):
    """The host's lowvram path (ModelPatcher.load with a small lowvram_model_memory): modules are
    cast per forward and the LoRA arrives as a LowVramPatch weight_function; the layer computes
    the merged weight, the stored codes stay the file's, the file is never written."""
    import comfy.utils

    pack, cfg, ckpt, lora = env
    before = _sha(ckpt)
    patcher = _load(pack, ckpt, "fp8-cast")
    codes0 = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER).weight.clone()
    patched = _lora_patched(patcher, lora)
    patched.load(torch.device("cpu"), lowvram_model_memory=1)
    try:
        m = comfy.utils.get_attr(patched.model.diffusion_model, LAYER)
        assert m.weight_function, "lowvram: the LoRA is applied per forward"
        assert torch.equal(m.weight.view(torch.uint8), codes0.view(torch.uint8)), "stored codes untouched"
        x = torch.randn(5, m.in_features, dtype=torch.float32)
        y_ref = torch.nn.functional.linear(x.double(), _truth(cfg, lora), m.bias.double())
        assert float((m(x).double() - y_ref).norm() / y_ref.norm()) < 0.06
    finally:
        patched.unpatch_model(device_to=torch.device("cpu"))
    assert _sha(ckpt) == before


def test_moving_a_model_keeps_file_backed_weights_in_place(env):
    """`.to()` to the device they are on is a no-op (no copy of a file-backed weight); the host's
    ModelPatcher.load on the CPU moves nothing."""
    from support.memory import backing

    pack, cfg, ckpt, _ = env
    patcher = _load(pack, ckpt, "fp8-cast")
    dm = patcher.model.diffusion_model
    mapped = {n: p for n, p in dm.named_parameters() if backing({"p": p})["p"]}
    assert mapped, "the fixture's larger weights are file-backed"
    ptrs = {n: p.data_ptr() for n, p in mapped.items()}
    patcher.load(torch.device("cpu"))
    patcher.model.to(torch.device("cpu"))
    for n, p in dict(dm.named_parameters()).items():
        if n in ptrs:
            assert p.data_ptr() == ptrs[n], n
    assert set(backing(dict(dm.named_parameters())).values()) >= {str(ckpt.resolve())}
