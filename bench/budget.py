"""`python -m bench.budget [--profile full|smoke]`: the weight budget on real-size files.

For each (file, budget) of the profile (bench/profiles.BUDGET_PROFILES), in one process, one file
read at a time (run it under `flock /work/bench-out/.lock`: full-size files are never read by two
processes at once):

1. the plan without the budget (header only): the bytes the model would hold, the candidates;
2. the reference: the candidate layers' weights read once (plain `readinto`, file order), with the
   file's pages dropped from the page cache first (`posix_fadvise(DONTNEED)`) so that neither
   side finds them cached; read again after the planning, and the two averaged;
3. `plan_checkpoint(file, "auto; budget=SIZE")` from a cold cache: fits or refused, the bytes,
   the layers moved, the predicted error (worst, parameter-weighted mean), the planning time;
4. `quant.verify` of the moved layers against the original's weights (measured weight and output
   error, float64).

Writes bench/results_budget.json and the `bench:budget` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time

from .common import REPO, log, machine_info
from .profiles import BUDGET_PROFILES

SECTION = "budget"
TITLE = "6. Weight budget"


def drop_cache(path: str) -> None:
    """Drop this file's clean pages from the page cache (only this file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_once(path: str, infos) -> tuple[float, int]:
    """Seconds to read these tensors once, in file order, into one reused buffer."""
    infos = sorted(infos, key=lambda i: i.begin)
    buf = bytearray(max((i.nbytes for i in infos), default=0))
    view = memoryview(buf)
    t0, n = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as f:
        for i in infos:
            f.seek(i.begin)
            got = 0
            while got < i.nbytes:
                k = f.readinto(view[got : i.nbytes])
                if not k:
                    raise OSError(f"short read of {i.name} in {path}")
                got += k
            n += got
    view.release()
    return time.perf_counter() - t0, n


def bench_one(path: str, budget: str, verify_moved: bool, reference: str | None = None) -> dict:
    from quant.budget import BudgetError
    from quant.holdings import plan_holdings
    from quant.plan import plan_checkpoint
    from quant.report import build_report
    from quant.verify import verify

    out: dict = {"file": os.path.basename(path), "file_bytes": os.path.getsize(path), "budget": budget}
    t0 = time.perf_counter()
    plain = plan_checkpoint(path, "auto")
    out["plan_without_budget_s"] = time.perf_counter() - t0
    out["unbudgeted_bytes"] = plan_holdings(plain)["total_bytes"]
    candidates = [lp for lp in plain.layers if lp.mode == "bf16"]
    out["candidates"] = len(candidates)
    out["candidate_bytes_in_file"] = sum(lp.src.weight.nbytes for lp in candidates)
    reads = []
    drop_cache(path)
    reads.append(read_once(path, [lp.src.weight for lp in candidates])[0])
    drop_cache(path)
    t0 = time.perf_counter()
    try:
        plan = plan_checkpoint(path, f"auto; budget={budget}")
    except BudgetError as e:
        out.update(refused=True, message=str(e), plan_s=time.perf_counter() - t0)
        m = re.search(r"smallest possible model is .*?\((\d+) bytes\)", str(e))
        out["minimum_bytes"] = int(m.group(1)) if m else None
        drop_cache(path)
        reads.append(read_once(path, [lp.src.weight for lp in candidates])[0])
        out["read_candidates_s"] = reads
        return out
    out["plan_s"] = time.perf_counter() - t0
    drop_cache(path)
    reads.append(read_once(path, [lp.src.weight for lp in candidates])[0])
    out["read_candidates_s"] = reads
    out["plan_over_read"] = out["plan_s"] / (sum(reads) / len(reads))
    b = build_report(plan)["budget"]
    out.update(refused=False, report_total_bytes=build_report(plan)["total_bytes"])
    out["fit"] = {k: v for k, v in b.items() if k != "moved"}
    out["moved"] = [{k: m[k] for k in ("name", "params", "predicted_error", "order")} for m in b["moved"]]
    if verify_moved and b["moved_layers"]:
        t0 = time.perf_counter()
        v = verify(path, reference or path, f"auto; budget={budget}", moved_only=True)
        out["verify_s"] = time.perf_counter() - t0
        out["verify"] = v["budget"]
        out["verify_reference"] = os.path.basename(reference or path)
        worst = max(v["layers"], key=lambda r: abs(r["weight_rel_err"] - r["predicted_error"]))
        out["largest_prediction_gap"] = {
            "name": worst["name"],
            "predicted": worst["predicted_error"],
            "measured": worst["weight_rel_err"],
        }
    return out


def original_check(path: str, name: str, seed: int) -> bool:
    """Whether a full-precision layer of a tools.ltx2_fixture file is, bit for bit, the generator's
    original (reference_tensor): then the file's own bf16 layers are the bf16 original."""
    import torch

    from quant.plan import plan_checkpoint
    from quant.safetensors_header import read_tensor
    from tools import ltx2_fixture as LF

    plan = plan_checkpoint(path, "auto")
    lp = plan.layer(name)
    with open(path, "rb") as f:
        w = read_tensor(f, lp.src.weight, path)
    return bool(torch.equal(w, LF.reference_tensor(LF.REAL, name + ".weight", seed).to(w.dtype)))


MIN_FREE = 15 * 10**9  # the disk is shared: a generated file must leave this much free


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _complete(path: str) -> bool:
    """The planner accepts the file (a truncated one is refused: its last tensor ends past the end)."""
    from quant.errors import CheckpointError
    from quant.plan import plan_checkpoint

    try:
        plan_checkpoint(path, "auto")
        return True
    except (CheckpointError, OSError):
        return False


def run(profile: str, workdir: str) -> dict:
    from tools import ltx2_fixture as LF

    prof = BUDGET_PROFILES[profile]
    results: dict = {"profile": profile, "machine": machine_info(), "runs": [], "notes": list(prof.get("notes", []))}
    os.makedirs(workdir, exist_ok=True)
    for spec in prof["files"]:
        path, made = spec.get("path"), False
        if spec.get("generate"):
            g = spec["generate"]
            path = os.path.join(spec.get("dir") or workdir, g["name"])
            cfg = LF.config(getattr(LF, g["base"]), **g.get("overrides", {}))
            made = True
            need = 2 * sum(_numel(s) for s in LF.expected_state_shapes(cfg).values())  # bf16 upper bound
            free = shutil.disk_usage(os.path.dirname(path)).free
            if os.path.exists(path) and _complete(path):  # left by an interrupted run: same generator
                log(f"reusing {path}")
            elif free - need < MIN_FREE:
                results["runs"].append(
                    {
                        "file": os.path.basename(path),
                        "error": f"not written: {need / 1e9:.1f} GB would leave {(free - need) / 1e9:.1f} GB free "
                        f"on the disk (< {MIN_FREE / 1e9:.0f} GB)",
                    }
                )
                continue
            else:
                t0 = time.perf_counter()
                LF.write_checkpoint(path, cfg, g["encoding"], seed=g.get("seed", 0), passengers=False)
                log(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s")
        if not os.path.exists(path):
            results["runs"].append({"file": path, "error": "file not found"})
            continue
        try:
            if spec.get("original_check"):
                name, seed = spec["original_check"]
                results.setdefault("original_checks", {})[os.path.basename(path)] = {
                    "layer": name,
                    "seed": seed,
                    "equal": original_check(path, name, seed),
                }
            for budget in spec["budgets"]:
                log(f"{os.path.basename(path)}: budget {budget}")
                r = bench_one(path, budget, spec.get("verify", True) and budget in spec.get("verify_budgets", [budget]))
                r["kind"] = spec["kind"]
                results["runs"].append(r)
                log(json.dumps({k: v for k, v in r.items() if k not in ("moved",)}, default=str)[:2000])
        finally:
            if made and spec.get("delete_after", True):
                os.remove(path)
                log(f"deleted {path}")
    return results


# ----- BENCHMARKS.md -----------------------------------------------------------------------------


def _gb(n) -> str:
    return "–" if n is None else f"{n / 1e9:.2f} GB"


def render(results: dict) -> str:
    lines = [
        f"Profile `{results['profile']}`, {results['machine'].get('cpu_count')} CPU cores "
        f"({results['machine'].get('cpu_model')}); `python -m bench.budget` under `flock /work/bench-out/.lock`. "
        "Bytes are the load report's `total_bytes` (GB = 10^9 bytes). Planning time is "
        '`plan_checkpoint(file, "auto; budget=SIZE")` from a cold page cache; the reference is '
        "reading the same file's candidate layers (its full-precision linears) once, cold, before and "
        "after the planning (mean of the two).",
        "",
        "| file | budget | without budget | result | bytes | layers moved | predicted error worst / mean "
        "| measured error worst / mean (verify) | planning | reading candidates once | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if "error" in r:
            lines.append(f"| {r['file']} | – | – | not measured: {r['error']} | | | | | | | |")
            continue
        reads = r.get("read_candidates_s", [])
        read = sum(reads) / len(reads) if reads else None
        read_txt = f"{read:.1f} s ({r['candidate_bytes_in_file'] / 1e9:.2f} GB)" if read else "–"
        if r["refused"]:
            lines.append(
                f"| {r['file']} | {r['budget']} | {_gb(r['unbudgeted_bytes'])} | **refused before loading**: "
                f"smallest possible {_gb(r.get('minimum_bytes'))} | – | – | – | – | {r['plan_s']:.2f} s | "
                f"{read_txt} | – |"
            )
            continue
        f, v = r["fit"], r.get("verify")
        pe = f["predicted_error"]
        meas = (
            f"{v['measured_weight_error']['worst']:.2e} / {v['measured_weight_error']['weighted_mean']:.2e} "
            f"(output {v['measured_output_error']['worst']:.2e} / {v['measured_output_error']['weighted_mean']:.2e})"
            if v
            else "not measured"
        )
        lines.append(
            f"| {r['file']} | {r['budget']} | {_gb(r['unbudgeted_bytes'])} | fits | {_gb(f['total_bytes'])} "
            f"({f['total_bytes']} B) | {f['moved_layers']} of {f['candidates']} "
            f"({f['moved_params'] / 1e9:.2f} G params) "
            f"| {pe['worst']:.2e} / {pe['weighted_mean']:.2e} | {meas} | {r['plan_s']:.1f} s | {read_txt} "
            f"| {r['plan_over_read']:.2f}x |"
        )
    for r in results["runs"]:
        if r.get("refused"):
            lines += ["", f"`{r['file']}` with `budget={r['budget']}`, the refusal: {r['message']}"]
    checks = results.get("original_checks") or {}
    for file, c in checks.items():
        lines += [
            "",
            f"`{file}`: layer `{c['layer']}` {'equals' if c['equal'] else 'DIFFERS from'} the generator's bf16 "
            f"original (tools.ltx2_fixture.reference_tensor, seed {c['seed']}) bit for bit, so its full-precision "
            "layers are the original's and `verify` against the file itself measures the moved layers against "
            "the bf16 original.",
        ]
    for note in results.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def update_markdown(results: dict, path: str) -> None:
    body = render(results)
    text = open(path).read() if os.path.exists(path) else ""
    pat = re.compile(rf"(<!-- BEGIN bench:{SECTION} -->\n).*?(<!-- END bench:{SECTION} -->)", re.S)
    if pat.search(text):
        text = pat.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)
    else:
        text += f"\n## {TITLE}\n\n<!-- BEGIN bench:{SECTION} -->\n{body.rstrip()}\n<!-- END bench:{SECTION} -->\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full", choices=sorted(BUDGET_PROFILES))
    ap.add_argument("--out", default=None, help="results JSON (default bench/results_budget.json)")
    ap.add_argument("--md", default=None, help="markdown to update (default BENCHMARKS.md)")
    ap.add_argument("--workdir", default=os.path.join(REPO, "bench", "out", "budget"))
    a = ap.parse_args(argv)
    if a.profile != "full" and not a.out:
        ap.error(f"--profile {a.profile} needs --out (it must not overwrite bench/results_budget.json)")
    out = a.out or os.path.join(REPO, "bench", "results_budget.json")
    md = a.md or (os.path.join(os.path.dirname(out), "BENCHMARKS.md") if a.out else os.path.join(REPO, "BENCHMARKS.md"))
    t0 = time.perf_counter()
    results = run(a.profile, a.workdir)
    results["elapsed_s"] = time.perf_counter() - t0
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    update_markdown(results, md)
    log(f"wrote {out} and the bench:{SECTION} section of {md} ({results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
