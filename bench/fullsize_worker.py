"""One full-size measurement in a fresh process: `python -m bench.fullsize_worker '<json spec>'`.

Started by bench/fullsize.py, which watches this process from outside (a memory watchdog that
kills it before the kernel's OOM killer would) and compares every figure with its reference from
the same run. Kinds:
- `raw-read`: the whole file read sequentially into one reused 8 MiB buffer (the reference: what
  the disk and the page cache give, nothing kept);
- `core`: `quant.plan.plan_checkpoint` + `quant.stream.iter_load` under a policy, every item kept
  as a caller keeps it;
- `bridge`: the pack's loader into the host's own model in-process (`bridge.host_model.host_plan`
  + `build_model_patcher`, the node's code path), the host's weight dtype bf16 as with
  `--bf16-unet`; then optionally one forward of the whole model on a few tokens, with two sampled
  layers (an fp8 one and a bf16 one) checked against float64 math on the same input;
- `host`: the host's own `comfy.sd.load_diffusion_model` (its loader for ComfyUI-format files).

`cold`: the file's pages are dropped from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`)
after the imports and right before the clock starts; otherwise the run finds whatever the page
cache holds (reported as `cached_before_bytes`). Memory: a thread samples /proc/self/status
(RssAnon = private, RssFile = file-backed) every 20 ms during the load.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time

from .common import drop_pages, run_kind

STATUS_KEYS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")


def status(pid: int | str = "self") -> dict[str, int]:
    """RssAnon / RssFile / VmRSS / VmHWM of a process, bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in STATUS_KEYS:
                    out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def cached_bytes(path: str) -> int | None:
    """Bytes of `path` in the page cache now (util-linux `fincore`), None where it is missing."""
    try:
        p = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return int(p.stdout.split()[0]) if p.returncode == 0 and p.stdout.strip() else None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def raw_read(path: str, bufsize: int = 8 << 20) -> int:
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(mv)
            if not k:
                return n
            n += k


class StatusSampler:
    """Peaks of RssAnon / RssFile of this process, sampled every `interval` s, and a short series."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_anon = self.peak_file = self.peak_rss = 0
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StatusSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            s = status()
            a, f = s.get("RssAnon", 0), s.get("RssFile", 0)
            self.peak_anon, self.peak_file = max(self.peak_anon, a), max(self.peak_file, f)
            self.peak_rss = max(self.peak_rss, s.get("VmRSS", 0))
            self.samples.append((round(time.perf_counter() - self._t0, 3), a, f))
            self._stop.wait(self.interval)

    def stop(self) -> StatusSampler:
        self._stop.set()
        self._thread.join()
        return self

    def series(self, points: int = 120) -> list[list]:
        s = self.samples
        if len(s) <= points:
            return [list(x) for x in s]
        step = len(s) / points
        return [list(max(s[int(i * step) : int((i + 1) * step)] or [s[-1]], key=lambda x: x[1])) for i in range(points)]


def converted_bytes(plan, tensor_dtype=None) -> dict:
    """Private bytes the loaded tensors must take (the ones that change: dequantized, quantized,
    transposed, cast), by the loader's own estimate (`quant.stream.private_bytes`); `host_bf16`:
    the same with the host's weight dtype bf16 (the node on a `--bf16-unet` host)."""
    import torch

    from quant.stream import private_bytes

    return {
        "total": private_bytes(plan, tensor_dtype=tensor_dtype),
        "host_bf16": private_bytes(plan, tensor_dtype=torch.bfloat16),
    }


# -- kinds --------------------------------------------------------------------------------------------


def _measure(spec: dict, run) -> dict:
    path = spec["file"]
    if spec.get("cold"):
        drop_pages(path)
    cached = cached_bytes(path)
    gc.collect()
    before = status()
    sampler = StatusSampler(spec.get("interval", 0.02)).start()
    t0 = time.perf_counter()
    error = None
    try:
        ctx = run()
    except Exception as e:  # the result of this row: the error, with what it cost
        ctx, error = None, f"{type(e).__name__}: {str(e)[:600]}"
    wall = time.perf_counter() - t0
    time.sleep(0.05)
    sampler.stop()
    after = status()
    res = {
        "kind": spec["kind"],
        "policy": spec.get("policy"),
        "cold": bool(spec.get("cold")),
        "file": path,
        "file_bytes": os.path.getsize(path),
        "cached_before_bytes": cached,
        "wall_s": wall,
        "gb_per_s": os.path.getsize(path) / wall / 1e9,
        "anon_before": before.get("RssAnon"),
        "file_before": before.get("RssFile"),
        "anon_after": after.get("RssAnon"),
        "file_after": after.get("RssFile"),
        "anon_peak": max(sampler.peak_anon, after.get("RssAnon", 0)),
        "file_peak": max(sampler.peak_file, after.get("RssFile", 0)),
        "rss_peak": sampler.peak_rss,
        "vm_hwm": after.get("VmHWM"),
        "series": sampler.series(),
    }
    if error:
        res["error"] = error
    return res, ctx


def k_raw_read(spec: dict) -> dict:
    res, n = _measure(spec, lambda: raw_read(spec["file"]))
    res["bytes_read"] = n
    return res


def k_core(spec: dict) -> dict:
    from quant.layer import QuantLayer
    from quant.stream import load

    held: dict = {}

    def run():  # the core's whole-model load: refused before reading when it cannot fit (quant/ram_guard)
        plan, layers, tensors = load(spec["file"], spec["policy"])
        held.update(layers)
        held.update(tensors)
        return plan

    res, plan = _measure(spec, run)
    if plan is not None:
        modes: dict[str, int] = {}
        for item in held.values():
            if isinstance(item, QuantLayer):
                modes[item.mode] = modes.get(item.mode, 0) + 1
        res["layers_by_mode"] = modes
        res["items"] = len(held)
        res["converted_bytes"] = converted_bytes(plan)
        res["compute_dtype"] = str(plan.compute_dtype).replace("torch.", "")
    return res


def _sampled_layers(dm) -> dict[str, str]:
    """One fp8 linear of a middle block and one full-precision linear (a bf16 block's, else
    proj_out), by what the model holds."""
    from tools.host_inprocess import PACKAGE

    QuantHostLinear = sys.modules[f"{PACKAGE}.bridge.host_linear"].QuantHostLinear
    fp8, full = None, None
    mid = getattr(dm, "transformer_blocks", [])
    order = sorted(range(len(mid)), key=lambda i: abs(i - len(mid) // 2))
    for i in order:
        for n in ("ff.net.0.proj", "attn1.to_q"):
            m = mid[i].get_submodule(n)
            if isinstance(m, QuantHostLinear) and m.weight_scale is not None and fp8 is None:
                fp8 = f"transformer_blocks.{i}.{n}"
            elif getattr(m, "weight_scale", None) is None and full is None:
                full = f"transformer_blocks.{i}.{n}"
    return {k: v for k, v in (("fp8", fp8), ("full", full or "proj_out")) if v}


def forward_check(dm, dtype, tokens: tuple[int, int, int] = (1, 2, 2)) -> dict:
    """One forward of the whole model on a few tokens (video F x H x W latent tokens, 2 audio
    tokens, 8 context tokens), output finite, and per sampled layer the relative error of its
    output against float64 math on the same input (the stored weight: codes x scale, or the
    full-precision weight; + bias)."""
    import torch

    cfg_in = dm.patchify_proj.in_features if hasattr(dm, "patchify_proj") else 128
    a_in = dm.audio_patchify_proj.in_features if hasattr(dm, "audio_patchify_proj") else 128
    g = torch.Generator().manual_seed(1234)
    f, h, w = tokens
    vx = torch.randn(1, cfg_in, f, h, w, generator=g)
    ax = torch.randn(1, 8, 2, a_in // 8, generator=g)
    ctx = torch.randn(1, 8, context_dim(dm), generator=g)
    ts = torch.tensor([0.5])
    sampled = _sampled_layers(dm)
    seen: dict[str, tuple] = {}
    hooks = []
    for tag, name in sampled.items():
        mod = dm.get_submodule(name)

        def hook(m, args, out, tag=tag):
            if tag not in seen:
                seen[tag] = (args[0].detach().clone(), out.detach().clone())

        hooks.append(mod.register_forward_hook(hook))
    t = time.perf_counter()
    try:
        with torch.inference_mode():
            out = dm([vx.to(dtype), ax.to(dtype)], ts, ctx.to(dtype), frame_rate=25)
    finally:
        for hk in hooks:
            hk.remove()
    secs = time.perf_counter() - t
    res = {
        "seconds": secs,
        "tokens": {"video": f * h * w, "audio": 2, "context": 8},
        "compute_dtype": str(dtype).replace("torch.", ""),
        "finite": bool(all(torch.isfinite(o).all() for o in out)),
        "output_shapes": [list(o.shape) for o in out],
        "layers": {},
    }
    for tag, name in sampled.items():
        if tag not in seen:
            res["layers"][tag] = {"name": name, "error": "not called in the forward"}
            continue
        x, y = seen[tag]
        m = dm.get_submodule(name)
        if getattr(m, "weight_scale", None) is not None:
            s = m.weight_scale.double()
            w64 = m.weight.data.to(torch.float64) * (s if s.dim() == 0 else s.reshape(-1, 1))
        else:
            w64 = m.weight.data.to(torch.float64)
        ref = x.to(torch.float64) @ w64.t()
        if m.bias is not None:
            ref = ref + m.bias.data.to(torch.float64)
        err = float((y.to(torch.float64) - ref).norm() / ref.norm().clamp_min(1e-300))
        res["layers"][tag] = {
            "name": name,
            "mode": getattr(m, "quant_mode", "host"),
            "weight_dtype": str(m.weight.dtype).replace("torch.", ""),
            "input_shape": list(x.shape),
            "rel_error_vs_float64": err,
        }
    return res


def context_dim(dm) -> int:
    """The context width the model's forward takes: video + audio cross-attention widths (the
    LTX-2.3 layout concatenates both; see bench/fidelity.py)."""
    v = dm.transformer_blocks[0].attn2.to_k.in_features
    a = dm.transformer_blocks[0].audio_attn2.to_k.in_features
    return v + a


def k_bridge(spec: dict) -> dict:
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import logging

    import comfy.cli_args
    import torch

    logging.disable(logging.WARNING)
    comfy.cli_args.args.bf16_unet = True  # the host's weight dtype as a `--bf16-unet` server picks it
    plan_checkpoint = pack.quant.plan.plan_checkpoint
    build, host_plan = pack.bridge.host_model.build_model_patcher, pack.bridge.host_model.host_plan
    cpu = torch.device("cpu")
    keep: dict = {}

    def run():
        prepared = host_plan(plan_checkpoint(spec["file"], spec["policy"]), cpu)
        keep["patcher"] = build(prepared, load_device=cpu, offload_device=cpu)
        return prepared.plan

    res, plan = _measure(spec, run)
    if plan is None:
        return res
    patcher = keep["patcher"]
    res["compute_dtype"] = str(plan.compute_dtype).replace("torch.", "")
    res["converted_bytes"] = converted_bytes(plan, plan.compute_dtype)
    try:
        stats = pack.bridge.vram.model_stats(patcher, os.path.basename(spec["file"]))
        res["holdings"] = stats.get("holdings")
    except Exception as e:  # a row says so, never a number
        res["holdings_error"] = f"{type(e).__name__}: {e}"
    if spec.get("forward"):
        before = status()
        try:
            res["forward"] = forward_check(patcher.model.diffusion_model, plan.compute_dtype)
        except Exception as e:
            res["forward"] = {"error": f"{type(e).__name__}: {str(e)[:600]}"}
        after = status()
        res["forward"]["anon_after"] = after.get("RssAnon")
        res["forward"]["file_after"] = after.get("RssFile")
        res["forward"]["anon_before"] = before.get("RssAnon")
    return res


def k_host(spec: dict) -> dict:
    from tools.host_inprocess import import_host

    import_host()
    import logging

    import comfy.cli_args
    import comfy.sd

    logging.disable(logging.WARNING)
    comfy.cli_args.args.bf16_unet = True
    keep: dict = {}

    def run():
        keep["patcher"] = comfy.sd.load_diffusion_model(spec["file"])
        return True

    res, ok = _measure(spec, run)
    if ok:
        dm = keep["patcher"].model.diffusion_model
        res["model_class"] = type(dm).__name__
        dts: dict[str, int] = {}
        for p in dm.parameters():
            k = str(p.dtype).replace("torch.", "")
            dts[k] = dts.get(k, 0) + p.numel() * p.element_size()
        res["bytes_by_dtype"] = dts
    return res


KINDS = {"raw-read": k_raw_read, "core": k_core, "bridge": k_bridge, "host": k_host}


def main(argv: list[str]) -> int:
    return run_kind(argv, KINDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
