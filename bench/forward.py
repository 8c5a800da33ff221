"""Forward timings: one block's 34 linears and the largest single linears (`ff.net.0.proj`
16384x4096, `ff.net.2` 4096x16384 at real width), per mode, at several token counts.

`python -m bench.forward '<json spec>'` (one process for the whole group). The layers come from
the fp8 file through `quant.plan` / `quant.stream` (one plan per policy) and run as `quant.linear.QuantLinear`:
- full precision: policy `bf16` (codes * scale, dequantized once at load) in the compute dtype;
  this is the reference every ratio is taken against (same dtype, same weights);
- `fp8-cast`: fp8 codes + scale, dequantized in the forward;
- `scaled-mm`: `torch._scaled_mm` with the file's static input scale.
CPU: compute dtype fp32 (what the host uses on CPU), and bf16 beside it. CUDA: bf16 (the same
script; fp8 tensor cores for scaled-mm where the device has them). Configurations run round robin
(rep 1 of every configuration, then rep 2, ...) so a change of machine load hits them all alike;
a (subject, tokens) group repeats until `max_reps` or until its time budget is spent (at least one
rep); the median is reported with every sample. Every linear of a subject sees the same token
count (video and audio linears alike).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from .common import emit

FF = ("ff.net.0.proj", "ff.net.2")


def _load_block(path: str, policy: str, dtype, device, block: int = 0):
    from quant.linear import QuantLinear
    from quant.plan import plan_checkpoint
    from quant.stream import iter_load

    plan = plan_checkpoint(path, policy, compute_dtype=dtype, device=device)
    prefix = f"transformer_blocks.{block}."
    names = {lp.name for lp in plan.layers if lp.name.startswith(prefix)}
    mods = {}
    for name, layer in iter_load(plan, device, names=names):
        mods[name[len(prefix) :]] = QuantLinear(layer, activation=plan.activation, backend="torch")
    return dict(sorted(mods.items())), plan


def run(spec: dict) -> dict:
    import torch

    threads = spec.get("threads") or os.cpu_count()
    torch.set_num_threads(threads)
    device = spec.get("device", "cpu")
    cuda = device.startswith("cuda")
    prof = spec["profile"]
    path = spec["file"]
    dtypes = ["bfloat16"] if cuda else ["float32", "bfloat16"]
    configs = []  # (label, mode, dtype name)
    t_load = time.perf_counter()
    mods_cache = {}
    for dn in dtypes:
        dt = getattr(torch, dn)
        wanted = [("full-precision", "bf16"), ("fp8-cast", "fp8-cast")]
        if dn == "float32" or cuda:  # scaled-mm once on CPU (the same fp8 GEMM whatever the out dtype)
            wanted.append(("scaled-mm", "scaled-mm"))
        for mode, policy in wanted:
            before = torch.cuda.memory_allocated() if cuda else None
            mods, _ = _load_block(path, policy, dt, device)
            if cuda:  # what this mode's block holds on the GPU
                mods_cache[("cuda-bytes", mode, dn)] = torch.cuda.memory_allocated() - before
            mods_cache[(mode, dn)] = mods
            mods_cache[("ran-as", mode, dn)] = sorted({m.mode for m in mods.values()})
            configs.append((f"{mode}/{dn}", mode, dn))
    load_s = time.perf_counter() - t_load

    full0 = mods_cache[("full-precision", dtypes[0])]
    shapes = {n: [m.out_features, m.in_features] for n, m in full0.items()}
    params = {n: o * i for n, (o, i) in shapes.items()}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def subject_layers(subject: str) -> list[str]:
        return list(full0) if subject == "block" else [subject]

    inputs: dict = {}

    def x_for(in_f: int, tokens: int, dn: str):
        key = (in_f, tokens, dn)
        if key not in inputs:
            g = torch.Generator().manual_seed(1000 + in_f + tokens)
            inputs[key] = torch.randn(tokens, in_f, generator=g).to(device=device, dtype=getattr(torch, dn))
        return inputs[key]

    def call(subject: str, label_mode: str, dn: str, tokens: int) -> tuple[float, int | None]:
        mods = mods_cache[(label_mode, dn)]
        xs = [(mods[n], x_for(mods[n].in_features, tokens, dn)) for n in subject_layers(subject)]
        peak = None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            for m, x in xs:
                y = m(x)
                del y
        sync()
        dt = time.perf_counter() - t
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
        return dt, peak

    # Warm-up: each configuration once, on the smallest token count of a single linear.
    wt = min(prof["linear_tokens"])
    for _label, mode, dn in configs:
        call(FF[0], mode, dn, wt)

    rows = []
    groups = [(s, t) for t in prof["linear_tokens"] for s in FF]
    groups += [("block", t) for t in prof["block_tokens"]]
    groups.sort(key=lambda g: (g[1], g[0] != "block"))
    skipped_configs = []
    for subject, tokens in groups:
        group_cfgs = configs
        if not cuda and subject == "block" and tokens > min(prof["block_tokens"]):
            # torch's CPU _scaled_mm is a reference kernel (no fp8 units): measured on the block at
            # the smallest token count and on the single linears only, to keep the run short.
            group_cfgs = [c for c in configs if c[1] != "scaled-mm"]
            skipped_configs.append(
                {
                    "subject": subject,
                    "tokens": tokens,
                    "mode": "scaled-mm",
                    "reason": "not measured: CPU _scaled_mm on the whole block only at "
                    f"{min(prof['block_tokens'])} tokens (slow reference kernel; "
                    "the single FF linears have it at every token count)",
                }
            )
        samples = {label: [] for label, _, _ in group_cfgs}
        peaks = {label: None for label, _, _ in group_cfgs}
        t0 = time.perf_counter()
        for _rep in range(prof["forward_max_reps"]):
            for label, mode, dn in group_cfgs:
                dt, peak = call(subject, mode, dn, tokens)
                samples[label].append(dt)
                if peak is not None:
                    peaks[label] = max(peaks[label] or 0, peak)
            if time.perf_counter() - t0 > prof["forward_budget_s"]:
                break
        for k in [k for k in inputs if k[1] == tokens]:
            del inputs[k]
        layers = subject_layers(subject)
        flops = 2 * tokens * sum(params[n] for n in layers)
        ref = {dn: statistics.median(samples[f"full-precision/{dn}"]) for dn in dtypes}
        for label, mode, dn in group_cfgs:
            med = statistics.median(samples[label])
            rows.append(
                {
                    "subject": subject,
                    "tokens": tokens,
                    "mode": mode,
                    "dtype": dn,
                    "label": label,
                    "shape": shapes[subject] if subject != "block" else None,
                    "linears": len(layers),
                    "params": sum(params[n] for n in layers),
                    "median_s": med,
                    "samples_s": samples[label],
                    "reps": len(samples[label]),
                    "gflops": flops / med / 1e9,
                    "ratio_to_full": med / ref[dn],
                    "reference": f"full-precision/{dn}",
                    "cuda_peak_bytes": peaks[label],
                    "cuda_block_weight_bytes": mods_cache.get(("cuda-bytes", mode, dn)),
                    "ran_as": mods_cache[("ran-as", mode, dn)],
                }
            )
        sys.stderr.write(
            f"[bench forward] {subject} @ {tokens}: "
            + ", ".join(
                f"{r['label']} {r['median_s']:.3f}s x{r['ratio_to_full']:.2f}" for r in rows[-len(group_cfgs) :]
            )
            + "\n"
        )
    skipped = [
        {
            "subject": "block",
            "tokens": t,
            "reason": "not measured: too slow for this run on this CPU "
            "(one fp32 pass of a real-width block is ~2 * 387M * tokens FLOPs)",
        }
        for t in prof["skipped_block_tokens"]
    ]
    skipped += skipped_configs
    profiles = {}
    if not cuda:
        t = min(prof["linear_tokens"])
        for dn in dtypes:
            m = mods_cache[("fp8-cast", dn)][FF[0]]
            profiles[f"fp8-cast/{dn} {FF[0]} @ {t}"] = op_profile(m, x_for(m.in_features, t, dn))
            m = mods_cache[("full-precision", dn)][FF[0]]
            profiles[f"full-precision/{dn} {FF[0]} @ {t}"] = op_profile(m, x_for(m.in_features, t, dn))
    breakdown = load_breakdown(path) if not cuda else None
    return {
        "device": device,
        "threads": threads,
        "dtypes": dtypes,
        "layer_load_s": load_s,
        "op_profiles": profiles,
        "load_breakdown": breakdown,
        "block_shapes": shapes,
        "rows": rows,
        "skipped": skipped,
        "configs": [c[0] for c in configs],
    }


def op_profile(mod, x, reps: int = 1) -> list[dict]:
    """torch.profiler: the top ops of one forward call by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        mod(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                mod(x)
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:6]:
        rows.append({"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6 / reps, "calls": e.count // reps})
    return rows


def load_breakdown(path: str, layer: str = "transformer_blocks.0.ff.net.0.proj", reps: int = 3) -> dict:
    """Where a load's time goes, per step, on the largest fp8 weight (median of `reps`)."""
    import torch

    from quant.fp8 import check_codes, dequantize, quantize
    from quant.plan import plan_checkpoint
    from quant.safetensors_header import read_tensor

    plan = plan_checkpoint(path, "fp8-cast")
    lp = plan.layer(layer)
    n = lp.out_in[0] * lp.out_in[1]

    def t(fn):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = fn()
            ts.append(time.perf_counter() - t0)
            del r
        return statistics.median(ts)

    with open(path, "rb") as f:
        codes = read_tensor(f, lp.src.weight, path)
        steps = {"read_tensor (page cache -> memory)": t(lambda: read_tensor(f, lp.src.weight, path))}
    bf16 = dequantize(codes, lp.scale, torch.bfloat16)
    steps["check_codes (NaN codes)"] = t(lambda: check_codes(codes, layer, path, "w"))
    steps["fp8 -> float32 conversion alone"] = t(lambda: codes.to(torch.float32))
    steps["dequantize to bf16 (bf16 mode)"] = t(lambda: dequantize(codes, lp.scale, torch.bfloat16))

    def by_bits(c):
        # Not used by the pack: how fast an fp8 -> fp32 conversion in vectorised integer ops is
        # (sign | exponent-mantissa << 20, then x 2^120; e4m3 subnormals land on fp32 subnormals).
        x = c.view(torch.int8).to(torch.int32)
        x.bitwise_left_shift_(20).bitwise_and_(-2014314496)  # 0x87F00000: sign + 7 bits
        return x.view(torch.float32).mul_(2.0**120)

    exact = torch.equal(by_bits(codes).view(torch.int32), codes.to(torch.float32).view(torch.int32))
    steps["fp8 -> float32 by integer bit ops (not used; reference)"] = t(lambda: by_bits(codes))
    steps["quantize a bf16 weight (on the fly)"] = t(lambda: quantize(bf16))
    return {
        "layer": layer,
        "shape": list(lp.out_in),
        "params": n,
        "fp8_bytes": n,
        "bit_ops_exact": exact,
        "steps_s": steps,
        "gb_per_s": {k: n / v / 1e9 for k, v in steps.items()},
        "melem_per_s": {k: n / v / 1e6 for k, v in steps.items()},
    }


def main(argv: list[str]) -> int:
    emit(run(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
