"""The benchmark targets (speed and memory against their references), evaluated from one run's
results: met / not met / not measured, with the measured ratio. Nothing here times anything."""

from __future__ import annotations

from .common import NOT_MEASURED_GPU

FLOOR_RATIO = 0.8
# The core's load of an fp8 file in a mode that keeps the file's codes (auto / fp8-cast / scaled-mm:
# file-backed, validated, nothing converted) against the same floor.
FP8_FLOOR_RATIO = 0.95
RSS_SLACK_TENSORS = 1.5
THEORY_TOL = 0.02
FP8_CAST_MAX = 1.15
GPU_SPEEDUP = 1.5
DEQUANT_TOL = {"float32": 1e-5, "float64": 1e-9}  # fp8-cast / bf16 vs dequantized-weight math
SCALED_MM_FACTOR = 1.5  # scaled-mm error vs dequantized <= this x the fp8 weight floor error


def _t(name, status, measured, detail):
    return {"target": name, "status": status, "measured": measured, "detail": detail}


def _status(ok) -> str:
    return "met" if ok else "not met"


def _floor_target(name: str, rows: list[dict], ratio: float, vs_read: bool = True) -> dict:
    """A load target: every row's throughput >= `ratio` x the I/O floor (safetensors); `vs_read`:
    the detail gives each row's ratio to plain readinto too."""
    worst = min(rows, key=lambda r: r["ratio_to_floor"])
    return _t(
        name,
        _status(all(r["ratio_to_floor"] >= ratio for r in rows)),
        f"worst {worst['ratio_to_floor']:.2f}x ({worst['label']})",
        "; ".join(
            f"{r['label']}: {r['ratio_to_floor']:.2f}x"
            + (f" (vs plain readinto {r['ratio_to_read']:.2f}x)" if vs_read and r.get("ratio_to_read") else "")
            for r in rows
        ),
    )


def load_targets(load: dict) -> list[dict]:
    out = []
    rows = [r for r in load.get("rows", []) if r.get("ratio_to_floor") is not None and r["kind"] == "quant"]
    if rows:
        name = f"load throughput >= {FLOOR_RATIO}x the I/O floor (safetensors), every mode"
        out.append(_floor_target(name, rows, FLOOR_RATIO))
    else:
        out.append(_t(f"load throughput >= {FLOOR_RATIO}x the I/O floor", "not measured", None, load.get("error", "")))
    kept = [r for r in rows if "bf16" not in r["label"]]  # bf16 mode and the bf16 file convert every weight
    if kept:
        out.append(
            _floor_target(
                f"core load of an fp8 file, codes kept as stored, >= {FP8_FLOOR_RATIO}x the I/O floor (safetensors)",
                kept,
                FP8_FLOOR_RATIO,
                vs_read=False,
            )
        )
    host = [r for r in load.get("rows", []) if r.get("ratio_to_host") is not None and r["kind"] in ("quant", "bridge")]
    if host:
        bridge = [r for r in host if r["kind"] == "bridge"]
        worst = min(host, key=lambda r: r["ratio_to_host"])
        ok = all(r["ratio_to_host"] >= 1.0 for r in host)
        out.append(
            _t(
                "load not slower than the host's own loader (time ratio host / pack >= 1)",
                _status(ok),
                f"worst {worst['ratio_to_host']:.2f}x ({worst['label']})"
                + (f"; into the host model: {bridge[0]['ratio_to_host']:.2f}x" if bridge else ""),
                "; ".join(f"{r['label']}: {r['ratio_to_host']:.2f}x" for r in host),
            )
        )
    else:
        out.append(
            _t(
                "load not slower than the host's own loader",
                "not measured",
                None,
                load.get("host_error", "host loader not measured"),
            )
        )
    return out


def memory_targets(memory: dict) -> list[dict]:
    out = []
    rows = [r for r in memory.get("rows", []) if r.get("rss_bound") is not None]
    if rows:
        worst = max(rows, key=lambda r: r["peak_over_baseline"] / r["rss_bound"])
        out.append(
            _t(
                f"peak RSS during a load <= resident + {RSS_SLACK_TENSORS}x largest tensor",
                _status(all(r["peak_over_baseline"] <= r["rss_bound"] for r in rows)),
                f"worst {worst['peak_over_baseline'] / worst['rss_bound']:.2f} of the bound ({worst['label']})",
                "; ".join(
                    f"{r['label']}: {r['peak_over_baseline'] / 1e9:.3f} GB <= {r['rss_bound'] / 1e9:.3f} GB"
                    f" ({r['peak_over_baseline'] / r['rss_bound']:.2f})"
                    for r in rows
                ),
            )
        )
        th = [r for r in rows if r.get("theory_bytes")]
        worst = max(th, key=lambda r: abs(r["theory_diff"]))
        out.append(
            _t(
                f"resident weight bytes within {THEORY_TOL:.0%} of theory",
                _status(all(abs(r["theory_diff"]) <= THEORY_TOL for r in th)),
                f"worst {worst['theory_diff']:+.4%} ({worst['label']})",
                "; ".join(f"{r['label']}: {r['theory_diff']:+.4%}" for r in th),
            )
        )
    else:
        out.append(_t("peak RSS during a load <= resident + 1.5x largest tensor", "not measured", None, ""))
        out.append(_t("resident weight bytes within 2% of theory", "not measured", None, ""))
    otf = memory.get("on_the_fly")
    if otf and otf.get("peak_over_baseline") is not None:
        ok = otf["peak_over_baseline"] <= otf["rss_bound"] and otf["peak_over_baseline"] < otf["full_bf16_bytes"]
        out.append(
            _t(
                "a bf16 file quantized on the fly never needs the full bf16 model in memory",
                _status(ok),
                f"peak {otf['peak_over_baseline'] / 1e9:.3f} GB over baseline vs bound "
                f"{otf['rss_bound'] / 1e9:.3f} GB; full bf16 model {otf['full_bf16_bytes'] / 1e9:.3f} GB",
                f"resident after {otf['resident_bytes'] / 1e9:.3f} GB, largest tensor "
                f"{otf['largest_tensor_bytes'] / 1e9:.3f} GB",
            )
        )
    else:
        out.append(
            _t(
                "a bf16 file quantized on the fly never needs the full bf16 model",
                "not measured",
                None,
                (otf or {}).get("error", ""),
            )
        )
    return out


def forward_targets(forward: dict) -> list[dict]:
    rows = [
        r for r in forward.get("rows", []) if r["mode"] == "fp8-cast" and r["dtype"] == forward.get("dtypes", [None])[0]
    ]
    if not rows:
        return [
            _t(
                f"fp8-cast forward <= {FP8_CAST_MAX}x the full-precision time",
                "not measured",
                None,
                forward.get("error", ""),
            )
        ]
    bad = [r for r in rows if r["ratio_to_full"] > FP8_CAST_MAX]
    worst = max(rows, key=lambda r: r["ratio_to_full"])
    status = "met" if not bad else ("not met" if len(bad) == len(rows) else "partly met")
    return [
        _t(
            f"fp8-cast forward <= {FP8_CAST_MAX}x the full-precision time ({rows[0]['dtype']} compute)",
            status,
            f"worst {worst['ratio_to_full']:.2f}x ({worst['subject']} @ {worst['tokens']} tokens)"
            + (f"; missed at: {', '.join(sorted({str(r['tokens']) for r in bad}, key=int))} tokens" if bad else ""),
            "; ".join(f"{r['subject']} @ {r['tokens']}: {r['ratio_to_full']:.2f}x" for r in rows),
        )
    ]


def gpu_targets(gpu: dict) -> list[dict]:
    name = f"GPU: scaled-mm >= {GPU_SPEEDUP}x faster than bf16 on the FF linears at 8192 tokens"
    if not gpu.get("measured"):
        return [_t(name, "not measured", None, gpu.get("reason", NOT_MEASURED_GPU))]
    rows = [
        r
        for r in gpu.get("forward", {}).get("rows", [])
        if r["subject"] != "block" and r["tokens"] == 8192 and r["mode"] == "scaled-mm"
    ]
    if not rows:
        return [_t(name, "not measured", None, "no 8192-token FF rows in the GPU run")]
    speed = [1.0 / r["ratio_to_full"] for r in rows]
    ran = sorted({m for r in rows for m in r.get("ran_as", [])})
    return [
        _t(
            name,
            _status(all(s >= GPU_SPEEDUP for s in speed)),
            f"{min(speed):.2f}x (worst FF linear)",
            f"on {gpu.get('device')}; scaled-mm layers ran as {', '.join(ran)}",
        )
    ]


def fidelity_targets(fid: dict) -> list[dict]:
    rows = {r["label"]: r for r in fid.get("rows", [])}
    if not rows:
        return [_t("fidelity at the fp8 floor", "not measured", None, fid.get("error", ""))]
    out = []
    exact = [r for r in rows.values() if r["source"] == "pack" and "scaled-mm" not in r["label"]]
    tol = lambda r: DEQUANT_TOL.get(r["compute_dtype"], 1e-2)  # noqa: E731
    worst = max(exact, key=lambda r: max(r["video_err_vs_dequantized"], r["audio_err_vs_dequantized"]))
    ok = all(max(r["video_err_vs_dequantized"], r["audio_err_vs_dequantized"]) <= tol(r) for r in exact)
    out.append(
        _t(
            "fidelity: fp8-cast and bf16 modes match dequantized-weight math",
            _status(ok),
            f"worst {max(worst['video_err_vs_dequantized'], worst['audio_err_vs_dequantized']):.2e} "
            f"({worst['label']}; tolerance {tol(worst):g} in {worst['compute_dtype']})",
            "; ".join(
                f"{r['label']}: {max(r['video_err_vs_dequantized'], r['audio_err_vs_dequantized']):.2e}" for r in exact
            ),
        )
    )
    floor_rows = [r for r in exact if "fp8-cast" in r["label"]]
    floor = max(max(r["video_err_vs_original"], r["audio_err_vs_original"]) for r in floor_rows) if floor_rows else None
    smm = [r for r in rows.values() if r["source"] == "pack" and "scaled-mm" in r["label"]]
    if smm and floor:
        worst = max(smm, key=lambda r: max(r["video_err_vs_dequantized"], r["audio_err_vs_dequantized"]))
        e = max(worst["video_err_vs_dequantized"], worst["audio_err_vs_dequantized"])
        out.append(
            _t(
                "fidelity: scaled-mm within its activation quantization error",
                _status(
                    all(
                        max(r["video_err_vs_dequantized"], r["audio_err_vs_dequantized"]) <= SCALED_MM_FACTOR * floor
                        for r in smm
                    )
                ),
                f"worst {e:.3g} vs dequantized math = {e / floor:.2f}x the fp8 weight floor ({floor:.3g})",
                f"bound: {SCALED_MM_FACTOR}x the fp8-cast error vs the original "
                f"(the same e4m3 rounding, applied to the "
                f"activations); {worst['label']}",
            )
        )
    host_native = next((r for r in rows.values() if r["source"] == "host" and "native" in r["label"]), None)
    host_core = next((r for r in rows.values() if r["source"] == "host" and "ltx-core" in r["label"]), None)
    if host_native and floor_rows:
        pf = max(floor_rows[0]["video_err_vs_original"], floor_rows[0]["audio_err_vs_original"])
        hn = max(host_native["video_err_vs_original"], host_native["audio_err_vs_original"])
        hc = max(host_core["video_err_vs_original"], host_core["audio_err_vs_original"]) if host_core else None
        out.append(
            _t(
                "fidelity at the fp8 floor, the host's own loader beside it",
                _status(pf <= hn * 1.01 + 1e-6),
                f"pack fp8-cast {pf:.3g} vs host (native-header file) {hn:.3g}"
                + (f"; host on the ltx-core file {hc:.3g} (scales dropped)" if hc is not None else ""),
                "relative error of the full forward output vs the original bf16 model (worst of video/audio)",
            )
        )
    return out


def evaluate(results: dict) -> list[dict]:
    out = []
    out += load_targets(results.get("load", {}))
    out += memory_targets(results.get("memory", {}))
    out += _kept(forward_targets(results.get("forward", {})), results.get("forward", {}))
    out += gpu_targets(results.get("gpu", {}))
    out += _kept(fidelity_targets(results.get("fidelity", {})), results.get("fidelity", {}))
    return out


def _kept(rows: list[dict], section: dict) -> list[dict]:
    """Targets of a group this run skipped (its rows kept from an earlier run) say so."""
    k = section.get("kept_from")
    if k:
        for t in rows:
            t["measured"] = f"{t['measured'] or '-'} (kept from the run of {k.get('date_utc')})"
    return rows
