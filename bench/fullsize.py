"""The full-size profile (`make bench FULL=1`, `python -m bench --full`): the 48-block LTX-2.3 bundle.

The file: `tools.ltx2_fixture OUT --real --bf16-blocks 0,1,45,46,47` (25.39 GB, 1462 fp8 layers,
the layer count of the official `ltx-2.3-22b-dev-fp8.safetensors`), written once where `--full-file`
says (default bench/out/full/, git-ignored) and re-used; `--full-blocks N` makes and measures an
N-block file of the same widths instead (a short run to check the harness).

Every figure against its reference from the same run:
- load time vs raw sequential reads of the same file just before and just after a preset's loads
  (their mean), cold (the file's pages dropped first with `posix_fadvise(POSIX_FADV_DONTNEED)`) and
  warm (whatever the page cache holds after a read of the whole file; reported as the fraction
  cached, since a file larger than RAM never is entirely: each warm load and reference read starts
  right after a raw read);
- through the core (`quant.stream`), and into the host's model through the node over HTTP (a real
  ComfyUI started headless with `--bf16-unet`, the file's folder added through extra model paths),
  in every preset (auto, fp8-cast, scaled-mm; bf16 recorded as what happens to it);
- private (RssAnon) vs file-backed (RssFile) memory of the loading process after the load and at
  its peak (its /proc/PID/status sampled every 50 ms from here);
- the VRAM Report's figures (the node's JSON, over HTTP);
- the host's own loader (`comfy.sd.load_diffusion_model`) on a ComfyUI-format copy (the same bytes
  under a header with `_quantization_metadata`, written next to the file, deleted at the end);
- one forward of the whole model on a few tokens (in-process, the node's build path), with a
  sampled fp8 layer and a bf16 layer checked against float64 math.

A memory watchdog guards every process this profile starts: past `--watchdog-gib` of private
memory, or under `--min-available-gib` of available system memory, it kills the process and the
row records "stopped by watchdog at X GiB" (the kernel's OOM killer is never left to act: on a
shared machine it may pick another process). The whole run holds an exclusive `flock` on
`<file's folder>/.lock`, so two full-size runs never read the big file at the same time.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from .common import PY, REPO, RESULT_MARK, drop_pages, log, mem_available, proc_status

PRESETS = ("auto", "fp8-cast", "scaled-mm")
BUNDLE_BF16_BLOCKS = (0, 1, 45, 46, 47)
DEFAULT_FILE = os.path.join(REPO, "bench", "out", "full", "ltx23_dev_fp8_real.safetensors")
GIB = 1 << 30
PRIVATE_TARGET_SLACK = 1.5e9  # target: private after the load <= 1.5 GB + converted tensors
TIME_TARGET = 1.15  # target: load time <= 1.15x the raw read of the same file


# -- memory ---------------------------------------------------------------------------------------------


class Watchdog:
    """Samples /proc/PID/status of one process every `interval` s (peaks of RssAnon / RssFile and a
    series); kills its process group when its private memory passes `limit` bytes or the system's
    available memory falls under `floor` bytes, and says so in `stopped`."""

    def __init__(self, pid: int, limit: int, floor: int, interval: float = 0.05):
        self.pid, self.limit, self.floor, self.interval = pid, limit, floor, interval
        self.peak_anon = self.peak_file = 0
        self.samples: list[tuple[float, int, int]] = []
        self.stopped: dict | None = None
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def mark(self) -> float:
        return time.monotonic() - self._t0

    def peaks_since(self, t: float) -> tuple[int, int]:
        sel = [s for s in self.samples if s[0] >= t]
        return max((s[1] for s in sel), default=0), max((s[2] for s in sel), default=0)

    def _run(self):
        while not self._stop.is_set():
            s = proc_status(self.pid)
            if not s:
                return
            anon, filed = s.get("RssAnon", 0), s.get("RssFile", 0)
            self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, filed)
            t = self.mark()
            self.samples.append((round(t, 3), anon, filed))
            avail = mem_available()
            if anon > self.limit or avail < self.floor:
                why = (
                    f"private memory {anon / GIB:.1f} GiB > limit {self.limit / GIB:.1f} GiB"
                    if anon > self.limit
                    else f"system memory available {avail / GIB:.1f} GiB < floor {self.floor / GIB:.1f} GiB"
                )
                self.stopped = {
                    "private_gib": round(anon / GIB, 2),
                    "file_backed_gib": round(filed / GIB, 2),
                    "available_gib": round(avail / GIB, 2),
                    "after_s": round(t, 1),
                    "reason": why,
                    "text": f"stopped by watchdog at {anon / GIB:.1f} GiB private after {t:.0f} s ({why})",
                }
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            self._stop.wait(self.interval)

    def stop(self) -> Watchdog:
        self._stop.set()
        self._thread.join(timeout=5)
        return self

    def series(self, points: int = 150) -> list[list]:
        s = self.samples
        if len(s) <= points:
            return [list(x) for x in s]
        step = len(s) / points
        return [list(max(s[int(i * step) : int((i + 1) * step)] or [s[-1]], key=lambda x: x[1])) for i in range(points)]


# -- the file --------------------------------------------------------------------------------------------


@contextmanager
def file_lock(path: str):
    """Exclusive flock on `<folder>/.lock` (the same lock `flock DIR/.lock CMD` takes)."""
    lock = os.path.join(os.path.dirname(os.path.abspath(path)), ".lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "a") as f:
        t = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t
        if waited > 1:
            log(f"full size: waited {waited:.0f} s for {lock}")
        try:
            yield lock
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_file(path: str, blocks: int) -> dict:
    """The bundle, generated once (`tools.ltx2_fixture --real`) if missing; refused if the disk
    cannot take it. A partial file never stays: the fixture writes `path.partial`, renamed at the end."""
    if os.path.isfile(path):
        return {"path": path, "bytes": os.path.getsize(path), "generated": False}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    need = blocks * 520_000_000 + 6_000_000_000  # ~0.5 GB per fp8 block + the non-block layers
    free = os.statvfs(os.path.dirname(path))
    if free.f_bavail * free.f_frsize < need + 5e9:
        raise SystemExit(f"not enough disk for {path}: need ~{need / 1e9:.0f} GB + 5 GB spare")
    bf16 = [b for b in BUNDLE_BF16_BLOCKS if b < blocks] if blocks == 48 else [0]
    cmd = [PY, "-m", "tools.ltx2_fixture", path + ".partial", "--real", "--layers", str(blocks)]
    cmd += ["--bf16-blocks", ",".join(map(str, bf16))]
    log(f"full size: writing {path} ({' '.join(cmd[1:])})")
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env=_env())
    os.replace(path + ".partial", path)
    return {"path": path, "bytes": os.path.getsize(path), "generated": True, "seconds": time.perf_counter() - t}


def header_of(path: str) -> tuple[int, dict]:
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return 8 + n, json.loads(f.read(n))


def file_facts(path: str) -> dict:
    _, h = header_of(path)
    meta = h.pop("__metadata__", {}) or {}
    fp8 = [k for k, v in h.items() if v["dtype"].startswith("F8")]
    blocks = {m.group(1) for k in h if (m := re.search(r"(?:^|\.)transformer_blocks\.(\d+)\.", k))}
    return {
        "name": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "tensors": len(h),
        "fp8_layers": len(fp8),
        "blocks": len(blocks),
        "fp8_bytes": sum(h[k]["data_offsets"][1] - h[k]["data_offsets"][0] for k in fp8),
        "model_version": meta.get("model_version"),
    }


def write_native_copy(src: str, dst: str) -> dict:
    """The same tensors under a header with ComfyUI's `_quantization_metadata` (one entry per fp8
    weight: {"format": "float8_e4m3fn"}, the format comfy/quant_ops.py reads), data bytes copied
    unchanged (in-kernel `copy_file_range`). Written to `dst.partial` and renamed: complete or absent."""
    import struct

    from tools.ltx2_fixture import COMFY_QUANT_CONF

    start, h = header_of(src)
    meta = dict(h.get("__metadata__") or {})
    layers = {
        k[: -len(".weight")]: dict(COMFY_QUANT_CONF)
        for k, v in h.items()
        if k != "__metadata__" and v["dtype"] == "F8_E4M3"
    }
    meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    h["__metadata__"] = meta
    hb = json.dumps(h, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    t = time.perf_counter()
    tmp = dst + ".partial"
    size = os.path.getsize(src)
    try:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            fo.write(struct.pack("<Q", len(hb)) + hb)
            fo.flush()
            off, left = start, size - start
            while left:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), min(left, 1 << 30), off)
                if n <= 0:
                    raise OSError(f"copy_file_range stopped at {off} of {size}")
                off, left = off + n, left - n
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Its pages are not the original's: keep the cache for what is measured next.

    drop_pages(dst)
    return {"bytes": os.path.getsize(dst), "seconds": time.perf_counter() - t, "fp8_layers": len(layers)}


# -- processes -------------------------------------------------------------------------------------------


def _env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.setdefault("PYTHONHASHSEED", "0")
    e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(extra or {})
    return e


class Guard:
    def __init__(self, limit_gib: float, floor_gib: float):
        self.limit, self.floor = int(limit_gib * GIB), int(floor_gib * GIB)


def run_worker(spec: dict, guard: Guard, timeout: float = 1800) -> dict:
    """`python -m bench.fullsize_worker SPEC` in its own process group, under the watchdog."""
    t = time.perf_counter()
    p = subprocess.Popen(
        [PY, "-m", "bench.fullsize_worker", json.dumps(spec)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wd = Watchdog(p.pid, guard.limit, guard.floor).start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        err = f"timed out after {timeout:.0f} s\n{err}"
    wd.stop()
    res = None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            res = json.loads(line[len(RESULT_MARK) :])
            break
    if res is None:
        tail = (err or out or "").strip().splitlines()
        res = {"kind": spec["kind"], "policy": spec.get("policy"), "cold": bool(spec.get("cold"))}
        res["error"] = wd.stopped["text"] if wd.stopped else f"exit {p.returncode}: {tail[-1] if tail else 'no output'}"
        res["stderr_tail"] = "\n".join(tail[-15:])
    if wd.stopped:
        res["watchdog"] = wd.stopped
    res["process_wall_s"] = time.perf_counter() - t
    res["watch_peak_anon"] = wd.peak_anon
    res["watch_peak_file"] = wd.peak_file
    res["watch_series"] = wd.series()
    return res


def _hostlib():
    """tests/support/hostlib.py (standard library only): the test suite's way to start the host."""
    name = "ltxfp8_bench_hostlib"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tests", "support", "hostlib.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _msg_times(entry: dict) -> dict[str, float]:
    out = {}
    for msg in (entry.get("status") or {}).get("messages") or []:
        if isinstance(msg, (list, tuple)) and len(msg) == 2 and isinstance(msg[1], dict) and "timestamp" in msg[1]:
            out[msg[0]] = msg[1]["timestamp"] / 1000.0
    return out


def run_http(path: str, policy: str, cold: bool, guard: Guard, timeout: float = 1800) -> dict:
    """Load LTX FP8 Checkpoint + VRAM Report over HTTP in a fresh host started with `--bf16-unet`
    (the weight dtype a GPU uses), the file's folder added as a checkpoints folder. The load's time is
    the prompt's execution (execution_start -> execution_success/error messages of /history)."""
    from .fullsize_worker import cached_bytes

    hostlib = _hostlib()
    host = hostlib.Host(device="cpu")
    # The file's own folder as an extra checkpoints folder (ComfyUI's extra_model_paths.yaml
    # protocol, utils/extra_config.py): a symlink in models/checkpoints would be refused, since the
    # pack does not follow links out of the model folders.
    cfg = host.base_dir / "extra_model_paths.yaml"
    cfg.write_text(f"ltxfp8_bench_full:\n  base_path: {json.dumps(os.path.dirname(path))}\n  checkpoints: .\n")
    host.extra_args = ["--bf16-unet", "--extra-model-paths-config", str(cfg)]
    name = os.path.basename(path)
    res: dict = {"kind": "http", "policy": policy, "cold": cold, "file": path}
    wd = None
    try:
        host.start()
        res["host_start_s"] = host.startup_seconds
        before = proc_status(host.pid)
        if cold:
            drop_pages(path)
        res["cached_before_bytes"] = cached_bytes(path)
        wd = Watchdog(host.pid, guard.limit, guard.floor).start()
        t_mark = wd.mark()
        prompt = {
            "1": {"class_type": "LTXFP8CheckpointLoader", "inputs": {"ckpt_name": name, "policy": policy}},
            "2": {"class_type": "LTXFP8VRAMReport", "inputs": {"model": ["1", 0]}},
        }
        t = time.perf_counter()
        try:
            entry = host.run_prompt(prompt, timeout=timeout, check=False)
        except hostlib.HostError as e:
            entry = None
            res["error"] = wd.stopped["text"] if wd.stopped else f"HostError: {str(e).splitlines()[0][:300]}"
        res["wall_s"] = time.perf_counter() - t
        time.sleep(0.3)
        after = proc_status(host.pid) if host.alive() else {}
        anon_peak, file_peak = wd.peaks_since(t_mark)
        res.update(
            {
                "anon_before": before.get("RssAnon"),
                "file_before": before.get("RssFile"),
                "anon_after": after.get("RssAnon"),
                "file_after": after.get("RssFile"),
                "anon_peak": anon_peak,
                "file_peak": file_peak,
                "file_bytes": os.path.getsize(path),
            }
        )
        if entry is not None:
            status = (entry.get("status") or {}).get("status_str")
            times = _msg_times(entry)
            end = times.get("execution_success") or times.get("execution_error")
            if "execution_start" in times and end:
                res["prompt_s"] = end - times["execution_start"]
            if status != "success":
                err = hostlib.execution_error(entry) or {}
                res["error"] = (
                    f"{err.get('exception_type', status)}: {str(err.get('exception_message', ''))[:600]}"
                    if err
                    else f"prompt {status}"
                )
                res["refused_at_s"] = res.get("prompt_s")
            else:
                ui = (entry.get("outputs") or {}).get("2") or {}
                raw = (ui.get("ltx_fp8_vram") or [None])[0]
                if raw:
                    rep = json.loads(raw)
                    m = rep["models"][0]
                    res["vram_report"] = {
                        "holdings": m.get("holdings"),
                        "resident_bytes": m.get("resident_bytes"),
                        "offloaded_bytes": m.get("offloaded_bytes"),
                        "device": rep.get("device"),
                    }
                summary = [ln for ln in host.log_text().splitlines() if "GB/s" in ln or "loaded" in ln.lower()]
                res["log_summary"] = summary[-1][-400:] if summary else None
            res["load_s"] = res.get("prompt_s") or res["wall_s"]
    except hostlib.HostError as e:
        res.setdefault("error", f"HostError: {str(e).splitlines()[0][:300]}")
    finally:
        if wd is not None:
            wd.stop()
            if wd.stopped:
                res["watchdog"] = wd.stopped
                res["error"] = wd.stopped["text"]
            res["watch_peak_anon"] = wd.peak_anon
            res["watch_peak_file"] = wd.peak_file
            res["watch_series"] = wd.series()
        host.stop()
    return res


# -- the run ---------------------------------------------------------------------------------------------


def _ratio(a, b):
    return None if a is None or not b else a / b


def _read_s(ref: dict | None) -> float | None:
    return ref.get("wall_s") if ref and "error" not in ref else None


def _load_row(route: str, r: dict, ref: dict | None, ref_after: dict | None = None) -> dict:
    """One table row: a load and its reference: the mean of the raw reads of the same file at the
    same temperature just before and just after this preset's loads (the disk is shared: a cold
    read of the 25 GB file took 42 to 60 s within one hour, so one read alone moves a ratio by 0.2).
    Warm, each of them and each load started right after a raw read (`settle` in `run`)."""
    load_s = r.get("load_s", r.get("wall_s")) if "error" not in r else None
    reads = [t for t in (_read_s(ref), _read_s(ref_after)) if t is not None]
    ref_s = sum(reads) / len(reads) if reads else None
    conv = (r.get("converted_bytes") or {}).get("total")
    anon_inc = (
        None if r.get("anon_after") is None or r.get("anon_before") is None else r["anon_after"] - r["anon_before"]
    )
    row = {
        "route": route,
        "policy": r.get("policy"),
        "temperature": "cold" if r.get("cold") else "warm",
        "load_s": load_s,
        "read_s": ref_s,
        "read_before_s": _read_s(ref),
        "read_after_s": _read_s(ref_after),
        "time_vs_read": _ratio(load_s, ref_s),
        "read_gb_per_s": None if ref_s is None else ref["file_bytes"] / ref_s / 1e9,
        "load_gb_per_s": None if load_s is None else r.get("file_bytes", 0) / load_s / 1e9,
        "cached_before_load": r.get("cached_before_bytes"),
        "cached_before_read": ref.get("cached_before_bytes") if ref else None,
        "private_after": r.get("anon_after"),
        "private_after_increase": anon_inc,
        "private_peak": max(r.get("anon_peak") or 0, r.get("watch_peak_anon") or 0) or None,
        "file_backed_after": r.get("file_after"),
        "file_backed_peak": max(r.get("file_peak") or 0, r.get("watch_peak_file") or 0) or None,
        "converted_bytes": conv,
        "error": r.get("error"),
        "watchdog": (r.get("watchdog") or {}).get("text"),
    }
    if conv is not None and anon_inc is not None:
        row["private_target_bytes"] = PRIVATE_TARGET_SLACK + conv
        row["private_target_met"] = anon_inc <= PRIVATE_TARGET_SLACK + conv
    if row["time_vs_read"] is not None:
        row["time_target_met"] = row["time_vs_read"] <= TIME_TARGET
    return row


def run(spec: dict) -> dict:
    """The whole profile; returns results["fullsize"]."""
    path = os.path.abspath(spec.get("file") or DEFAULT_FILE)
    blocks = int(spec.get("blocks") or 48)
    guard = Guard(spec.get("watchdog_gib", 14.0), spec.get("min_available_gib", 1.0))
    presets = spec.get("presets") or list(PRESETS)
    skip = set(spec.get("skip") or ())
    t0 = time.perf_counter()
    deadline = time.monotonic() + float(spec.get("deadline_s") or 1e9)  # from the start, lock wait included
    out: dict = {
        "profile": "full-size",
        "watchdog": {"private_limit_gib": guard.limit / GIB, "min_available_gib": guard.floor / GIB},
        "rows": [],
        "runs": [],
    }
    with file_lock(path) as lock:
        out["lock"] = lock
        out["file_made"] = ensure_file(path, blocks)
        out["file"] = file_facts(path)
        log(
            f"full size: {out['file']['name']} {out['file']['bytes'] / 1e9:.2f} GB, "
            f"{out['file']['fp8_layers']} fp8 layers"
        )
        out["mem_total"] = _meminfo("MemTotal")
        out["mem_available_start"] = mem_available()
        out["loadavg_start"] = list(os.getloadavg())

        def worker(**kw):
            r = run_worker({"file": path, **kw}, guard)
            out["runs"].append({k: v for k, v in r.items() if k not in ("series",)})
            _say(r)
            return r

        last = {"op": None}  # what ran last, "read" or "load": a warm operation starts from what it left

        def read(cold: bool, settle: bool = False):
            # Warm: no separate warm-up; the cold loads before it read the whole file, and this read
            # leaves the page cache as warm as a file of this size can be here (what fits).
            r = worker(kind="raw-read", cold=cold)
            if settle:
                out["runs"][-1]["role"] = "settle"
            last["op"] = "read"
            return r

        def settle(cold: bool) -> None:
            # Warm: every load and every reference read starts from the page cache that a raw read
            # leaves. A load through mappings leaves more of the 25 GB file cached than a read does
            # (a read right after a warm load took 6-11 s, right after a cold read 14-21 s): without this,
            # whatever follows a load would start warmer than its reference did.
            if not cold and last["op"] == "load":
                read(False, settle=True)

        def late(what: str) -> bool:
            if time.monotonic() < deadline:
                return False
            out.setdefault("not_measured", []).append(f"{what}: not measured (the run's time limit was reached)")
            log(f"full size: {what} skipped (time limit)")
            return True

        def forward():
            if "forward" not in skip:
                out["forward"] = []
                for policy in spec.get("forward_presets") or [p.partition(":")[0] for p in presets]:
                    if late(f"forward {policy}"):
                        continue
                    r = worker(kind="bridge", policy=policy, cold=False, forward=True)
                    last["op"] = "load"
                    out["forward"].append(
                        {
                            "policy": policy,
                            "load_s": r.get("wall_s"),
                            "error": r.get("error"),
                            "private_after": r.get("anon_after"),
                            "file_backed_after": r.get("file_after"),
                            "holdings": r.get("holdings"),
                            **({"forward": r["forward"]} if "forward" in r else {}),
                        }
                    )

        for n_item, item in enumerate(presets):
            if n_item == 1:
                forward()  # right after the first preset: it ranks before the other presets' rows
            # PRESET or PRESET:TEMPS:ROUTES (e.g. scaled-mm:warm:http) to measure less of a preset.
            policy, _, rest = item.partition(":")
            temps, _, routes = rest.partition(":")
            temps = set(temps.split("+")) if temps else {"cold", "warm"}
            routes = set(routes.split("+")) if routes else {"core", "http"}
            for cold in (True, False):
                if ("cold" if cold else "warm") not in temps or late(f"{policy} {'cold' if cold else 'warm'}"):
                    continue
                # Reference reads at this temperature just before and just after the loads they are
                # compared with (cold: every load drops the file's pages first, as the reads do;
                # warm: each load and each reference read follows a raw read, see settle()).
                settle(cold)
                ref, loads = read(cold), []
                if "core" not in skip and "core" in routes:
                    r = worker(kind="core", policy=policy, cold=cold)
                    last["op"] = "load"
                    loads.append(("core (quant.stream)", r))
                if "http" not in skip and "http" in routes:
                    settle(cold)
                    r = run_http(path, policy, cold, guard)
                    last["op"] = "load"
                    # The private bytes the load must take are decided by the plan (header +
                    # policy + weight dtype): the core's run of the same preset has the estimate
                    # for the host's weight dtype (bf16, as on a --bf16-unet host).
                    core_run = next(
                        (x for x in out["runs"] if x.get("kind") == "core" and x.get("policy") == policy), None
                    )
                    if core_run and core_run.get("converted_bytes"):
                        r["converted_bytes"] = {"total": core_run["converted_bytes"]["host_bf16"]}
                    out["runs"].append(dict(r))
                    _say(r)
                    loads.append(("node over HTTP (--bf16-unet)", r))
                if loads:
                    settle(cold)
                    ref_after = read(cold)
                    out["rows"] += [_load_row(route, r, ref, ref_after) for route, r in loads]
        if len(presets) < 2:
            forward()
        # bf16: 2 bytes per weight (44 GB at full size) cannot fit; what happens to it is the row.
        if "bf16" not in skip and not late("bf16"):
            bf = {}
            if "core" not in skip:
                bf["core"] = worker(kind="core", policy="bf16", cold=False)
            if "http" not in skip:
                r = run_http(path, "bf16", False, guard)
                out["runs"].append(dict(r))
                _say(r)
                bf["http"] = r
            out["bf16"] = {k: _bf16_outcome(v) for k, v in bf.items()}
        if "host" not in skip and not late("the host's own loader"):
            out["host_loader"] = host_loader(path, guard, worker)
        out["loadavg_end"] = list(os.getloadavg())
        out["mem_available_end"] = mem_available()
    out["elapsed_s"] = time.perf_counter() - t0
    out["targets"] = targets(out)
    return out


def host_loader(path: str, guard: Guard, worker) -> dict:
    copy = os.path.join(os.path.dirname(path), "comfy-native-" + os.path.basename(path))
    res: dict = {"copy": os.path.basename(copy)}
    free = os.statvfs(os.path.dirname(path))
    if free.f_bavail * free.f_frsize < os.path.getsize(path) + 5e9:
        res["error"] = f"not measured: less than the file's size + 5 GB free in {os.path.dirname(path)} for the copy"
        return res
    try:
        res["copy_made"] = write_native_copy(path, copy)
        log(f"full size: ComfyUI-format copy written ({res['copy_made']['seconds']:.0f} s)")
        ref = worker(kind="raw-read", cold=True, file=copy)
        r = worker(kind="host", cold=True, file=copy)
        res["row"] = _load_row("host comfy.sd.load_diffusion_model (ComfyUI-format copy)", r, ref)
        res["result"] = r.get("error") or f"loaded in {r['wall_s']:.1f} s"
        res["bytes_by_dtype"] = r.get("bytes_by_dtype")
    except (OSError, subprocess.SubprocessError) as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if os.path.exists(copy):
            os.unlink(copy)
            res["copy_deleted"] = True
    return res


def _bf16_outcome(r: dict) -> dict:
    err = r.get("error")
    peak = max(r.get("anon_peak") or 0, r.get("watch_peak_anon") or 0)
    before = r.get("anon_before") or 0
    grew = peak - before
    refused = bool(err) and not r.get("watchdog") and grew < 1.0e9
    return {
        "outcome": "refused before loading"
        if refused
        else ("stopped by the watchdog" if r.get("watchdog") else "error" if err else "loaded"),
        "message": err,
        "seconds": r.get("refused_at_s") or r.get("wall_s") or r.get("process_wall_s"),
        "private_growth_bytes": grew,
    }


def targets(fs: dict) -> list[dict]:
    rows = [r for r in fs.get("rows", []) if r["route"].startswith("node")]
    out = []
    for policy in sorted({r["policy"] for r in rows}):
        mine = [r for r in rows if r["policy"] == policy]
        loaded = all(r["error"] is None for r in mine)
        out.append(
            {
                "target": f"full size loads into the host's model through the node ({policy})",
                "status": "met" if loaded else "not met",
                "measured": "; ".join(f"{r['temperature']}: {r['error'] or 'loaded'}" for r in mine),
            }
        )
        priv = [r for r in mine if r.get("private_target_met") is not None]
        if priv:
            out.append(
                {
                    "target": f"private memory after the load <= 1.5 GB + converted tensors ({policy})",
                    "status": "met" if all(r["private_target_met"] for r in priv) else "not met",
                    "measured": "; ".join(
                        f"{r['temperature']}: +{r['private_after_increase'] / 1e9:.2f} GB "
                        f"(bound {r['private_target_bytes'] / 1e9:.2f} GB)"
                        for r in priv
                    ),
                }
            )
        tm = [r for r in mine if r.get("time_vs_read") is not None]
        if tm:
            out.append(
                {
                    "target": f"load time <= {TIME_TARGET}x the raw read, cold and warm ({policy})",
                    "status": "met" if all(r["time_target_met"] for r in tm) else "not met",
                    "measured": "; ".join(f"{r['temperature']}: {r['time_vs_read']:.2f}x" for r in tm),
                }
            )
    bf = (fs.get("bf16") or {}).get("http")
    if bf:
        out.append(
            {
                "target": "bf16 at full size refused before loading, saying what would fit",
                "status": "met" if bf["outcome"] == "refused before loading" else "not met",
                "measured": f"{bf['outcome']}: {(bf['message'] or '')[:200]}",
            }
        )
    return out


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _say(r: dict) -> None:
    what = f"{r.get('kind')} {r.get('policy') or ''} {'cold' if r.get('cold') else 'warm'}"
    if r.get("error"):
        log(f"full size: {what}: {r['error'][:300]}")
        return
    s = r.get("load_s") or r.get("wall_s")
    priv = r.get("anon_after")
    log(
        f"full size: {what}: {s:.1f} s, private after {(priv or 0) / GIB:.2f} GiB, "
        f"file-backed after {(r.get('file_after') or 0) / GIB:.2f} GiB"
    )


def main(argv: list[str]) -> int:
    from .common import emit

    emit(run(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
