"""Drive the real ComfyUI host (the pinned `.host/ComfyUI`) with this pack, over its HTTP API.

    with Host() as host:                      # temp base dir, free loopback port, headless
        (host.models_dir / "checkpoints" / "x.safetensors").write_bytes(...)
        entry = host.run_prompt({"1": {"class_type": ..., "inputs": {...}}})
        assert entry["status"]["status_str"] == "success"

The host runs in its own process (tools/host_launcher.py, which makes PyPI's CUDA torchvision
importable on CPU torch), started with
`[--cpu] --listen 127.0.0.1 --port N --disable-auto-launch --base-directory DIR
--database-url sqlite:///:memory:` plus `extra_args`. Its base directory holds `custom_nodes/`
with a symlink to this repo (the pack, as `comfyui-ltx-fp8`) and to any extra node packs, and
`models/<kind>/` folders that tests fill. stdout+stderr go to a log file (`log_text()`).
`--cpu` is added unless torch is a CUDA/ROCm build and a GPU is present (device="auto", the
default; LTXFP8_HOST_DEVICE or device="cpu"/"gpu" force it), so CPU-only machines (CI) always run
`--cpu` and a GPU machine exercises the real CUDA paths.

Only the standard library is used here, so the module also works from a plain python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-ltx-fp8"
LAUNCHER = REPO / "tools" / "host_launcher.py"
HOST_DIR = REPO / ".host" / "ComfyUI"
MODEL_KINDS = ("checkpoints", "diffusion_models", "loras", "vae", "text_encoders", "latent_upscale_models")
DEFAULT_STARTUP_TIMEOUT = float(os.environ.get("LTXFP8_HOST_STARTUP_TIMEOUT", "120"))
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class HostError(RuntimeError):
    """The host failed to start, died, refused a prompt or a prompt failed (message has details)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_python() -> str:
    """The interpreter with torch and the host's requirements: LTXFP8_HOST_PYTHON, else .venv."""
    env = os.environ.get("LTXFP8_HOST_PYTHON")
    if env:
        return env
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class Host:
    """A headless ComfyUI with this pack. Context manager; `start()` / `stop()` also work.

    base_dir: use (and keep) this directory; default a fresh temp dir removed on stop().
    extra_custom_nodes: more node packs, paths (linked by their basename) or (name, path) pairs.
    extra_args: more main.py arguments. port: default a free loopback port.
    log_path: where stdout+stderr go; default `<base_dir>/host.log`.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        extra_custom_nodes: Iterable[str | os.PathLike | tuple[str, str | os.PathLike]] = (),
        extra_args: Iterable[str] = (),
        port: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        log_path: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        with_pack: bool = True,
        device: str | None = None,
    ):
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="ltxfp8-host-"))
        self.extra_custom_nodes = list(extra_custom_nodes)
        self.extra_args = list(extra_args)
        self._fixed_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self.base_dir / "host.log"
        self.env = dict(env or {})
        self.with_pack = with_pack
        # "auto" (default): --cpu unless a CUDA/ROCm torch and a GPU are there; "cpu"; "gpu".
        self.device = (device or os.environ.get("LTXFP8_HOST_DEVICE") or "auto").lower()
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # ----- layout -----------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def rss(self) -> int:
        """Resident memory of the host process now, in bytes (psutil, from the venv)."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def model_dir(self, kind: str) -> Path:
        d = self.models_dir / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _link(self, name: str, target: Path) -> None:
        link = self.custom_nodes_dir / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                return
            if link.is_symlink() or link.is_file():
                link.unlink()
            else:
                raise HostError(f"{link} exists and is not a link; refusing to replace it")
        link.symlink_to(target, target_is_directory=target.is_dir())

    def prepare(self) -> None:
        """Create the base directory layout (idempotent)."""
        self.custom_nodes_dir.mkdir(parents=True, exist_ok=True)
        for kind in MODEL_KINDS:
            self.model_dir(kind)
        for sub in ("input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(exist_ok=True)
        if self.with_pack:
            self._link(PACK_NAME, REPO)
        for item in self.extra_custom_nodes:
            name, path = item if isinstance(item, tuple) else (Path(item).name, item)
            self._link(name, Path(path).resolve())

    def command(self) -> list[str]:
        return [
            host_python(),
            str(LAUNCHER),
            *(["--cpu"] if self.device == "cpu" else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--base-directory",
            str(self.base_dir),
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]

    # ----- life cycle ---------------------------------------------------------------------------
    def start(self) -> Host:
        if self.proc is not None:
            raise HostError("host already started")
        if not (HOST_DIR / "main.py").is_file():
            raise HostError(f"no ComfyUI at {HOST_DIR}: run `make setup` (tools/bootstrap.sh)")
        self.prepare()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            self.port = self._fixed_port or free_port()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except HostError as e:
                in_use = "address already in use" in self.log_text().lower()
                self._kill()
                if not in_use or attempt == attempts - 1:
                    raise e
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_offset = self.log_path.stat().st_size
        env = dict(os.environ)
        env.update(
            {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "LTXFP8_HOST_DEVICE": self.device}
        )
        env.update(self.env)
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=str(REPO),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        deadline = self._t0 + self.startup_timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise HostError(f"host exited with code {rc} during start-up\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.monotonic() - self._t0
                        return
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise HostError(
                    f"host not answering /system_stats after {self.startup_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        self.proc = None
        if self._log_file:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate (then kill) the host; remove the temp base dir if this object made it."""
        self._kill()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Host:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- log --------------------------------------------------------------------------------
    def log_text(self, raw: bool = False) -> str:
        """This run's stdout+stderr so far (ANSI colour codes stripped unless raw)."""
        try:
            data = self.log_path.read_bytes()[getattr(self, "_log_offset", 0) :]
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", "replace")
        return text if raw else strip_ansi(text)

    def log_tail(self, lines: int = 80) -> str:
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- host log tail ({self.log_path}) ---\n{tail}\n--- end of host log ---"

    # ----- HTTP -------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        """(status, decoded JSON or text or None); HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, ConnectionError) as e:
            raise HostError(f"{method} {path}: {e} (host alive: {self.alive()})\n{self.log_tail()}") from e
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", "replace")

    def get(self, path: str, timeout: float = 60) -> Any:
        status, body = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise HostError(f"GET {path} -> {status}: {body}")
        return body

    def system_stats(self) -> dict:
        return self.get("/system_stats")

    def object_info(self, cls: str | None = None) -> dict:
        """All node definitions, or `{cls: definition}` for one class (empty dict if unknown)."""
        path = "/object_info" if cls is None else "/object_info/" + urllib.parse.quote(cls, safe="")
        return self.get(path)

    def post_prompt(
        self, prompt: Mapping, client_id: str | None = None, extra: Mapping | None = None
    ) -> tuple[int, Any]:
        """Queue an API-format prompt; returns (status, json): 200 {prompt_id, number, node_errors} or 400."""
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if extra:
            body.update(extra)
        return self.request("POST", "/prompt", body)

    def history(self, prompt_id: str) -> dict | None:
        return self.get("/history/" + urllib.parse.quote(prompt_id, safe="")).get(prompt_id)

    def wait_history(self, prompt_id: str, timeout: float = 300, poll: float = 0.1) -> dict:
        """Wait until the prompt has finished (successfully or not); return its history entry."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None:  # the host writes history only when the prompt is done
                entry.setdefault("status", None)
                if entry["status"] is None:
                    entry["status"] = {"status_str": "unknown", "completed": False, "messages": []}
                return entry
            if not self.alive():
                raise HostError(f"host died while running prompt {prompt_id}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.interrupt()
                raise HostError(f"prompt {prompt_id} not done after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(poll)

    def run_prompt(self, prompt: Mapping, timeout: float = 300, check: bool = True) -> dict:
        """Queue + wait; return the history entry. check: raise HostError unless status is success.

        A prompt refused at validation (HTTP 400) raises with check, and otherwise returns
        `{"status": {"status_str": "refused", "completed": False}, "response": body, "http_status": 400}`.
        """
        status, body = self.post_prompt(prompt)
        if status != 200:
            if check:
                raise HostError(f"prompt refused ({status}): {json.dumps(body, indent=1)}")
            return {
                "status": {"status_str": "refused", "completed": False, "messages": []},
                "outputs": {},
                "response": body,
                "http_status": status,
            }
        entry = self.wait_history(body["prompt_id"], timeout=timeout)
        entry["prompt_id"] = body["prompt_id"]
        if check and entry["status"].get("status_str") != "success":
            raise HostError(f"prompt {body['prompt_id']} failed: {execution_error(entry)}\n{self.log_tail(40)}")
        return entry

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the host to unload models / free memory (applied by its prompt worker shortly after)."""
        status, body = self.request("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})
        if status != 200:
            raise HostError(f"POST /free -> {status}: {body}")

    def interrupt(self) -> None:
        try:
            self.request("POST", "/interrupt", {}, timeout=10)
        except HostError:
            pass


def execution_error(entry: Mapping) -> dict | None:
    """The `execution_error` message data of a history entry (node_id, node_type,
    exception_message, exception_type, traceback...), or None."""
    for msg in (entry.get("status") or {}).get("messages") or []:
        if isinstance(msg, (list, tuple)) and len(msg) == 2 and msg[0] == "execution_error":
            return msg[1]
    return None


def custom_node_import_lines(log: str) -> list[str]:
    """The lines of the "Import times for custom nodes:" section of a host log."""
    lines = strip_ansi(log).splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if "Import times for custom nodes" in line:
            for nxt in lines[i + 1 :]:
                if "seconds" not in nxt:
                    break
                out.append(nxt.strip())
    return out
