"""Fidelity: the tiny LTXAV model's full forward output, per mode, against the original.

`python -m bench.fidelity '<json spec>'` (one process, host imported). Files (tools.ltx2_fixture
TINY: 2 blocks, both quantized, so that every preset keeps the file's fp8 layers and quantizes
nothing on the fly; non-block layers stay bf16 as in the official files; one seed):
`bf16` (the original weights), `ltx-core` (fp8 codes + scales, no quant metadata) and
`comfy-native-header` (the same codes + `_quantization_metadata`).

References, both run in float32 on the host's own model class:
- `original`: the bf16 file through the host's loader (the weights before quantization);
- `dequantized`: the same model with every quantized layer's weight set to `codes * scale`
  (the fp8 floor: what a correct fp8 loader computes, up to its activation handling).
Rows: the pack (`bridge.host_model.build_model_patcher` from a `quant` plan) on the ltx-core file
in each mode, scaled-mm with the static (file) and dynamic activation scale; and the host's own
`comfy.sd.load_diffusion_model` on the ltx-core file (scales dropped, as in Lightricks/LTX-2 PR #172) and on the
comfy-native-header file. Errors are `||out - ref|| / ||ref||`, video and audio outputs apart.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from .common import emit


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(spec: dict) -> dict:
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import comfy.sd
    import torch

    from tools import ltx2_fixture as F

    logging.disable(logging.WARNING)
    torch.manual_seed(0)

    work = spec["workdir"]
    os.makedirs(work, exist_ok=True)
    cfg = F.config(F.TINY)
    seed = 11
    fx = {}
    for enc in ("bf16", "ltx-core", "comfy-native-header"):
        fx[enc] = F.write_checkpoint(
            os.path.join(work, f"tiny-{enc}.safetensors"),
            cfg,
            enc,
            seed=seed,
            prefix="",
            passengers=False,
            bf16_blocks=(),
        )
    quantized = sorted(fx["ltx-core"].quantized)

    g = torch.Generator().manual_seed(1234)
    vx = torch.randn(1, cfg["in_channels"], 2, 4, 4, generator=g)
    ax = torch.randn(1, 8, 5, 16, generator=g)
    ctx = torch.randn(1, 7, cfg["cross_attention_dim"] + cfg["audio_cross_attention_dim"], generator=g)
    ts = torch.tensor([0.5])

    def forward(dm, dtype=None):
        dtype = dtype or dm.patchify_proj.weight.dtype
        if dtype.is_floating_point and dtype.itemsize == 1:
            dtype = torch.float32
        with torch.inference_mode():
            out = dm([vx.to(dtype), ax.to(dtype)], ts, ctx.to(dtype), frame_rate=25)
        return [o.float() for o in out], dtype

    def host_model(path):
        return comfy.sd.load_diffusion_model(path).model.diffusion_model

    # References (float32).
    ref_dm = host_model(fx["bf16"].path).float()
    original, _ = forward(ref_dm, torch.float32)
    with torch.no_grad():
        for layer in quantized:
            ref_dm.get_submodule(layer).weight.copy_(fx["ltx-core"].true_weight(layer))
    dequantized, _ = forward(ref_dm, torch.float32)
    del ref_dm

    rows = []

    def add(source, label, mode, out, dtype, seconds, note=""):
        rows.append(
            {
                "source": source,
                "label": label,
                "mode": mode,
                "compute_dtype": str(dtype).replace("torch.", ""),
                "video_err_vs_original": rel(out[0], original[0]),
                "audio_err_vs_original": rel(out[1], original[1]),
                "video_err_vs_dequantized": rel(out[0], dequantized[0]),
                "audio_err_vs_dequantized": rel(out[1], dequantized[1]),
                "finite": bool(all(torch.isfinite(o).all() for o in out)),
                "load_s": seconds,
                "note": note,
            }
        )

    plan_checkpoint = pack.quant.plan.plan_checkpoint
    build = pack.bridge.host_model.build_model_patcher
    cpu = torch.device("cpu")
    for label, policy, activation in (
        ("pack auto (CPU: fp8-cast)", "auto", "static"),
        ("pack fp8-cast", "fp8-cast", "static"),
        ("pack scaled-mm (static input scale)", "scaled-mm", "static"),
        ("pack scaled-mm (dynamic input scale)", "scaled-mm", "dynamic"),
        ("pack bf16 (dequantized at load)", "bf16", "static"),
    ):
        t = time.perf_counter()
        plan = plan_checkpoint(fx["ltx-core"].path, policy, activation=activation)
        dm = build(plan, load_device=cpu, offload_device=cpu).model.diffusion_model
        secs = time.perf_counter() - t
        modes = sorted({lp.mode for lp in plan.layers if lp.name in set(quantized)})
        out, dt = forward(dm)
        add("pack", label, "/".join(modes), out, dt, secs, f"{len(quantized)} fp8 layers ran as {', '.join(modes)}")
        del dm

    t = time.perf_counter()
    dm = host_model(fx["ltx-core"].path)
    secs = time.perf_counter() - t
    w = dm.get_submodule(quantized[0]).weight
    werr = rel(
        w.float() if not hasattr(w, "dequantize") else w.dequantize().float(),
        fx["bf16"].reference(quantized[0]).float(),
    )
    out, dt = forward(dm)
    add(
        "host",
        "host loader, ltx-core file (no quant metadata)",
        "host",
        out,
        dt,
        secs,
        f"scales dropped as unexpected keys: weight rel. error of {quantized[0]} = {werr:.3g}",
    )
    del dm
    t = time.perf_counter()
    dm = host_model(fx["comfy-native-header"].path)
    secs = time.perf_counter() - t
    w = dm.get_submodule(quantized[0]).weight
    out, dt = forward(dm)
    add(
        "host",
        "host loader, comfy-native-header file",
        "host",
        out,
        dt,
        secs,
        "loaded as fp8" if hasattr(w, "dequantize") else f"weight dtype {w.dtype}",
    )
    del dm
    return {
        "config": "tools.ltx2_fixture.TINY (2 blocks, both fp8; other layers bf16)",
        "quantized_layers": len(quantized),
        "seed": seed,
        "rows": rows,
        "input_shapes": {"video": list(vx.shape), "audio": list(ax.shape), "context": list(ctx.shape)},
    }


def main(argv: list[str]) -> int:
    emit(run(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
