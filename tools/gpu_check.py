#!/usr/bin/env python
"""The GPU check: one prepared command for a CUDA machine (H100 / H200), within a time budget.

    make gpu-check                       # = python tools/gpu_check.py (the interpreter with CUDA torch)
    python tools/gpu_check.py --dry-run  # the same steps on the CPU at tiny widths (part of make test)

Steps, each timed, each recorded even when it fails (the next one still runs), each skipped with a
reason when the budget (`--budget-s`, default 540 s = 9 minutes) has no room left for it:
1. `env`: torch, CUDA, the device, the host (ComfyUI) importable or not.
2. `cuda_tests`: pytest on the tests marked `gpu` (the files that carry the marker; they skip
   without CUDA), `-m gpu`.
3. `block_forward`: bench/forward.py on the device (one real-width block, bf16 / fp8-cast /
   scaled-mm, single FF linears and the whole block at 512 / 2048 / 8192 tokens).
4. `model_step`: the host's own LTXAVModel at the real LTX-2.3 22B config
   (tools/ltx2_fixture.REAL, 48 blocks), built directly on the device in bf16 with random weights
   (no file), the pack's host Linear (bridge.host_model.make_ops) in every linear. One denoising
   step (one forward, batch 1) at 768x512 and 97 frames (latent 128 x 13 x 16 x 24 = 4992 video
   tokens, 97 audio tokens, 1024 text tokens), per mode: `bf16` (the random weights), then the
   bundle's layout in `fp8-cast` (blocks 2-44 quantized, as the official file stores them) and
   `scaled-mm` (the same codes; static activation scales calibrated from the bf16 step's input
   amax of every layer). Per mode: step time (median of the timed steps after a warm-up),
   `torch.cuda.max_memory_allocated` during the step, weight memory, the output's relative error
   against the bf16 step. Modes go through `quant.modes.decide_mode`, as a load of the file does.
5. `file_load`: a full-size bundle (48 blocks, the bundle's layout, random weights made on the
   device) written to the device's disk, then loaded to the GPU through the core
   (`quant.plan` + `quant.stream.iter_load(plan, "cuda")`), cold (pages dropped) and warm, against
   a raw read of the file at the same temperature; and through the node's path into the host's
   model (`build_model_patcher`, then the host's `load_models_gpu`). Skipped with the reason when
   the disk or the time left cannot take it. The file is deleted at the end.

Results: JSON to `--out` (default `$OUT/gpu_check.json` when OUT is set, else
`.work/gpu_check.json`), printed as a summary. Exit status 0 when every step that ran passed.

Runs from the repo root with the repo's `.host/ComfyUI` (ComfyUI 0.30.0). A machine without
internet access and without ComfyUI's requirements lacks `comfy_aimdo` / `comfy_kitchen` (the
host's own packages): `make gpu-prep` (`--prep`, on a machine with this repo's .venv) copies what
is needed of them into `.gpu-site/` (git-ignored; take it along with `.host/ComfyUI`), which this
script puts on its path. Everything else it needs (torch with CUDA, safetensors, numpy, pytest,
einops, transformers, ...) is what a CUDA PyTorch image has.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_SITE = os.path.join(REPO, ".gpu-site")
BUNDLE_BF16_BLOCKS = (0, 1, 45, 46, 47)
FP8_MAX = 448.0
VIDEO = (768, 512, 97)  # width, height, frames
FPS = 25


def _bootstrap_path() -> None:
    """The repo root and the carried `.gpu-site/` (make gpu-prep) on this process's path and on its
    children's, before anything imports the host."""
    extra = [REPO] + ([GPU_SITE] if os.path.isdir(GPU_SITE) else [])
    for p in reversed(extra):
        if p not in sys.path:
            sys.path.insert(0, p)
    old = os.environ.get("PYTHONPATH", "")
    parts = [p for p in old.split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + [p for p in parts if p not in extra])
    # One copy of each core module: `quant` and the pack's bridge share them (tools/host_inprocess.py).
    from tools.host_inprocess import register_pack

    register_pack()


class Budget:
    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def allows(self, need: float) -> bool:
        return self.left() >= need


def _step(results: dict, name: str, budget: Budget, need_s: float, fn, *args):
    """Run one step: its result, its time, its error (traceback tail) or why it was skipped."""
    if not budget.allows(need_s):
        results[name] = {"skipped": f"not enough time left ({budget.left():.0f} s < ~{need_s:.0f} s needed)"}
        _say(f"{name}: skipped ({results[name]['skipped']})")
        return None
    _say(f"{name}: start ({budget.left():.0f} s left)")
    t = time.perf_counter()
    try:
        out = fn(*args)
        results[name] = {"ok": True, **(out or {})}
    except Exception as e:
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:800]}"}
        results[name]["traceback"] = traceback.format_exc()[-3000:]
    results[name]["seconds"] = time.perf_counter() - t
    r = results[name]
    _say(f"{name}: {'ok' if r['ok'] else 'FAILED: ' + r['error']} ({r['seconds']:.1f} s)")
    return results[name]


def _say(msg: str) -> None:
    sys.stderr.write(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# -- 1. env ----------------------------------------------------------------------------------------------


def step_env(device: str) -> dict:
    import torch

    out = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "gpu_site": os.path.isdir(GPU_SITE),
    }
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        out.update(
            {
                "gpu": p.name,
                "capability": list(torch.cuda.get_device_capability(0)),
                "gpu_memory_bytes": p.total_memory,
                "sm_count": p.multi_processor_count,
            }
        )
    try:
        from tools.host_inprocess import import_host

        import_host()
        out["host"] = "ComfyUI importable"
    except Exception as e:
        out["host"] = f"not importable: {type(e).__name__}: {str(e)[:300]}"
    return out


# -- 2. CUDA-marked tests --------------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    found = []
    for root, _dirs, files in os.walk(os.path.join(REPO, "tests")):
        for fn in files:
            if fn.startswith("test_") and fn.endswith(".py"):
                p = os.path.join(root, fn)
                with open(p, encoding="utf-8") as f:
                    if "pytest.mark.gpu" in f.read():
                        found.append(os.path.relpath(p, REPO))
    return sorted(found)


def step_cuda_tests(timeout: float) -> dict:
    files = gpu_test_files()
    if not files:
        return {"files": [], "summary": "no test carries the gpu marker"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    try:
        import pytest_timeout  # noqa: F401

        cmd += ["--timeout", "300"]
    except ImportError:
        pass
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in (p.stdout or "").splitlines() if ln.strip()]
    summary = lines[-1] if lines else (p.stderr or "").strip()[-300:]
    res = {"files": files, "returncode": p.returncode, "summary": summary, "output_tail": (p.stdout or "")[-4000:]}
    if p.returncode not in (0, 5):
        raise RuntimeError(f"pytest exit {p.returncode}: {summary}\n{(p.stdout or '')[-2000:]}")
    return res


# -- 3. block forward benchmark -------------------------------------------------------------------------


def step_block_forward(work: str, device: str, dry: bool, timeout: float) -> dict:
    from bench.common import run_module
    from tools import ltx2_fixture as F

    cfg = F.config(F.TINY if dry else F.REAL, num_layers=1, connector_num_layers=1)
    path = os.path.join(work, "block.safetensors")
    t = time.perf_counter()
    F.write_checkpoint(path, cfg, "ltx-core", seed=0, prefix="", bf16_blocks=(), passengers=False)
    write_s = time.perf_counter() - t
    if dry:
        prof = {"linear_tokens": [16], "block_tokens": [16], "skipped_block_tokens": [], "forward_max_reps": 1}
        prof["forward_budget_s"] = 1.0
    else:
        prof = {"linear_tokens": [512, 2048, 8192], "block_tokens": [512, 2048, 8192], "skipped_block_tokens": []}
        prof.update(forward_max_reps=5, forward_budget_s=10.0)
    res = run_module("bench.forward", {"file": path, "profile": prof, "device": device}, timeout=timeout)
    os.unlink(path)
    if "error" in res:
        raise RuntimeError(f"bench.forward: {res['error']}\n{res.get('stderr_tail', '')[-1500:]}")
    rows = [
        {
            k: r.get(k)
            for k in ("subject", "tokens", "mode", "dtype", "median_s", "ratio_to_full", "gflops", "cuda_peak_bytes")
        }
        | {"cuda_block_weight_bytes": r.get("cuda_block_weight_bytes"), "ran_as": r.get("ran_as")}
        for r in res["rows"]
    ]
    return {"file_write_s": write_s, "rows": rows, "skipped": res.get("skipped"), "configs": res.get("configs")}


# -- 4. the full-size model, random weights, one step per mode ------------------------------------------


def _fill_(name: str, t) -> None:
    """Random values by what the tensor is (the fixture's rules, drawn on the device): norm weights
    1 + 0.05 N, scale-shift tables 0.05 N, registers U(-1, 1), biases 0.02 N, the rest 0.05 N."""
    import torch

    with torch.no_grad():
        if "register" in name:
            t.uniform_(-1.0, 1.0)
        elif "norm" in name and name.endswith("weight"):
            t.normal_(0.0, 0.05).add_(1.0)
        elif name.endswith("bias"):
            t.normal_(0.0, 0.02)
        else:
            t.normal_(0.0, 0.05)


def build_random_model(cfg: dict, device, dtype):
    """The host's LTXAVModel for `cfg` (detected from a meta state dict, as the pack's loader does),
    built on `device` with the pack's host Linear in every linear; weights random. Returns
    (diffusion_model, {linear name: module})."""
    import torch

    from tools import ltx2_fixture as F
    from tools.host_inprocess import PACKAGE, import_pack

    pack = import_pack()
    import comfy.model_detection

    QuantLayer = sys.modules[f"{PACKAGE}.quant.layer"].QuantLayer
    QuantHostLinear = pack.bridge.host_linear.QuantHostLinear
    shapes = F.expected_state_shapes(cfg)
    sd = {k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}
    meta = {"config": json.dumps({"transformer": cfg, **F.SUBCONFIGS}), "model_version": F.MODEL_VERSION}
    mc = comfy.model_detection.model_config_from_unet(sd, "", metadata=meta)
    if mc is None or mc.unet_config.get("image_model") != "ltxav":
        raise RuntimeError("the host did not detect an LTXAV model from the config's state dict")
    mc.set_inference_dtype(dtype, None, device=device)
    mc.custom_operations = pack.bridge.host_model.make_ops(False)
    model = mc.get_model({}, "", device=device)
    dm = model.diffusion_model
    linears = {n: m for n, m in dm.named_modules() if isinstance(m, QuantHostLinear)}
    with torch.no_grad():
        for n, p in dm.named_parameters():
            if p.device.type != "meta":
                _fill_(n, p)
        for n, m in linears.items():
            w = torch.randn(m.out_features, m.in_features, device=device, dtype=dtype)
            w.mul_(1.0 / math.sqrt(m.in_features))
            b = None
            if m.bias is not None:
                b = torch.empty(m.out_features, device=device, dtype=dtype).normal_(0.0, 0.02)
            m.set_layer(QuantLayer(n, w, b, "bf16", "full-precision"))
    left = [n for n, p in dm.named_parameters() if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"{len(left)} parameters still on meta after the build, first {left[0]}")
    return dm, linears


def fp8_layers_of_bundle(cfg: dict) -> set[str]:
    """The linears the official-layout bundle stores as fp8 (blocks 2-44 of 48; block 1.. of a tiny
    model)."""
    from tools import ltx2_fixture as F

    n = cfg["num_layers"]
    bf16 = BUNDLE_BF16_BLOCKS if n == 48 else (0,)
    return set(F.quantized_layer_names(cfg, [b for b in bf16 if b < n]))


def model_config(dry: bool, widths: str | None = None, layers: int | None = None) -> dict:
    """The model of the check: the real LTX-2.3 config (the dry run: TINY), optionally another
    width set or block count (`--widths real --layers 1` runs real widths on a CPU)."""
    from tools import ltx2_fixture as F

    base = {"real": F.REAL, "tiny": F.TINY}[widths or ("tiny" if dry else "real")]
    return F.config(base, **({"num_layers": layers} if layers else {}))


def step_model(device: str, dry: bool, reps: int, budget: Budget, cfg: dict) -> dict:
    import torch

    from tools.host_inprocess import PACKAGE

    quant = sys.modules.get(f"{PACKAGE}.quant")
    if quant is None:
        from tools.host_inprocess import import_pack

        import_pack()
    Fp8Weight = sys.modules[f"{PACKAGE}.quant.fp8"].Fp8Weight
    QuantLayer = sys.modules[f"{PACKAGE}.quant.layer"].QuantLayer
    decide_mode = sys.modules[f"{PACKAGE}.quant.modes"].decide_mode
    Policy = sys.modules[f"{PACKAGE}.quant.policy"].Policy
    device_caps = sys.modules[f"{PACKAGE}.quant.device"].device_caps

    cuda = device.startswith("cuda")
    dev = torch.device(device)
    dtype = torch.bfloat16
    t = time.perf_counter()
    dm, linears = build_random_model(cfg, dev, dtype)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in dm.parameters())
    fp8_names = fp8_layers_of_bundle(cfg)
    caps = device_caps(dev)

    w, h, frames = VIDEO if not dry else (64, 64, 9)
    lat_f, lat_h, lat_w = (frames - 1) // 8 + 1, h // 32, w // 32
    audio_t = math.ceil(frames / FPS * 25)  # 16 kHz / hop 160 / 4 = 25 audio latents per second
    text_tokens = 1024 if not dry else 16
    g = torch.Generator(device=dev).manual_seed(0)
    # Channels as the model's patchify layers take them (patch size 1: 128 video latent channels;
    # audio: 8 latent channels x 16 frequency bins).
    vx = torch.randn(1, dm.patchify_proj.in_features, lat_f, lat_h, lat_w, device=dev, generator=g).to(dtype)
    ax = torch.randn(1, 8, audio_t, dm.audio_patchify_proj.in_features // 8, device=dev, generator=g).to(dtype)
    ctx_dim = dm.transformer_blocks[0].attn2.to_k.in_features + dm.transformer_blocks[0].audio_attn2.to_k.in_features
    ctx = torch.randn(1, text_tokens, ctx_dim, device=dev, generator=g).to(dtype)
    ts = torch.tensor([0.5], device=dev)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward():
        with torch.inference_mode():
            return dm([vx, ax], ts, ctx, frame_rate=FPS)

    def weights_bytes():
        if cuda:
            return torch.cuda.memory_allocated()
        return None

    amax: dict[str, torch.Tensor] = {}

    def calibrate(m, args, name):
        a = args[0].detach().abs().amax().float()
        amax[name] = torch.maximum(amax[name], a) if name in amax else a

    rows, ref = [], None
    for mode in ("bf16", "fp8-cast", "scaled-mm"):
        if not budget.allows(30 if not dry else 1):
            rows.append({"mode": mode, "skipped": f"not enough time left ({budget.left():.0f} s)"})
            continue
        t = time.perf_counter()
        counts: dict[str, int] = {}
        if mode != "bf16":
            policy = Policy(mode)
            with torch.no_grad():
                for n, m in linears.items():
                    stored = n in fp8_names
                    d = decide_mode(policy, n, (m.out_features, m.in_features), stored, caps)
                    counts[d.mode] = counts.get(d.mode, 0) + 1
                    fp8 = m.fp8()
                    if d.mode == "bf16":
                        if fp8 is not None:  # not reached: the bundle's fp8 layers stay fp8 in fp8 presets
                            m.set_layer(QuantLayer(n, fp8.dequantize(dtype), m.bias, "bf16", "fp8"))
                        continue
                    if fp8 is None:  # first fp8 preset: quantize once, as the file stores it
                        s_in = (amax[n] / FP8_MAX).clamp_min(1e-12) if n in amax else None
                        fp8 = Fp8Weight.quantize(m.weight.data, input_scale=s_in)
                    bias = None if m.bias is None else m.bias.data
                    m.set_layer(QuantLayer(n, fp8, bias, d.mode, "quantized"), activation="static")
            gcollect(cuda)
        else:
            counts = {"bf16": len(linears)}
        convert_s = time.perf_counter() - t
        hooks = []
        if mode == "bf16":
            hooks = [m.register_forward_pre_hook(lambda m, a, n=n: calibrate(m, a, n)) for n, m in linears.items()]
        wb = weights_bytes()
        t = time.perf_counter()
        out = forward()  # warm-up (kernels, cuBLAS handles; bf16: the activation calibration)
        sync()
        first_s = time.perf_counter() - t
        for hk in hooks:
            hk.remove()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else None
        times = []
        for _ in range(reps):
            if times and not budget.allows(max(times) + (20 if not dry else 0)):
                break
            sync()
            t = time.perf_counter()
            out = forward()
            sync()
            times.append(time.perf_counter() - t)
        row = {
            "mode": mode,
            "layers_by_mode": counts,
            "convert_s": convert_s,
            "first_step_s": first_s,
            "step_s": statistics.median(times),
            "steps_s": times,
            "weights_allocated_bytes": wb,
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "step_peak_over_weights_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else None,
            "finite": bool(all(torch.isfinite(o).all() for o in out)),
        }
        outs = [o.float() for o in out]
        if ref is None:
            ref = outs
        else:
            row["video_rel_error_vs_bf16"] = float((outs[0] - ref[0]).norm() / ref[0].norm())
            row["audio_rel_error_vs_bf16"] = float((outs[1] - ref[1]).norm() / ref[1].norm())
        rows.append(row)
        _say(
            f"model_step {mode}: {row['step_s']:.3f} s/step, first {first_s:.1f} s"
            + (f", max allocated {row['max_memory_allocated_bytes'] / 2**30:.1f} GiB" if cuda else "")
        )
        del out, outs
    res = {
        "config": f"{cfg['num_layers']} blocks, video {cfg['num_attention_heads']} x {cfg['attention_head_dim']}, "
        f"audio {cfg['audio_num_attention_heads']} x {cfg['audio_attention_head_dim']}",
        "params": params,
        "build_s": build_s,
        "video": {"width": w, "height": h, "frames": frames, "fps": FPS},
        "latent": {"video": list(vx.shape), "audio": list(ax.shape), "context": list(ctx.shape)},
        "tokens": {"video": lat_f * lat_h * lat_w, "audio": audio_t, "text": text_tokens},
        "fp8_layers_of_bundle": len(fp8_names),
        "scaled_mm_activation": "static, input scales = the bf16 step's input amax / 448 per layer",
        "rows": rows,
    }
    dm = linears = None  # free the model before the next step
    gcollect(cuda)
    bad = [r["mode"] for r in rows if "finite" in r and not r["finite"]]
    if bad:
        res["error"] = f"non-finite output in {bad}"
        raise RuntimeError(json.dumps(res)[:800])
    return res


def gcollect(cuda: bool) -> None:
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# -- 5. a full-size file to the GPU ----------------------------------------------------------------------


def write_random_bundle(path: str, cfg: dict, device) -> dict:
    """An LTX-2.3 bundle in the ltx-core encoding (the official layout: fp8 codes + weight_scale +
    input_scale for the quantized block linears, bf16 elsewhere; the header config the host reads),
    random weights drawn on `device`, one tensor at a time. Written to `path.partial`, renamed."""
    import torch

    from quant.fp8 import quantize
    from tools import ltx2_fixture as F

    prefix = "model.diffusion_model."
    shapes = F.expected_state_shapes(cfg)
    fp8 = fp8_layers_of_bundle(cfg)
    entries = []
    for key, shape in shapes.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer in fp8:
            entries += [(prefix + key, "F8_E4M3", shape, ("codes", layer, shape))]
            entries += [(prefix + layer + ".weight_scale", "F32", (), ("scale", layer, None))]
            entries += [(prefix + layer + ".input_scale", "F32", (), ("input_scale", layer, None))]
        else:
            entries += [(prefix + key, "BF16", shape, ("plain", key, shape))]
    entries.sort(key=lambda e: e[0])
    size = {"F8_E4M3": 1, "F32": 4, "BF16": 2}
    header = {
        "__metadata__": {"config": json.dumps({"transformer": cfg, **F.SUBCONFIGS}), "model_version": F.MODEL_VERSION}
    }
    off = 0
    for k, dt, shape, _ in entries:
        n = math.prod(shape) * size[dt]
        header[k] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    made: dict[str, dict] = {}  # layer -> its three tensors until each is written (sorted keys interleave them)
    t = time.perf_counter()
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for _k, _dt, _shape, (what, name, shape) in entries:
            if what in ("codes", "scale", "input_scale"):
                if name not in made:
                    o, i = shapes[name + ".weight"]
                    w = torch.randn(o, i, device=device, dtype=torch.float32).mul_(1.0 / math.sqrt(i))
                    codes, scale = quantize(w.to(torch.bfloat16))
                    made[name] = {"codes": codes, "scale": scale.float().reshape(()), "input_scale": torch.tensor(0.02)}
                t_out = made[name].pop(what)
                if not made[name]:
                    del made[name]
            else:
                t_out = torch.empty(shape, device=device, dtype=torch.bfloat16)
                if len(shape) == 2 and name.endswith(".weight") and "norm" not in name:
                    t_out.normal_(0.0, 1.0 / math.sqrt(shape[1]))  # a linear kept in bf16
                else:
                    _fill_(name, t_out)
            f.write(t_out.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"bytes": os.path.getsize(path), "seconds": time.perf_counter() - t, "fp8_layers": len(fp8)}


def _drop(path: str) -> None:
    from bench.common import drop_pages

    drop_pages(path)


def _raw_read(path: str) -> float:
    buf = bytearray(16 << 20)
    mv = memoryview(buf)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(mv):
            pass
    return time.perf_counter() - t


def step_file_load(work: str, device: str, dry: bool, budget: Budget, cfg: dict) -> dict:
    import torch

    cuda = device.startswith("cuda")
    path = os.path.join(work, "ltx23_random_bundle.safetensors")
    need = 26e9 if not dry else 1e8
    free = shutil.disk_usage(work).free
    if free < need + 4e9 and not dry:
        return {"skipped": f"not enough disk in {work}: {free / 1e9:.0f} GB free, ~{need / 1e9:.0f} GB needed"}
    res: dict = {"file": path}
    try:
        res["write"] = write_random_bundle(path, cfg, torch.device(device))
        size = res["write"]["bytes"]
        _say(f"file_load: wrote {size / 1e9:.2f} GB in {res['write']['seconds']:.0f} s")
        from quant.layer import QuantLayer
        from quant.plan import plan_checkpoint
        from quant.stream import iter_load

        rows = []
        for temp in ("cold", "warm"):
            if not budget.allows(60 if not dry else 1):
                rows.append({"temperature": temp, "skipped": f"not enough time left ({budget.left():.0f} s)"})
                continue
            if temp == "cold":
                _drop(path)
            read_s = _raw_read(path)
            if temp == "cold":
                _drop(path)
            gcollect(cuda)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            t = time.perf_counter()
            plan = plan_checkpoint(path, "auto", device=torch.device(device))
            held = {}
            for name, item in iter_load(plan, device):
                held[name] = item
            if cuda:
                torch.cuda.synchronize()
            load_s = time.perf_counter() - t
            modes: dict[str, int] = {}
            for item in held.values():
                if isinstance(item, QuantLayer):
                    modes[item.mode] = modes.get(item.mode, 0) + 1
            rows.append(
                {
                    "route": "core: plan_checkpoint + iter_load(plan, device)",
                    "temperature": temp,
                    "load_s": load_s,
                    "read_s": read_s,
                    "load_vs_read": load_s / read_s,
                    "gb_per_s": size / load_s / 1e9,
                    "read_gb_per_s": size / read_s / 1e9,
                    "allocated_bytes": (torch.cuda.memory_allocated() - base) if cuda else None,
                    "max_allocated_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else None,
                    "layers_by_mode": modes,
                }
            )
            _say(f"file_load core {temp}: {load_s:.1f} s ({size / load_s / 1e9:.2f} GB/s; raw read {read_s:.1f} s)")
            del held, plan
            gcollect(cuda)
        if budget.allows(90 if not dry else 1):
            rows.append(_bridge_load(path, device, size))
        else:
            rows.append({"route": "bridge", "skipped": f"not enough time left ({budget.left():.0f} s)"})
        res["rows"] = rows
    finally:
        if os.path.exists(path):
            os.unlink(path)
        if os.path.exists(path + ".partial"):
            os.unlink(path + ".partial")
    return res


def _bridge_load(path: str, device: str, size: int) -> dict:
    import torch

    from tools.host_inprocess import import_pack

    pack = import_pack()
    import comfy.model_management

    cuda = device.startswith("cuda")
    dev = torch.device(device)
    gcollect(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    t = time.perf_counter()
    plan = pack.quant.plan.plan_checkpoint(path, "auto", device=pack.quant.device.device_caps(dev))
    prepared = pack.bridge.host_model.host_plan(plan, dev)
    patcher = pack.bridge.host_model.build_model_patcher(prepared, load_device=dev)
    build_s = time.perf_counter() - t
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    if cuda:
        torch.cuda.synchronize()
    total_s = time.perf_counter() - t
    row = {
        "route": "node path: build_model_patcher + the host's load_models_gpu",
        "temperature": "warm",
        "build_s": build_s,
        "load_s": total_s,
        "gb_per_s": size / total_s / 1e9,
        "allocated_bytes": (torch.cuda.memory_allocated() - base) if cuda else None,
        "max_allocated_bytes": (torch.cuda.max_memory_allocated() - base) if cuda else None,
        "weight_dtype": str(prepared.plan.compute_dtype),
    }
    comfy.model_management.unload_all_models()
    del patcher, prepared, plan
    gcollect(cuda)
    _say(f"file_load bridge: {total_s:.1f} s (build {build_s:.1f} s)")
    return row


# -- prep (on the machine with the venv) ----------------------------------------------------------------

# The host's own packages the pack's in-process use of ComfyUI imports (comfy/model_management.py,
# comfy/ops.py: comfy_aimdo; comfy/model_base.py -> comfy/ldm/joyimage/model.py: comfy_kitchen), and
# which a CUDA image without ComfyUI's requirements lacks. comfy_aimdo is one abi3 wheel (any
# CPython 3.9+); of comfy_kitchen only the Python part is taken: its compiled backends are built
# per Python version and it runs without them (comfy_kitchen/backends/cuda: _EXT_AVAILABLE False).
PREP_PACKAGES = {"comfy_aimdo": (), "comfy_kitchen": (".so", ".pyd", ".cuh", ".h")}


def prep(dest: str = GPU_SITE) -> dict:
    """Copy PREP_PACKAGES from this interpreter's site-packages into `dest` (git-ignored)."""
    import importlib.util

    made = {}
    os.makedirs(dest, exist_ok=True)
    for name, drop in PREP_PACKAGES.items():
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed in {sys.executable}: run make setup first")
        src = list(spec.submodule_search_locations)[0]
        target = os.path.join(dest, name)
        shutil.rmtree(target, ignore_errors=True)
        ignore = shutil.ignore_patterns("__pycache__", *(f"*{ext}" for ext in drop))
        shutil.copytree(src, target, ignore=ignore)
        made[name] = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(target) for f in fs)
    _say(f"prep: {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in made.items())} -> {dest}")
    return made


# -- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny widths: the steps end to end in seconds")
    ap.add_argument("--prep", action="store_true", help="copy the host's own packages into .gpu-site/ and exit")
    ap.add_argument("--out", default=None, help="results JSON (default $OUT/gpu_check.json, else .work/)")
    ap.add_argument("--budget-s", type=float, default=None, help="time budget (default 540; dry run 300)")
    ap.add_argument("--workdir", default=None, help="generated files (default .work/gpu_check)")
    ap.add_argument("--skip", default="", help="comma list: cuda_tests,block_forward,model_step,file_load")
    ap.add_argument("--widths", choices=("real", "tiny"), default=None, help="model widths (real; dry run tiny)")
    ap.add_argument("--layers", type=int, default=None, help="transformer blocks of the model (default: the config's)")
    ap.add_argument("--reps", type=int, default=None, help="timed model steps per mode (3; dry run 1)")
    a = ap.parse_args(argv)
    if a.prep:
        prep()
        return 0
    _bootstrap_path()
    import torch

    budget = Budget(a.budget_s or (300 if a.dry_run else 540))
    cfg = model_config(a.dry_run, a.widths, a.layers)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    device = "cpu" if a.dry_run else "cuda"
    out = a.out or (
        os.path.join(os.environ["OUT"], "gpu_check.json")
        if os.environ.get("OUT")
        else os.path.join(REPO, ".work", "gpu_check.json")
    )
    work = a.workdir or os.path.join(REPO, ".work", "gpu_check")
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    results: dict = {
        "dry_run": a.dry_run,
        "budget_s": budget.seconds,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    if not a.dry_run and not torch.cuda.is_available():
        results["error"] = (
            f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); use --dry-run on a CPU"
        )
        _write(out, results)
        _say(results["error"])
        return 2

    def save():
        results["elapsed_s"] = time.monotonic() - budget.t0
        _write(out, results)

    _step(results, "env", budget, 1, step_env, device)
    save()
    if "cuda_tests" not in skip:
        _step(results, "cuda_tests", budget, 20, step_cuda_tests, max(10.0, min(240.0, budget.left() - 200)))
        save()
    if "block_forward" not in skip:
        _step(
            results,
            "block_forward",
            budget,
            60 if not a.dry_run else 1,
            step_block_forward,
            work,
            device,
            a.dry_run,
            max(30.0, budget.left() - 150),
        )
        save()
    if "model_step" not in skip:
        _step(
            results,
            "model_step",
            budget,
            90 if not a.dry_run else 1,
            step_model,
            device,
            a.dry_run,
            a.reps or (1 if a.dry_run else 3),
            budget,
            cfg,
        )
        save()
    if "file_load" not in skip:
        _step(
            results,
            "file_load",
            budget,
            150 if not a.dry_run else 1,
            step_file_load,
            work,
            device,
            a.dry_run,
            budget,
            cfg,
        )
        save()
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    results["failed"] = failed
    save()
    _say(f"wrote {out} ({results['elapsed_s']:.0f} s); failed: {failed or 'none'}")
    print(json.dumps(_summary(results), indent=1))
    return 1 if failed else 0


def _write(path: str, results: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1, default=str)
    os.replace(tmp, path)


def _summary(r: dict) -> dict:
    """The figures in one screen: what the output tail of a device run shows."""
    s = {"env": {k: r.get("env", {}).get(k) for k in ("gpu", "torch", "host")}}
    ct = r.get("cuda_tests", {})
    s["cuda_tests"] = ct.get("summary") or ct.get("error") or ct.get("skipped")
    bf = r.get("block_forward", {})
    s["block_forward"] = (
        [
            f"{x['subject']}@{x['tokens']} {x['mode']}: {x['median_s'] * 1e3:.2f} ms x{x['ratio_to_full']:.2f}"
            for x in bf.get("rows", [])
        ]
        or bf.get("error")
        or bf.get("skipped")
    )
    ms = r.get("model_step", {})
    s["model_step"] = (
        [
            {
                k: x.get(k)
                for k in (
                    "mode",
                    "step_s",
                    "max_memory_allocated_bytes",
                    "weights_allocated_bytes",
                    "video_rel_error_vs_bf16",
                    "skipped",
                )
            }
            for x in ms.get("rows", [])
        ]
        or ms.get("error")
        or ms.get("skipped")
    )
    fl = r.get("file_load", {})
    s["file_load"] = (
        [
            {
                k: x.get(k)
                for k in ("route", "temperature", "load_s", "read_s", "gb_per_s", "max_allocated_bytes", "skipped")
            }
            for x in fl.get("rows", [])
        ]
        or fl.get("error")
        or fl.get("skipped")
    )
    s["failed"] = r.get("failed")
    return s


if __name__ == "__main__":
    sys.exit(main())
