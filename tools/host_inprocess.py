"""Import the pinned ComfyUI host, and this repo as the package the host would load, inside a
test or bench process (not a server: tools/host_launcher.py starts that).

`import_host()` puts the host directory first on `sys.path`, makes PyPI's CUDA torchvision
importable on CPU torch (tools/host_launcher.prepare_torchvision), keeps the host's CLI parser
away from the caller's arguments, selects `--cpu` when torch has no CUDA (without it
model_management asks CUDA for a device), and imports `comfy` with the LTX model code.
`import_pack(name)` registers the repo root as package `name` (bridge/ needs a parent package for
its relative imports) without running its __init__ (which registers nodes with the host).
"""

from __future__ import annotations

import importlib
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIR = os.path.abspath(os.environ.get("COMFYUI_DIR", os.path.join(REPO, ".host", "ComfyUI")))
HOST_AVAILABLE = os.path.isfile(os.path.join(HOST_DIR, "comfy", "model_detection.py"))
HOST_SKIP_REASON = f"ComfyUI host not installed at {HOST_DIR} (run tools/bootstrap.sh, or set COMFYUI_DIR)"
PACK_SUBMODULES = (
    "quant",
    "quant.plan",
    "quant.stream",
    "quant.policy",
    "quant.device",
    "bridge",
    "bridge.host_model",
    "bridge.apply_policy",
    "bridge.vram",
    "bridge.model_view",
    "bridge.errors",
)


def import_host() -> types.ModuleType:
    """The host's `comfy` package, imported once from HOST_DIR."""
    if "comfy.ldm.lightricks.av_model" in sys.modules:
        return sys.modules["comfy"]
    if not HOST_AVAILABLE:
        raise RuntimeError(HOST_SKIP_REASON)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(k, v)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from tools.host_launcher import prepare_torchvision

    prepare_torchvision()
    if HOST_DIR not in sys.path:
        sys.path.insert(0, HOST_DIR)
    saved_argv = sys.argv
    sys.argv = [sys.argv[0] if sys.argv else "python"]  # comfy.cli_args parses at import
    try:
        import comfy.options
        import torch

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
        for mod in ("comfy", "comfy.model_detection", "comfy.sd", "comfy.ldm.lightricks.av_model"):
            importlib.import_module(mod)
    finally:
        sys.argv = saved_argv
    return sys.modules["comfy"]


def import_pack(name: str = "comfyui_ltx_fp8_inprocess") -> types.ModuleType:
    """The repo as package `name` (after the host); its submodules imported."""
    import_host()
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__path__ = [REPO]
        mod.__file__ = os.path.join(REPO, "__init__.py")
        sys.modules[name] = mod
    for sub in PACK_SUBMODULES:
        importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]
