"""`python -m bench [--quick | --smoke | --full] [--out bench/results.json] [--md BENCHMARKS.md]`

One run measures every group against its reference in the same run and writes results.json,
the generated tables of BENCHMARKS.md and the PNG plots. See bench/__init__.py.
`--full` runs the full-size profile alone (bench/fullsize.py: the 48-block bundle) and writes its
section (`fullsize`) into results.json and BENCHMARKS.md, keeping the other sections as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from . import render, targets
from .common import NOT_MEASURED_GPU, REPO, host_available, log, machine_info, run_module, run_worker
from .profiles import PROFILES, STANDALONE

GROUPS = ("load", "forward", "fidelity", "gpu")


def _median(xs):
    return statistics.median(xs) if xs else None


def load_specs(files: dict, host: bool, blocks: bool = True) -> list[dict]:
    core = files["ltx-core"]["path"]
    native = files["comfy-native-header"]["path"]
    bf16 = files["bf16"]["path"]
    specs = []
    for subset in ("all", "blocks") if blocks else ("all",):
        what = "whole file" if subset == "all" else "blocks only"
        specs += [
            {
                "label": f"I/O floor: safetensors safe_open + copy ({what})",
                "kind": "floor-safetensors",
                "file": core,
                "subset": subset,
                "enc": "ltx-core",
            },
            {
                "label": f"I/O floor: plain readinto ({what})",
                "kind": "floor-read",
                "file": core,
                "subset": subset,
                "enc": "ltx-core",
            },
        ]
        for mode in ("fp8-cast", "scaled-mm", "bf16"):
            specs.append(
                {
                    "label": f"pack {mode} ({what})",
                    "kind": "quant",
                    "policy": mode,
                    "file": core,
                    "subset": subset,
                    "enc": "ltx-core",
                }
            )
    specs += [
        {
            "label": "I/O floor: safetensors safe_open + copy (bf16 file)",
            "kind": "floor-safetensors",
            "file": bf16,
            "subset": "all",
            "enc": "bf16",
        },
        {
            "label": "pack fp8-cast on the bf16 file (quantized on the fly)",
            "kind": "quant",
            "policy": "fp8-cast",
            "file": bf16,
            "subset": "all",
            "enc": "bf16",
            "on_the_fly": True,
        },
    ]
    if host:
        specs += [
            {
                "label": "host comfy.sd.load_diffusion_model (comfy-native-header copy)",
                "kind": "host",
                "file": native,
                "subset": "all",
                "enc": "comfy-native-header",
            },
            {
                "label": "pack into the host's model (bridge, policy auto)",
                "kind": "bridge",
                "policy": "auto",
                "file": core,
                "subset": "all",
                "enc": "ltx-core",
            },
        ]
    return specs


def run_load_group(files: dict, profile, host: bool) -> tuple[dict, dict]:
    specs = load_specs(files, host, profile.load_blocks)
    runs: dict[str, list[dict]] = {s["label"]: [] for s in specs}
    warm: dict[str, list[float]] = {}
    for _rep in range(profile.load_reps):
        for s in specs:
            spec = {k: v for k, v in s.items() if k not in ("label", "enc", "on_the_fly")}
            spec["interval"] = profile.rss_interval_s
            r = run_worker(spec, timeout=1800)
            runs[s["label"]].append(r)
            if r.get("warm_read_gb_per_s"):
                warm.setdefault(s["enc"], []).append(r["warm_read_gb_per_s"])
            if "error" in r:
                log(f"load {s['label']}: ERROR {r['error']}")
            else:
                log(
                    f"load {s['label']}: {r['wall_s']:.2f} s, {r['gb_per_s']:.2f} GB/s, "
                    f"peak +{r['peak_over_baseline'] / 1e9:.2f} GB"
                )

    rows, series = [], {}
    for s in specs:
        ok = [r for r in runs[s["label"]] if "error" not in r]
        row = {
            "label": s["label"],
            "kind": s["kind"],
            "subset": s["subset"],
            "file": s["enc"],
            "policy": s.get("policy"),
            "reps": len(ok),
        }
        if not ok:
            row["error"] = runs[s["label"]][0]["error"] if runs[s["label"]] else "not run"
            rows.append(row)
            continue
        first = ok[0]
        times = [r["wall_s"] for r in ok]
        row.update(
            {
                "best_s": min(times),
                "median_s": _median(times),
                "samples_s": times,
                "bytes": first["bytes"],
                "gb_per_s": first["bytes"] / min(times) / 1e9,
                "peak_over_baseline": max(r["peak_over_baseline"] for r in ok),
                "vm_hwm": max(r["vm_hwm"] for r in ok),
                "ru_maxrss": max(r["ru_maxrss"] for r in ok),
                "sampled_peak": max(r["sampled_peak"] for r in ok),
                "rss_baseline": first["rss_baseline"],
                "rss_anon_after": first.get("rss_anon_after"),
                "rss_file_after": first.get("rss_file_after"),
                "resident_bytes": first.get("storage_bytes"),
                "theory_bytes": first.get("theory_bytes"),
                "report_total_bytes": first.get("report_total_bytes"),
                "largest_tensor_bytes": max(
                    first.get("largest_file_tensor_bytes") or 0, first.get("largest_held_bytes") or 0
                ),
                "layers_by_mode": first.get("layers_by_mode"),
                "bytes_by_dtype": first.get("bytes_by_dtype"),
                "views_s": first.get("views_s"),
            }
        )
        rows.append(row)
        series[s["label"]] = {
            "baseline": first["rss_baseline"],
            "window": first["load_window_s"],
            "series": first["rss_series"],
        }

    by = {r["label"]: r for r in rows}
    for r in rows:
        if "median_s" not in r:
            continue
        fl_label = next(
            (
                s["label"]
                for s in specs
                if s["kind"] == "floor-safetensors" and s["enc"] == r["file"] and s["subset"] == r["subset"]
            ),
            None,
        )
        rd_label = next(
            (
                s["label"]
                for s in specs
                if s["kind"] == "floor-read" and s["enc"] == r["file"] and s["subset"] == r["subset"]
            ),
            None,
        )
        if r["kind"] in ("quant", "bridge", "host") and fl_label and "median_s" in by.get(fl_label, {}):
            r["ratio_to_floor"] = by[fl_label]["best_s"] / r["best_s"]
            r["floor"] = fl_label
        if r["kind"] in ("quant", "bridge", "host") and rd_label and "median_s" in by.get(rd_label, {}):
            r["ratio_to_read"] = by[rd_label]["best_s"] / r["best_s"]
    host_row = next((r for r in rows if r["kind"] == "host"), None)
    if host_row and "median_s" in host_row:
        for r in rows:
            if (
                r["kind"] in ("quant", "bridge")
                and r["subset"] == "all"
                and r["file"] == "ltx-core"
                and "median_s" in r
            ):
                r["ratio_to_host"] = host_row["best_s"] / r["best_s"]
    load = {
        "rows": rows,
        "reps": profile.load_reps,
        "warm_read_gb_per_s": {k: _median(v) for k, v in warm.items()},
        "files": {k: {"bytes": v["bytes"], "name": os.path.basename(v["path"])} for k, v in files.items()},
        "notes": [
            "Times are the best of the runs (noise on a shared machine only ever adds time); ratios are "
            "taken between best times; the median is shown beside.",
            "Every load runs in a fresh `python -m bench.worker` process; after its imports (not timed) it "
            "reads the whole file once (warm-up), then starts the clock: every run starts from a warm page "
            "cache. (This VM pages idle page cache out in the background, so the warm-up is done by the "
            "worker itself, right before its load.)",
            "Peak RSS is the process's own VmHWM (/proc/self/status), with getrusage ru_maxrss and the "
            "sampler's peak beside it; 'over baseline' subtracts the RSS just before the load.",
            "`safe_open(...).get_tensor` alone returns views of the file's mmap and reads nothing; the "
            "floor copies each tensor into owned memory (see views_s for the lazy part).",
        ],
    }
    if not host:
        load["host_error"] = "host not installed (.host/ComfyUI)"
    elif host_row and "error" in host_row:
        load["host_error"] = host_row["error"]

    mem_rows = []
    for r in rows:
        if r["kind"] != "quant" or r["subset"] != "all" or "median_s" not in r:
            continue
        bound = r["resident_bytes"] + targets.RSS_SLACK_TENSORS * r["largest_tensor_bytes"]
        mem_rows.append(
            {
                "label": r["label"],
                "resident_bytes": r["resident_bytes"],
                "theory_bytes": r["theory_bytes"],
                "theory_diff": (r["resident_bytes"] - r["theory_bytes"]) / r["theory_bytes"],
                "report_total_bytes": r["report_total_bytes"],
                "largest_tensor_bytes": r["largest_tensor_bytes"],
                "rss_bound": bound,
                "peak_over_baseline": r["peak_over_baseline"],
                "vm_hwm": r["vm_hwm"],
                "ru_maxrss": r["ru_maxrss"],
                "rss_baseline": r["rss_baseline"],
                "layers_by_mode": r["layers_by_mode"],
            }
        )
    memory = {"rows": mem_rows, "rss_series": series}
    otf = next((r for r in rows if r["label"].startswith("pack fp8-cast on the bf16 file")), None)
    if otf and "median_s" in otf:
        m = next(m for m in mem_rows if m["label"] == otf["label"])
        memory["on_the_fly"] = {
            "label": otf["label"],
            "peak_over_baseline": otf["peak_over_baseline"],
            "rss_bound": m["rss_bound"],
            "resident_bytes": otf["resident_bytes"],
            "largest_tensor_bytes": otf["largest_tensor_bytes"],
            "full_bf16_bytes": files["bf16"]["bytes"],
        }
    elif otf:
        memory["on_the_fly"] = {"error": otf.get("error")}
    return load, memory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="one block, fewer token counts (a few minutes)")
    g.add_argument("--smoke", action="store_true", help="tiny widths, seconds (the smoke test)")
    g.add_argument("--full", action="store_true", help="the full-size profile alone (bench/fullsize.py)")
    ap.add_argument(
        "--full-file", default=None, help="--full: the bundle (default bench/out/full/; written once if missing)"
    )
    ap.add_argument("--full-blocks", type=int, default=48, help="--full: blocks of a bundle to write (48)")
    ap.add_argument("--full-presets", default=None, help="--full: comma list (default auto,fp8-cast,scaled-mm)")
    ap.add_argument("--full-skip", default="", help="--full: comma list of core,http,bf16,forward,host")
    ap.add_argument("--full-deadline-s", type=float, default=None, help="--full: skip later steps past this")
    ap.add_argument("--full-forward", default=None, help="--full: presets of the whole-model forward (all)")
    ap.add_argument(
        "--watchdog-gib", type=float, default=14.0, help="--full: kill a load past this private memory (GiB)"
    )
    ap.add_argument(
        "--min-available-gib", type=float, default=1.0, help="--full: kill a load when less RAM is available (GiB)"
    )
    ap.add_argument("--out", default=None, help="results JSON (default bench/results.json; smoke: required)")
    ap.add_argument(
        "--md", default=None, help="BENCHMARKS.md to update (default: repo BENCHMARKS.md; smoke: next to --out)"
    )
    ap.add_argument("--plots", default=None, help="folder for PNG plots (default bench/plots; smoke: next to --out)")
    ap.add_argument("--workdir", default=None, help="generated files (default bench/out)")
    ap.add_argument("--skip", default="", help=f"comma list of groups to skip: {','.join(GROUPS)}")
    a = ap.parse_args(argv)

    prof = PROFILES["smoke" if a.smoke else "quick" if a.quick else "full"]
    if a.smoke and not a.out:
        ap.error("--smoke needs --out (it must not overwrite bench/results.json)")
    out = os.path.abspath(a.out or os.path.join(REPO, "bench", "results.json"))
    side = os.path.dirname(out)
    md = os.path.abspath(
        a.md or (os.path.join(side, "BENCHMARKS.md") if a.smoke else os.path.join(REPO, "BENCHMARKS.md"))
    )
    plots = os.path.abspath(
        a.plots or (os.path.join(side, "plots") if a.smoke else os.path.join(REPO, "bench", "plots"))
    )
    workdir = os.path.abspath(
        a.workdir or (os.path.join(side, "work") if a.smoke else os.path.join(REPO, "bench", "out"))
    )
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    os.makedirs(side, exist_ok=True)
    if a.full:
        return run_full(a, out, md)

    t0 = time.perf_counter()
    log(f"profile {prof.name}; results -> {out}")
    previous = _read_results(out)  # what this run keeps: the full-size section, skipped groups
    results: dict = {"schema": 1, "profile": prof.to_dict(), "machine": machine_info()}
    m = results["machine"]
    log(
        f"machine: {m['cpu_model']}, {m['cpu_count']} cores, torch {m.get('torch')}, {m['host']}, "
        f"load average {m['loadavg_start'][0]:.2f}"
    )
    host = host_available()
    cuda = bool(m.get("cuda"))

    files = run_module("bench.files", {"workdir": workdir, "profile": prof.to_dict()}, timeout=3600)
    if "error" in files:
        raise SystemExit(f"could not generate the benchmark files: {files['error']}\n{files.get('stderr_tail', '')}")
    results["files"] = {
        k: {
            "name": os.path.basename(v["path"]),
            "bytes": v["bytes"],
            "tensors": v["tensors"],
            "quantized_layers": v["quantized_layers"],
        }
        for k, v in files["files"].items()
    }
    results["files_config"] = {
        "num_layers": prof.num_layers,
        "connector_num_layers": prof.connector_num_layers,
        "base": prof.base,
        "generated_this_run": files.get("generated"),
    }
    log(f"files ready ({'generated' if files.get('generated') else 'reused'}) in {workdir}")

    core = files["files"]["ltx-core"]["path"]
    if "load" not in skip:
        results["load"], results["memory"] = run_load_group(files["files"], prof, host)
    else:
        results["load"] = {"error": "skipped"}
        results["memory"] = {"error": "skipped"}

    if "forward" not in skip:
        log("forward group")
        results["forward"] = run_module(
            "bench.forward", {"file": core, "profile": prof.to_dict(), "device": "cpu"}, timeout=3600
        )
    else:
        results["forward"] = _kept(previous, "forward", prof.name)

    if "fidelity" not in skip and host:
        log("fidelity group")
        results["fidelity"] = run_module("bench.fidelity", {"workdir": os.path.join(workdir, "fidelity")}, timeout=1800)
    elif "fidelity" in skip:
        results["fidelity"] = _kept(previous, "fidelity", prof.name)
    else:
        results["fidelity"] = {"error": "host not installed (.host/ComfyUI)"}

    if cuda and "gpu" not in skip:
        # Untested here (no GPU in the session that wrote it): the same forward group on CUDA, bf16.
        log("gpu group")
        gp = prof.to_dict()
        if prof.base == "REAL":  # a GPU runs every token count, the whole block included
            gp.update(linear_tokens=[512, 2048, 8192], block_tokens=[512, 2048, 8192], skipped_block_tokens=[])
        fwd = run_module("bench.forward", {"file": core, "profile": gp, "device": "cuda"}, timeout=3600)
        results["gpu"] = {
            "measured": "error" not in fwd,
            "device": m.get("gpu"),
            "forward": fwd,
            "reason": fwd.get("error"),
        }
    else:
        results["gpu"] = {"measured": False, "reason": NOT_MEASURED_GPU if not cuda else "skipped"}

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - t0
    results["targets"] = targets.evaluate(results)
    if previous.get("fullsize"):  # measured by `--full` runs: kept until the next one
        results["fullsize"] = previous["fullsize"]
    for name in STANDALONE:  # the standalone profiles' sections (bench/profiles.py): kept too
        if previous.get(name):
            results[name] = previous[name]
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {out}")
    made = render.plots(results, plots)
    render.update_markdown(results, md, plots_rel=os.path.relpath(plots, os.path.dirname(md)), made=made)
    log(f"wrote {md} and {len(made)} plots in {plots} ({results['elapsed_s']:.0f} s)")
    for t in results["targets"]:
        log(f"target: {t['status']:>12s}  {t['target']}: {t['measured']}")
    return 0


def _kept(prev: dict, group: str, profile: str) -> dict:
    """A group skipped with --skip keeps the results of the previous run of the same profile, marked
    with that run's date and commit (its rows were measured then, against references of that run)."""
    section = prev.get(group) or {}
    if (prev.get("profile") or {}).get("name") != profile or not section.get("rows"):
        return {"error": "skipped"}
    if "kept_from" not in section:
        m = prev.get("machine") or {}
        section = {**section, "kept_from": {"date_utc": m.get("date_utc"), "pack_commit": m.get("pack_commit")}}
    return section


def _read_results(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run_full(a, out: str, md: str) -> int:
    """The full-size profile: results["fullsize"] and BENCHMARKS.md's full-size block only."""
    from . import fullsize

    spec = {
        "file": a.full_file,
        "blocks": a.full_blocks,
        "presets": [p.strip() for p in a.full_presets.split(",")] if a.full_presets else None,
        "skip": [s.strip() for s in a.full_skip.split(",") if s.strip()],
        "deadline_s": a.full_deadline_s,
        "forward_presets": [p.strip() for p in a.full_forward.split(",")] if a.full_forward else None,
        "watchdog_gib": a.watchdog_gib,
        "min_available_gib": a.min_available_gib,
    }
    log(f"profile full-size; results -> {out}")
    fs = fullsize.run(spec)
    fs["machine"] = machine_info()
    results = _read_results(out)
    results["fullsize"] = fs
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    render.update_markdown(results, md, only=("fullsize",))
    log(f"wrote {out} and the full-size block of {md} ({fs['elapsed_s']:.0f} s)")
    for t in fs["targets"]:
        log(f"target: {t['status']:>12s}  {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
