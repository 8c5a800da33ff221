"""The convert profile (`python -m bench.convert --src BUNDLE`): `python -m quant convert` on the
full-size bundle, against a raw copy of the same file measured in the same run.

For the reference and for each encoding (ltx-core, comfy-native; policy auto):
- wall time of the whole write, durable on disk: the raw copy is `cp SRC OUT && sync OUT`, the
  converter fsyncs its output before renaming it (its own guarantee);
- the source's pages are dropped from the page cache before each run (`posix_fadvise DONTNEED`):
  every run reads SRC from disk (a 25 GB file never fits this machine's page cache anyway);
- peak private memory (RssAnon of the converting process, /proc/PID/status sampled every 50 ms
  from here), beside the largest tensor of the file (the converter's bound: about one tensor) and
  the baseline of a process that only imports the converter;
- the output checked (tensor count, fp8 layers, sampled tensors byte for byte against SRC), then
  deleted at once (disk).

A watchdog kills the converter past `--watchdog-gib` of private memory or under
`--min-available-gib` of available RAM (the kernel's OOM killer must not pick another process on a
shared machine). Run it under `flock <bundle folder>/.lock` (or let it take the lock: `--lock`), so
that no other full-size run reads the big file at the same time. Results: `convert` in
bench/results.json and the `convert` block of BENCHMARKS.md (the other sections are left as they are).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

from .common import PY, REPO, drop_pages, log, machine_info, mem_available, proc_status

GIB = 1 << 30
ENCODINGS = ("ltx-core", "comfy-native")


def run_sampled(cmd: list[str], watchdog_gib: float, min_available_gib: float, env=None) -> dict:
    """Run `cmd`, sampling its RssAnon every 50 ms; kill it past the watchdog's limits."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0}
    stopped = []

    def sample():
        while p.poll() is None:
            st = proc_status(p.pid)
            for k in peak:
                peak[k] = max(peak[k], st.get(k, 0))
            if st.get("RssAnon", 0) > watchdog_gib * GIB or mem_available() < min_available_gib * GIB:
                stopped.append(f"stopped by watchdog at {st.get('RssAnon', 0) / GIB:.2f} GiB private")
                p.kill()
                return
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    th.join()
    return {
        "rc": p.returncode,
        "wall_s": wall,
        "peak_rss_anon": peak["RssAnon"],
        "peak_rss_file": peak["RssFile"],
        "stdout": out,
        "stderr_tail": err[-2000:],
        "stopped": stopped[0] if stopped else None,
    }


def largest_tensor(path: str) -> tuple[str, int]:
    from quant.safetensors_header import read_header

    idx = read_header(path)
    t = max(idx.tensors.values(), key=lambda i: i.nbytes)
    return t.name, t.nbytes


def _sha(path: str, begin: int, end: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(begin)
        left = end - begin
        while left:
            b = f.read(min(left, 16 << 20))
            if not b:
                break
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def check_output(src: str, out: str, encoding: str) -> dict:
    """The output's header against SRC's, and a sample of tensors byte for byte (policy auto keeps
    every fp8 code, scale and passenger as it is)."""
    from quant.safetensors_header import read_header

    s, o = read_header(src), read_header(out)
    fp8 = [k for k, i in o.tensors.items() if i.dtype == "F8_E4M3"]
    src_fp8 = [k for k, i in s.tensors.items() if i.dtype == "F8_E4M3"]
    sample = [src_fp8[0], src_fp8[len(src_fp8) // 2], src_fp8[-1]]
    sample += [k.replace(".weight", ".weight_scale") for k in sample[:1]]
    sample += [next(k for k in s.tensors if k.startswith(("vae.", "audio_vae.", "vocoder.")))]
    same = {
        k: _sha(src, s.tensors[k].begin, s.tensors[k].end) == _sha(out, o.tensors[k].begin, o.tensors[k].end)
        for k in sample
    }
    return {
        "tensors": len(o.tensors),
        "src_tensors": len(s.tensors),
        "fp8_layers": len(fp8),
        "src_fp8_layers": len(src_fp8),
        "sampled_identical": same,
        "config_kept": o.metadata.get("config") == s.metadata.get("config"),
        "quant_metadata": "_quantization_metadata" in o.metadata,
        "encoding": encoding,
        "bytes": o.file_size,
    }


def baseline_rss_anon() -> int:
    code = "import quant.convert, sys; f=open('/proc/self/status'); print([l for l in f if l.startswith('RssAnon')][0])"
    p = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    m = re.search(r"RssAnon:\s+(\d+)", p.stdout)
    return int(m.group(1)) * 1024 if m else 0


def run(src: str, workdir: str, watchdog_gib: float, min_available_gib: float) -> dict:
    size = os.path.getsize(src)
    name, largest = largest_tensor(src)
    res: dict = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "src": os.path.basename(src),
        "src_bytes": size,
        "largest_tensor": {"name": name, "bytes": largest},
        "baseline_rss_anon": baseline_rss_anon(),
        "loadavg_start": list(os.getloadavg()),
        "rows": [],
    }
    env = {**os.environ, "PYTHONPATH": REPO}

    def room() -> bool:
        return shutil.disk_usage(workdir).free > size + 2 * GIB

    # The reference: a raw copy of the same file, durable on disk.
    copy = os.path.join(workdir, "convert_bench_copy.safetensors")
    if room():
        drop_pages(src)
        r = run_sampled(["bash", "-c", 'cp "$0" "$1" && sync "$1"', src, copy], watchdog_gib, min_available_gib)
        ok = r["rc"] == 0 and os.path.getsize(copy) == size
        res["rows"].append(
            {
                "label": "raw copy: cp + sync",
                "kind": "copy",
                "wall_s": r["wall_s"],
                "ok": ok,
                "gb_per_s": size / r["wall_s"] / 1e9,
                "error": None if ok else r["stderr_tail"],
            }
        )
        log(f"raw copy: {r['wall_s']:.1f} s ({size / r['wall_s'] / 1e9:.2f} GB/s)")
    else:
        res["rows"].append(
            {"label": "raw copy: cp + sync", "kind": "copy", "error": "not measured: not enough free disk"}
        )
    if os.path.exists(copy):
        os.unlink(copy)

    for enc in ENCODINGS:
        out = os.path.join(workdir, f"convert_bench_{enc}.safetensors")
        label = f"python -m quant convert --policy auto --encoding {enc}"
        if not room():
            res["rows"].append(
                {"label": label, "kind": "convert", "encoding": enc, "error": "not measured: not enough free disk"}
            )
            continue
        drop_pages(src)
        r = run_sampled(
            [PY, "-m", "quant", "convert", src, out, "--encoding", enc, "--json"], watchdog_gib, min_available_gib, env
        )
        row = {
            "label": label,
            "kind": "convert",
            "encoding": enc,
            "wall_s": r["wall_s"],
            "peak_rss_anon": r["peak_rss_anon"],
            "peak_rss_file": r["peak_rss_file"],
        }
        if r["rc"] == 0:
            summary = json.loads(r["stdout"])
            row.update(
                summary={k: summary[k] for k in ("bytes", "tensors", "seconds", "gb_per_s", "layers", "passengers")},
                gb_per_s=summary["bytes"] / r["wall_s"] / 1e9,
                check=check_output(src, out, enc),
            )
            log(f"{label}: {r['wall_s']:.1f} s, peak private {r['peak_rss_anon'] / GIB:.2f} GiB")
        else:
            row["error"] = r["stopped"] or f"exit {r['rc']}: {r['stderr_tail'][-400:]}"
            log(f"{label}: ERROR {row['error']}")
        res["rows"].append(row)
        if os.path.exists(out):
            os.unlink(out)
        for stale in os.listdir(workdir):
            if stale.startswith(f".convert_bench_{enc}") and stale.endswith(".partial"):
                os.unlink(os.path.join(workdir, stale))
    copy_row = res["rows"][0]
    for row in res["rows"][1:]:
        if "wall_s" in row and not row.get("error") and copy_row.get("ok"):
            row["time_vs_copy"] = row["wall_s"] / copy_row["wall_s"]
    res["loadavg_end"] = list(os.getloadavg())
    return res


def render(c: dict, machine: dict) -> str:
    if not c or "rows" not in c:
        return "_Not measured in this run._"
    gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    lines = [
        f"`{c['src']}` ({c['src_bytes'] / 1e9:.2f} GB), {c['date_utc']}; machine: {machine.get('cpu_model')}, "
        f"{machine.get('cpu_count')} cores, {machine.get('mem_total_bytes', 0) / GIB:.0f} GiB RAM, no swap. "
        f"**The machine is shared with other jobs and was loaded during the run** (load average "
        f"{c['loadavg_start'][0]:.1f} at the start, {c['loadavg_end'][0]:.1f} at the end): the times are one "
        f"run each, and the ratio against the raw copy of the same run is the figure to read.",
        "",
        "| run | wall time | GB/s | time vs raw copy | peak private memory (RssAnon) | over the import baseline "
        "| output check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in c["rows"]:
        if r.get("error"):
            lines.append(f"| {r['label']} | {r['error']} | | | | | |")
            continue
        chk = r.get("check")
        check = ""
        if chk:
            same = all(chk["sampled_identical"].values())
            check = (
                f"{chk['tensors']} tensors, {chk['fp8_layers']} fp8 layers (source {chk['src_fp8_layers']}), "
                f"sampled codes/scale/passenger {'byte-identical' if same else 'DIFFER'}, config "
                f"{'kept' if chk['config_kept'] else 'LOST'}, _quantization_metadata "
                f"{'yes' if chk['quant_metadata'] else 'no'}"
            )
        ratio = f"{r['time_vs_copy']:.2f}x" if "time_vs_copy" in r else "(reference)"
        peak = gib(r["peak_rss_anon"]) if "peak_rss_anon" in r else "-"
        over = gib(r["peak_rss_anon"] - c["baseline_rss_anon"]) if "peak_rss_anon" in r else "-"
        lines.append(
            f"| {r['label']} | {r['wall_s']:.1f} s | {r['gb_per_s']:.2f} | {ratio} | {peak} | {over} | {check} |"
        )
    lines += [
        "",
        f"Largest tensor of the file: `{c['largest_tensor']['name']}`, {gib(c['largest_tensor']['bytes'])}; a process "
        f"that only imports the converter holds {gib(c['baseline_rss_anon'])} private (torch).",
        "Method: the source's pages dropped from the page cache before each run; the raw copy is `cp` + `sync` of "
        "the output, the converter fsyncs its output before the rename (both durable); RssAnon of the converting "
        "process sampled every 50 ms; each output checked then deleted at once.",
    ]
    return "\n".join(lines)


def update_markdown(path: str, body: str) -> None:
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    pat = re.compile(r"(<!-- BEGIN bench:convert -->\n).*?(<!-- END bench:convert -->)", re.S)
    if pat.search(text):
        text = pat.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)
    else:
        text += (
            "\n## Convert: `python -m quant convert` on the full-size bundle\n\n"
            f"<!-- BEGIN bench:convert -->\n{body.rstrip()}\n<!-- END bench:convert -->\n"
        )
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.convert", description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="the full-size bundle")
    ap.add_argument("--workdir", default=None, help="where the outputs go (default: SRC's folder)")
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results.json"))
    ap.add_argument("--md", default=os.path.join(REPO, "BENCHMARKS.md"))
    ap.add_argument("--lock", action="store_true", help="take flock on <SRC folder>/.lock for the run")
    ap.add_argument("--watchdog-gib", type=float, default=8.0)
    ap.add_argument("--min-available-gib", type=float, default=1.0)
    ap.add_argument("--render-only", action="store_true", help="rewrite the BENCHMARKS block from --out, run nothing")
    a = ap.parse_args(argv)
    if a.render_only:
        with open(a.out) as f:
            res = json.load(f)["convert"]
        update_markdown(a.md, render(res, res["machine"]))
        return 0
    if not a.src:
        ap.error("--src is required")
    workdir = a.workdir or os.path.dirname(os.path.abspath(a.src))
    lock = None
    if a.lock:
        lock = open(os.path.join(os.path.dirname(os.path.abspath(a.src)), ".lock"), "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        res = run(a.src, workdir, a.watchdog_gib, a.min_available_gib)
    finally:
        if lock is not None:
            lock.close()
    machine = machine_info()
    res["machine"] = {k: machine.get(k) for k in ("cpu_model", "cpu_count", "mem_total_bytes", "torch", "pack_commit")}
    try:
        with open(a.out) as f:
            results = json.load(f)
    except (OSError, ValueError):
        results = {}
    results["convert"] = res
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    update_markdown(a.md, render(res, res["machine"]))
    log(f"wrote {a.out} (convert) and {a.md}")
    return 0 if not any(r.get("error") for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
