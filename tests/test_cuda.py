"""On a CUDA device (marker `gpu`; skipped without one): the fp8 modes' math on the GPU against
float64 references, a streamed load straight to the device, the device's mode decision, and the
host's model built by the bridge running on the GPU against the same model on the CPU.

`make gpu-check` (tools/gpu_check.py) runs these with `-m gpu` on the GPU machine.
"""

from __future__ import annotations

import pytest
import torch
from support.numerics import dequant64, rel_err

from quant.device import device_caps
from quant.fp8 import Fp8Weight
from quant.layer import QuantLayer
from quant.linear import QuantLinear
from quant.modes import decide_mode
from quant.plan import plan_checkpoint
from quant.policy import Policy
from quant.stream import iter_load
from tools import ltx2_fixture as F

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _caps():
    return device_caps(CUDA)


def _layer(out_f=512, in_f=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) / in_f**0.5
    b = torch.randn(out_f, generator=g) * 0.02
    x = torch.randn(64, in_f, generator=g).clamp_(-4, 4)
    return w, b, x


def test_device_caps_decide_the_fp8_mode():
    caps = _caps()
    major, minor = torch.cuda.get_device_capability(0)
    assert caps.fp8_gemm_fast == ((major, minor) >= (8, 9)), caps
    want = "scaled-mm" if caps.fp8_gemm_fast else "fp8-cast"
    d = decide_mode(Policy("auto"), "transformer_blocks.3.ff.net.0.proj", (16384, 4096), True, caps)
    assert d.mode == want and d.fallback is None
    # A gate-logit layer with 8 heads cannot run the fp8 GEMM: fp8-cast, with the reason typed.
    d = decide_mode(Policy("scaled-mm"), "transformer_blocks.3.attn1.to_gate_logits", (8, 4096), True, caps)
    assert d.mode == "fp8-cast" and d.fallback is not None


@pytest.mark.parametrize("mode", ["fp8-cast", "scaled-mm"])
def test_fp8_modes_on_the_gpu_match_float64(mode):
    if mode == "scaled-mm" and not _caps().fp8_gemm:
        pytest.skip(f"{_caps().name} has no fp8 GEMM")
    w, b, x = _layer()
    fp8 = Fp8Weight.quantize(w.to(torch.bfloat16), input_scale=(x.abs().amax() / 448).float())
    layer = QuantLayer("l", fp8.to(CUDA), b.to(CUDA, torch.bfloat16), mode, "test")
    y = QuantLinear(layer, activation="static", backend="torch")(x.to(CUDA, torch.bfloat16))
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16
    ref = x.double() @ dequant64(fp8.codes, fp8.scale).t() + b.to(torch.bfloat16).double()
    err = rel_err(y.cpu(), ref)
    # fp8-cast: the stored weight exactly, bf16 rounding only (~2^-8). scaled-mm also rounds the
    # activation to e4m3 (relative step 2^-4 -> ~2-3% in the output).
    assert err < (0.01 if mode == "fp8-cast" else 0.06), err
    assert torch.isfinite(y).all()


def test_streamed_load_to_the_gpu_keeps_codes_and_scales(tmp_path):
    fx = F.write_checkpoint(tmp_path / "tiny.safetensors", F.config(F.TINY), "ltx-core", seed=3, prefix="")
    plan = plan_checkpoint(fx.path, "auto", device=_caps())
    seen = 0
    for name, item in iter_load(plan, CUDA):
        if isinstance(item, QuantLayer) and item.quantized:
            assert item.weight.codes.device.type == "cuda" and item.scale.device.type == "cuda"
            assert torch.equal(item.weight.codes.cpu().view(torch.uint8), fx.codes(name).view(torch.uint8)), name
            assert torch.equal(item.scale.cpu(), fx.quantized[name].scale.reshape(item.scale.shape)), name
            seen += 1
        elif isinstance(item, torch.Tensor):
            assert item.device.type == "cuda", name
    assert seen == len(fx.quantized) > 0


def test_bridge_model_on_the_gpu_matches_the_cpu(tmp_path):
    from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON, import_pack

    if not HOST_AVAILABLE:
        pytest.skip(HOST_SKIP_REASON)
    pack = import_pack()
    import comfy.model_management

    cfg = F.config(F.TINY)
    fx = F.write_checkpoint(tmp_path / "tiny.safetensors", cfg, "ltx-core", seed=5, prefix="", bf16_blocks=())
    g = torch.Generator().manual_seed(0)
    vx = torch.randn(1, cfg["in_channels"], 2, 4, 4, generator=g)
    ax = torch.randn(1, 8, 5, 16, generator=g)
    ctx = torch.randn(1, 7, cfg["cross_attention_dim"] + cfg["audio_cross_attention_dim"], generator=g)
    ts = torch.tensor([0.5])
    outs = {}
    for dev in (torch.device("cpu"), CUDA):
        plan = pack.quant.plan.plan_checkpoint(fx.path, "fp8-cast", device=device_caps(dev))
        hp = pack.bridge.host_model.host_plan(plan, dev)
        patcher = pack.bridge.host_model.build_model_patcher(hp, load_device=dev, offload_device=torch.device("cpu"))
        if dev.type == "cuda":
            comfy.model_management.load_models_gpu([patcher], force_full_load=True)
        dm = patcher.model.diffusion_model
        wdt = hp.plan.compute_dtype  # the host's weight dtype on that device: the inputs' dtype
        with torch.inference_mode():
            out = dm([vx.to(dev, wdt), ax.to(dev, wdt)], ts.to(dev), ctx.to(dev, wdt), frame_rate=25)
        outs[dev.type] = [o.float().cpu() for o in out]
        if dev.type == "cuda":
            lin = dm.get_submodule(sorted(fx.quantized)[0])
            assert lin.weight.device.type == "cuda" and lin.weight.dtype == torch.float8_e4m3fn
            comfy.model_management.unload_all_models()
        del patcher, dm
    for c, g_ in zip(outs["cpu"], outs["cuda"], strict=True):
        assert torch.isfinite(g_).all()
        assert rel_err(g_, c) < 0.05, rel_err(g_, c)
