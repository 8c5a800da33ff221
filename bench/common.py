"""Shared pieces: machine facts, RSS probes and sampler, warm-up reads, worker subprocesses.

Imports no torch at module level: the orchestrator stays small, so the workers it starts are
measured from a clean slate (each load runs in a fresh `python -m bench.worker`; peak RSS is that
process's own `VmHWM`, with `ru_maxrss` beside it).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
PAGE = os.sysconf("SC_PAGE_SIZE")
RESULT_MARK = "@@BENCH-RESULT@@ "
NOT_MEASURED_GPU = "not measured (no GPU in this session)"


# -- memory probes ----------------------------------------------------------------------------------


def rss_now() -> int:
    """Current resident set size of this process, bytes (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmHWM (peak RSS of the process image), VmRSS, RssAnon (private), RssFile (file-backed),
    RssShmem of a process (this one by default), in bytes; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return out


def ru_maxrss() -> int:
    """`getrusage(RUSAGE_SELF).ru_maxrss` in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """A thread reading /proc/self/statm every `interval` seconds: (t, rss) pairs and the max seen."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self):
        fd = os.open("/proc/self/statm", os.O_RDONLY)
        try:
            while not self._stop.is_set():
                raw = os.pread(fd, 128, 0)
                self.samples.append((time.perf_counter() - self._t0, int(raw.split()[1]) * PAGE))
                self._stop.wait(self.interval)
        finally:
            os.close(fd)

    def stop(self) -> RssSampler:
        self._stop.set()
        self._thread.join()
        return self

    def mark(self) -> float:
        return time.perf_counter() - self._t0

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)

    def series(self, max_points: int = 400) -> list[list[float]]:
        """Downsampled [[t_s, rss_bytes], ...], keeping each bucket's maximum (peaks survive)."""
        s = self.samples
        if len(s) <= max_points:
            return [[round(t, 4), r] for t, r in s]
        step = len(s) / max_points
        out = []
        for i in range(max_points):
            chunk = s[int(i * step) : int((i + 1) * step)] or [s[-1]]
            t, r = max(chunk, key=lambda p: p[1])
            out.append([round(t, 4), r])
        return out


# -- files ----------------------------------------------------------------------------------------


def warm_read(path: str, bufsize: int = 64 << 20) -> dict:
    """Read the whole file once into a reused buffer, so every timed load starts from a warm page
    cache (all runs warm: fair, and what a second load in a session sees)."""
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    n = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(mv)
            if not k:
                break
            n += k
    return {"bytes": n, "seconds": time.perf_counter() - t}


# -- machine ---------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def host_version() -> str | None:
    path = os.path.join(os.environ.get("COMFYUI_DIR", os.path.join(REPO, ".host", "ComfyUI")), "comfyui_version.py")
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        return None
    return None


def host_available() -> bool:
    d = os.environ.get("COMFYUI_DIR", os.path.join(REPO, ".host", "ComfyUI"))
    return os.path.isfile(os.path.join(d, "comfy", "model_detection.py"))


def _git_head() -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Facts about this machine and the software measured; torch facts come from a worker."""
    torch_facts = run_worker({"kind": "torch-info"}, timeout=120)
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "mem_total_bytes": _mem_total(),
        "loadavg_start": list(os.getloadavg()),
        "host": "ComfyUI " + (host_version() or "not installed"),
        "pack_commit": _git_head(),
        **torch_facts,
    }


# -- subprocess workers ------------------------------------------------------------------------------


def emit(result: dict) -> None:
    """A worker's last word: one marked JSON line on stdout (logs may surround it)."""
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_kind(argv: list[str], kinds: dict) -> int:
    """A worker process's entry: argv[0] is the JSON spec; runs `kinds[spec["kind"]]` and emits its
    result."""
    spec = json.loads(argv[0])
    import torch  # every kind starts from the same baseline: torch imported, nothing loaded

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    emit(kinds[spec["kind"]](spec))
    return 0


def run_module(module: str, spec: dict, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run `python -m <module> '<spec json>'` from the repo root in a fresh process and return its
    marked JSON result; failures come back as {"error": ...} (a row then says so, never a number)."""
    e = dict(os.environ)
    e.setdefault("PYTHONHASHSEED", "0")
    e["PYTHONPATH"] = REPO + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    if env:
        e.update(env)
    t = time.perf_counter()
    try:
        p = subprocess.run(
            [PY, "-m", module, json.dumps(spec)], cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "spec": spec}
    wall = time.perf_counter() - t
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            out = json.loads(line[len(RESULT_MARK) :])
            out.setdefault("process_wall_s", wall)
            return out
    tail = (p.stderr or p.stdout or "")[-3000:]
    return {
        "error": f"exit {p.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else 'no output'}",
        "stderr_tail": tail,
        "spec": spec,
    }


def run_worker(spec: dict, timeout: float = 1800) -> dict:
    return run_module("bench.worker", spec, timeout)


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def mem_available() -> int:
    """The system's MemAvailable, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_pages(path: str) -> None:
    """Drop the file's clean pages from the page cache (pages mapped by a live process stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
