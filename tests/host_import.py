"""Import the pinned ComfyUI host (`.host/ComfyUI`) inside a test process.

Usage (in a test module)::

    from tests.host_import import import_host, HOST_AVAILABLE, HOST_SKIP_REASON
    pytestmark = pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON)
    ...
    comfy = import_host()          # the `comfy` package, with the host dir on sys.path
    from comfy.ldm.lightricks.av_model import LTXAVModel

`import_host()` puts the host directory first on `sys.path`, selects `--cpu` when torch has no
CUDA (as `main.py --cpu` would; the CLI itself is not parsed), makes `import torchvision` work with
the venv's CPU torch (the PyPI torchvision wheel is a CUDA build whose native ops do not load: the
schemas of `torchvision::nms` / `torchvision::qnms` are defined before torchvision's first import,
see `tools/host_launcher.py`), and imports `comfy`. Calling it again is cheap.

The host lives at `<repo>/.host/ComfyUI` unless the environment variable COMFYUI_DIR names
another ComfyUI tree. HOST_AVAILABLE is False (and HOST_SKIP_REASON says why) only when that tree
is absent; a host that is present but fails to import is a test failure, not a skip.
"""
from __future__ import annotations

import importlib
import os
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIR = os.path.abspath(os.environ.get("COMFYUI_DIR", os.path.join(REPO, ".host", "ComfyUI")))
HOST_AVAILABLE = os.path.isfile(os.path.join(HOST_DIR, "comfy", "model_detection.py"))
HOST_SKIP_REASON = (
    f"ComfyUI host not installed at {HOST_DIR} (run tools/bootstrap.sh, or set COMFYUI_DIR)"
)

# Exact schemas of torchvision's csrc/ops/nms.cpp (TORCH_LIBRARY_FRAGMENT(torchvision, m)).
TORCHVISION_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def prepare_torchvision() -> str:
    """Make `import torchvision` work with the venv's torch; returns what was done."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    try:
        from tools.host_launcher import prepare_torchvision as _prepare  # the launcher's own shim
    except ImportError:
        _prepare = None
    if _prepare is not None:
        return _prepare()
    # Fallback (same logic), if the launcher is not importable.
    if "torchvision" in sys.modules:
        return "torchvision already imported"
    import torch

    defined = []
    for qualname, schema in TORCHVISION_SCHEMAS.items():
        ns, name = qualname.split("::")
        if not hasattr(getattr(torch.ops, ns), name):
            try:
                torch.library.define(qualname, schema)
                defined.append(qualname)
            except RuntimeError:
                pass
    return "defined schemas: " + (", ".join(defined) or "none needed")


_HOST: types.ModuleType | None = None


def import_host() -> types.ModuleType:
    """Return the host's `comfy` package, importing it (once) from HOST_DIR."""
    global _HOST
    if _HOST is not None:
        return _HOST
    if not HOST_AVAILABLE:
        raise RuntimeError(HOST_SKIP_REASON)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    prepare_torchvision()
    if HOST_DIR not in sys.path:
        sys.path.insert(0, HOST_DIR)
    # ComfyUI parses its CLI at import (comfy.cli_args); keep pytest's arguments away from it.
    saved_argv = sys.argv
    sys.argv = [sys.argv[0] if sys.argv else "pytest"]
    try:
        import torch
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        if not torch.cuda.is_available():
            # What `main.py --cpu` does; without it model_management asks CUDA for a device.
            comfy.cli_args.args.cpu = True
        _HOST = importlib.import_module("comfy")
        importlib.import_module("comfy.model_detection")
        importlib.import_module("comfy.ldm.lightricks.av_model")
    finally:
        sys.argv = saved_argv
    return _HOST
