#!/usr/bin/env python
"""Start the pinned ComfyUI host (`.host/ComfyUI/main.py`) with this venv's CPU torch.

Usage: .venv/bin/python tools/host_launcher.py [main.py arguments...]

PyPI's Linux torchvision wheel is a CUDA build. Against the CPU build of torch its native library
(`torchvision/_C.so`) does not load, and `import torchvision` then dies in
`torchvision/_meta_registrations.py` with "operator torchvision::nms does not exist" (it registers
fake kernels for ops that the missing library would have defined). ComfyUI imports torchvision at
start-up but its LTX paths use only the pure-Python parts. So, before torchvision is first
imported, this launcher defines the schemas of the two ops that the registrations need (the exact
strings of torchvision's csrc/ops/nms.cpp), and then runs main.py as `python main.py` would.

Where torchvision's native library does load (a matching CUDA torch, e.g. on a GPU machine),
nothing is defined and the real ops are used.

The host directory is `<repo>/.host/ComfyUI` unless COMFYUI_DIR names another one.

Device: LTXFP8_HOST_DEVICE=auto (default) adds `--cpu` unless torch is a CUDA/ROCm build and an
NVIDIA/AMD device node exists (ComfyUI does not fall back to the CPU by itself); `cpu` always adds
it, `gpu` never does. Decided without importing torch (ComfyUI must set its environment first).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HOST = os.path.join(REPO, ".host", "ComfyUI")

# Schemas as torchvision 0.2x declares them (csrc/ops/nms.cpp, TORCH_LIBRARY_FRAGMENT(torchvision)).
TORCHVISION_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _op_exists(qualname: str) -> bool:
    import torch

    ns, name = qualname.split("::")
    try:
        return torch._C._dispatch_has_kernel(qualname) or hasattr(getattr(torch.ops, ns), name)
    except Exception:
        return False


def prepare_torchvision() -> str:
    """Make `import torchvision` work with this torch. Returns what was done, for the log."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "torchvision not installed"
    import torch

    # First try torchvision's own native library, exactly as torchvision.extension would.
    for base in spec.submodule_search_locations:
        for fname in sorted(os.listdir(base)):
            if fname.startswith("_C.") and fname.endswith((".so", ".pyd", ".dylib")):
                try:
                    torch.ops.load_library(os.path.join(base, fname))
                    return "torchvision native ops loaded"
                except (OSError, ImportError, RuntimeError):
                    pass
    defined = []
    for qualname, schema in TORCHVISION_SCHEMAS.items():
        if not _op_exists(qualname):
            torch.library.define(qualname, schema)
            defined.append(qualname)
    return "torchvision native ops unavailable (CUDA wheel on CPU torch?); defined schemas: " + (
        ", ".join(defined) or "none needed"
    )


class _TorchvisionHook:
    """A meta-path finder that runs prepare_torchvision() just before torchvision's first import.

    Deferring it keeps torch unimported until main.py has set its environment (ComfyUI warns
    "Torch already imported" otherwise, and on CUDA it must set the allocator before torch loads).
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        note = prepare_torchvision()
        print(f"[host_launcher] {note}", file=sys.stderr, flush=True)
        return None  # let the normal finders import it


def install_torchvision_hook() -> None:
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())


def _torch_gpu_build() -> bool:
    """Whether the installed torch is a CUDA or ROCm build, read from torch/version.py unimported."""
    spec = importlib.util.find_spec("torch")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(base, "version.py")
        if os.path.isfile(path):
            text = open(path, encoding="utf-8").read()
            for line in text.splitlines():
                key = line.split(":")[0].split("=")[0].strip()
                if key in ("cuda", "hip") and "None" not in line.split("=", 1)[-1]:
                    return True
            return False
    return False


def _gpu_present() -> bool:
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def wants_cpu_flag(argv: list[str]) -> bool:
    if "--cpu" in argv:
        return False
    mode = os.environ.get("LTXFP8_HOST_DEVICE", "auto").strip().lower()
    if mode == "cpu":
        return True
    if mode == "gpu":
        return False
    return not (_torch_gpu_build() and _gpu_present())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    host = os.path.abspath(os.environ.get("COMFYUI_DIR", DEFAULT_HOST))
    main_py = os.path.join(host, "main.py")
    if not os.path.isfile(main_py):
        sys.exit(f"host_launcher: no ComfyUI at {host} (run `make setup` or tools/bootstrap.sh)")

    # No network here (and none wanted): keep hub clients and telemetry quiet.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")

    install_torchvision_hook()
    if wants_cpu_flag(argv):
        argv.insert(0, "--cpu")
    print(f"[host_launcher] ComfyUI {host}; main.py {' '.join(argv)}", file=sys.stderr, flush=True)

    # What `python main.py ARGS` sets up: argv[0] is the script, sys.path[0] is its directory.
    sys.argv = [main_py, *argv]
    if sys.path and sys.path[0] in ("", os.path.dirname(os.path.abspath(__file__))):
        sys.path[0] = host
    else:
        sys.path.insert(0, host)
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
