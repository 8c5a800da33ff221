"""One load, measured in a fresh process: `python -m bench.worker '<json spec>'`.

Kinds:
- `quant`: `quant.plan.plan_checkpoint` + `iter_load` (streaming) under a policy; the layers are
  kept, as a caller would keep them. Resident bytes are measured (unique storages) and computed
  from theory (1 byte per fp8 parameter + fp32 scales; full precision elsewhere).
- `floor-safetensors`: the same tensors through `safetensors.safe_open(...).get_tensor` and nothing
  else (the I/O floor); `floor-read`: plain `readinto` per tensor into fresh buffers.
- `host`: ComfyUI's own `comfy.sd.load_diffusion_model(path)` (host imported before the clock starts).
- `bridge`: the pack's loader into the host's model: `plan_checkpoint` + `bridge.host_model.build_model_patcher`.
- `torch-info`: versions and threads.

Every load kind reports wall time (after imports), the RSS just before the load (baseline), the
process's peak RSS (`VmHWM` of /proc/self/status and `getrusage(RUSAGE_SELF).ru_maxrss`), the
peak seen by a sampler thread reading /proc/self/statm every few ms, and the sampled series.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import sys
import time

from .common import RssSampler, proc_status, rss_now, ru_maxrss, run_kind, warm_read

BLOCK_PREFIX = "transformer_blocks."


def _selected(key: str, subset: str) -> bool:
    return subset == "all" or key.startswith(BLOCK_PREFIX)


def storage_bytes(tensors) -> int:
    """Bytes of the unique storages behind `tensors` (what is really held)."""
    seen, n = set(), 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        key = (st.data_ptr(), t.device.type)
        if key in seen:
            continue
        seen.add(key)
        n += st.nbytes()
    return n


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _header(path: str) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return 8 + n, h


def selected_bytes(path: str, subset: str) -> tuple[int, int, int]:
    """(bytes of the selected tensors, their count, the largest one's bytes) from the header."""
    _, h = _header(path)
    sizes = [v["data_offsets"][1] - v["data_offsets"][0] for k, v in h.items() if _selected(k, subset)]
    return sum(sizes), len(sizes), max(sizes, default=0)


# -- the load kinds ------------------------------------------------------------------------------------


def load_quant(spec: dict) -> dict:
    import torch

    from quant.layer import QuantLayer
    from quant.plan import plan_checkpoint
    from quant.report import build_report
    from quant.stream import iter_load

    dtype = getattr(torch, spec.get("compute_dtype", "bfloat16"))
    subset = spec.get("subset", "all")

    def run():
        plan = plan_checkpoint(spec["file"], spec["policy"], compute_dtype=dtype)
        names = None
        if subset != "all":
            names = {lp.name for lp in plan.layers if lp.name.startswith(BLOCK_PREFIX)}
            names |= {k for k in plan.contents.tensors if k.startswith(BLOCK_PREFIX)}
        held = {}
        for name, item in iter_load(plan, "cpu", names=names):
            held[name] = item
        return plan, held

    def after(plan, held):
        tensors, theory, largest_held = [], 0, 0
        modes: dict[str, int] = {}
        for name, item in held.items():
            if isinstance(item, QuantLayer):
                codes = item.weight.codes if item.quantized else item.weight
                parts = [codes, item.scale, item.input_scale, item.bias]
                tensors += parts
                modes[item.mode] = modes.get(item.mode, 0) + 1
                lp = plan.layer(name)
                out_f, in_f = lp.out_in
                n = out_f * in_f
                if item.mode == "bf16":
                    theory += n * dtype.itemsize
                else:
                    per_row = lp.scale.dim() == 1 if lp.scale is not None else plan.per_row_quant
                    theory += n * 1 + 4 * (out_f if per_row else 1)  # codes + fp32 scale(s)
                    theory += 4 if lp.input_scale is not None else 0
                if lp.src.bias is not None:
                    theory += lp.src.bias.numel * dtype.itemsize
                largest_held = max(largest_held, codes.numel() * codes.element_size())
            else:
                tensors.append(item)
                info = plan.contents.tensors[name]
                theory += info.nbytes  # other tensors are kept as stored (full precision)
                largest_held = max(largest_held, item.numel() * item.element_size())
        out = {
            "storage_bytes": storage_bytes(tensors),
            "tensor_bytes": tensor_bytes(tensors),
            "theory_bytes": theory,
            "largest_held_bytes": largest_held,
            "layers_by_mode": modes,
            "items": len(held),
        }
        if subset == "all":
            out["report_total_bytes"] = build_report(plan)["total_bytes"]
        return out

    return _measure(spec, run, after)


def load_floor_safetensors(spec: dict) -> dict:
    """`safe_open` + `get_tensor` + a copy into owned memory. `get_tensor` alone returns views of
    the file's mmap without reading a byte (timed apart as `views_s`); the copy is what makes the
    bytes arrive, as they must for any loader that ends up owning its weights."""
    from safetensors import safe_open

    subset = spec.get("subset", "all")
    extra = {}

    def run():
        held = {}
        t = time.perf_counter()
        with safe_open(spec["file"], framework="pt", device="cpu") as f:
            views = {k: f.get_tensor(k) for k in f.keys() if _selected(k, subset)}
            extra["views_s"] = time.perf_counter() - t
            for k, v in views.items():
                held[k] = v.clone()
            del views
        return None, held

    def after(_, held):
        return {
            "storage_bytes": storage_bytes(held.values()),
            "tensor_bytes": tensor_bytes(held.values()),
            "items": len(held),
            **extra,
        }

    return _measure(spec, run, after)


def load_floor_read(spec: dict) -> dict:
    subset = spec.get("subset", "all")

    def run():
        start, h = _header(spec["file"])
        items = sorted(((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in h.items() if _selected(k, subset)))
        held = {}
        with open(spec["file"], "rb", buffering=0) as f:
            for b, e, k in items:
                buf = bytearray(e - b)
                f.seek(start + b)
                mv, got = memoryview(buf), 0
                while got < len(buf):
                    r = f.readinto(mv[got:])
                    if not r:
                        raise OSError(f"short read in {k}")
                    got += r
                held[k] = buf
        return None, held

    def after(_, held):
        return {"storage_bytes": sum(len(b) for b in held.values()), "items": len(held)}

    return _measure(spec, run, after)


def _host_resident(dm) -> dict:
    """Bytes behind the host model's parameters and buffers (quantized tensors: their inner data)."""
    tensors = []
    for t in list(dm.parameters()) + list(dm.buffers()):
        inner = getattr(t, "__tensor_flatten__", None)
        if inner is not None and type(t).__name__ != "Parameter" and not type(t).__module__.startswith("torch"):
            try:
                names, _ = t.__tensor_flatten__()
                tensors += [getattr(t, n) for n in names]
                continue
            except Exception:
                pass
        data = getattr(t, "data", t)
        if hasattr(data, "__tensor_flatten__") and not type(data).__module__.startswith("torch"):
            try:
                names, _ = data.__tensor_flatten__()
                tensors += [getattr(data, n) for n in names]
                continue
            except Exception:
                pass
        tensors.append(data)
    dtypes: dict[str, int] = {}
    for t in tensors:
        if t is not None and hasattr(t, "dtype"):
            k = str(t.dtype).replace("torch.", "")
            dtypes[k] = dtypes.get(k, 0) + t.numel() * t.element_size()
    try:
        sb = storage_bytes(tensors)
    except Exception as e:  # a wrapper without a plain storage
        sb = None
        dtypes["error"] = str(e)
    return {"storage_bytes": sb, "tensor_bytes": tensor_bytes(tensors), "bytes_by_dtype": dtypes}


def load_host(spec: dict) -> dict:
    from tools.host_inprocess import import_host

    import_host()
    import logging

    import comfy.sd

    logging.disable(logging.WARNING)

    def run():
        return None, comfy.sd.load_diffusion_model(spec["file"])

    def after(_, patcher):
        dm = patcher.model.diffusion_model
        out = _host_resident(dm)
        out["model_class"] = type(dm).__name__
        return out

    return _measure(spec, run, after)


def load_bridge(spec: dict) -> dict:
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import logging

    logging.disable(logging.WARNING)
    import torch

    plan_checkpoint = pack.quant.plan.plan_checkpoint
    build, host_plan = pack.bridge.host_model.build_model_patcher, pack.bridge.host_model.host_plan

    def run():
        prepared = host_plan(plan_checkpoint(spec["file"], spec["policy"]), torch.device("cpu"))
        return prepared.plan, build(prepared, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    def after(plan, patcher):
        out = _host_resident(patcher.model.diffusion_model)
        out["compute_dtype"] = str(plan.compute_dtype).replace("torch.", "")
        return out

    return _measure(spec, run, after)


def _measure(spec: dict, run, after) -> dict:
    subset = spec.get("subset", "all")
    nbytes, count, largest = selected_bytes(spec["file"], subset)
    # Warm-up read of the whole file right before the clock starts (this VM pages idle page cache
    # out in the background, so a warm-up done earlier by the parent could be gone): all runs warm.
    warm = warm_read(spec["file"], 8 << 20)
    gc.collect()
    base = rss_now()
    status0 = proc_status()
    sampler = RssSampler(spec.get("interval", 0.005)).start()
    time.sleep(0.02)
    t_start = sampler.mark()
    t0 = time.perf_counter()
    ctx, held = run()
    wall = time.perf_counter() - t0
    t_end = sampler.mark()
    time.sleep(0.02)
    sampler.stop()
    status1 = proc_status()
    rss_after = rss_now()
    res = {
        "kind": spec["kind"],
        "file": os.path.basename(spec["file"]),
        "subset": subset,
        "policy": spec.get("policy"),
        "wall_s": wall,
        "bytes": nbytes,
        "tensors": count,
        "largest_file_tensor_bytes": largest,
        "gb_per_s": nbytes / wall / 1e9,
        "rss_baseline": base,
        "rss_after": rss_after,
        "vm_hwm": status1.get("VmHWM"),
        "vm_hwm_before": status0.get("VmHWM"),
        "ru_maxrss": ru_maxrss(),
        "sampled_peak": sampler.peak,
        "rss_anon_after": status1.get("RssAnon"),
        "rss_file_after": status1.get("RssFile"),
        "rss_series": sampler.series(),
        "load_window_s": [t_start, t_end],
        "warm_read_gb_per_s": warm["bytes"] / warm["seconds"] / 1e9,
    }
    res["peak_over_baseline"] = max(res["vm_hwm"] or 0, res["sampled_peak"]) - base
    res.update(after(ctx, held))
    return res


def torch_info(spec: dict) -> dict:
    import safetensors
    import torch

    out = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "safetensors": safetensors.__version__,
        "cuda": torch.cuda.is_available(),
    }
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_capability"] = list(torch.cuda.get_device_capability(0))
        out["cuda_version"] = torch.version.cuda
    return out


KINDS = {
    "quant": load_quant,
    "floor-safetensors": load_floor_safetensors,
    "floor-read": load_floor_read,
    "host": load_host,
    "bridge": load_bridge,
    "torch-info": torch_info,
}


def main(argv: list[str]) -> int:
    return run_kind(argv, KINDS)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
