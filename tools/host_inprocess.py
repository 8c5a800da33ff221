"""The one way a test or bench process imports this pack (and, for host-level checks, the pinned
ComfyUI host) in-process. A server is another matter: tools/host_launcher.py starts that.

One copy of each module. The host imports the repo directory as a package (named after the custom
node folder) and bridge/ reaches the core through relative imports (`from ..quant.fp8 import ...`),
while `python -m quant`, tools/ltx2_fixture.py and the pure-core tests name the core `quant`. Loaded
both ways in one process, every core module would exist twice: two `CheckpointError` classes (an
`except` on one misses the other), two `QuantLayer`s (an `isinstance` across the seam fails). So:

- `register_pack()` registers the repo root as package PACKAGE, as the host would (its __init__ is
  not run: it registers the nodes with a running host), and makes `quant` and every `quant.<mod>`
  other names of the module objects `PACKAGE.quant` and `PACKAGE.quant.<mod>` (a meta path finder
  hands out the pack's module; nothing is loaded twice). tests/conftest.py and bench/__init__.py
  call it before anything imports `quant`; it refuses to run after a separate `quant` was loaded.
- `import_host()` puts the host directory first on `sys.path`, makes PyPI's CUDA torchvision
  importable on CPU torch (tools/host_launcher.prepare_torchvision), keeps the host's CLI parser away
  from the caller's arguments, selects `--cpu` when torch has no CUDA (without it
  model_management asks CUDA for a device), and imports `comfy` with the LTX model code.
- `import_pack()` = both, then every module of the pack's quant/ and bridge/ imported, so that
  `pack.bridge.host_model` and `pack.quant.<mod>` are plain attribute reads.

Outside tests and bench nothing changes: the real host loads the pack under its folder name with
no top-level `quant` at all, and `python -m quant` from the repo root loads the core alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import pkgutil
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIR = os.path.abspath(os.environ.get("COMFYUI_DIR", os.path.join(REPO, ".host", "ComfyUI")))
HOST_AVAILABLE = os.path.isfile(os.path.join(HOST_DIR, "comfy", "model_detection.py"))
HOST_SKIP_REASON = f"ComfyUI host not installed at {HOST_DIR} (run tools/bootstrap.sh, or set COMFYUI_DIR)"
# The package name of the repo in test and bench processes (the host uses its folder's name).
PACKAGE = "comfyui_ltx_fp8"
# Subpackages also importable top-level (`python -m quant`): aliased to the pack's copy.
ALIASED = ("quant",)
# Subpackages import_pack() imports module by module (nodes/ needs a running host's registry).
PACK_SUBPACKAGES = ("quant", "bridge")


class _PackAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`quant[.mod]` -> the module object `PACKAGE.quant[.mod]` (importing it on first use)."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".", 1)[0] not in ALIASED:
            return None
        real = importlib.util.find_spec(f"{self.package}.{fullname}")
        if real is None:
            return None  # no such module: the ordinary finders say so under the name asked for
        return importlib.machinery.ModuleSpec(fullname, self, is_package=real.submodule_search_locations is not None)

    def create_module(self, spec):
        module = importlib.import_module(f"{self.package}.{spec.name}")
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import system has just set the alias spec on the module: give it its own back, so
        # that its __spec__.name stays its __name__ (importlib.reload, pickling by name).
        module.__spec__ = module.__spec__.loader_state


def register_pack(name: str = PACKAGE) -> types.ModuleType:
    """The repo as package `name` with `quant` aliased to `name.quant` (cheap: no module is imported
    here; the host is not needed). Idempotent."""
    if name not in sys.modules:
        stray = sorted(m for m in sys.modules if m.split(".", 1)[0] in ALIASED)
        if stray:
            raise RuntimeError(
                f"`quant` already imported on its own ({len(stray)} modules, {stray[0]} first); "
                f"register_pack() must run before anything imports it (tests/conftest.py, "
                f"bench/__init__.py), or each core module would exist twice"
            )
        mod = types.ModuleType(name)
        mod.__path__ = [REPO]
        mod.__file__ = os.path.join(REPO, "__init__.py")
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__spec__.submodule_search_locations = [REPO]
        sys.modules[name] = mod
    if not any(isinstance(f, _PackAlias) and f.package == name for f in sys.meta_path):
        if any(isinstance(f, _PackAlias) for f in sys.meta_path):
            raise RuntimeError(f"the pack is already registered under another name than {name!r}")
        sys.meta_path.insert(0, _PackAlias(name))
    return sys.modules[name]


def import_host() -> types.ModuleType:
    """The host's `comfy` package, imported once from HOST_DIR."""
    if "comfy.ldm.lightricks.av_model" in sys.modules:
        return sys.modules["comfy"]
    if not HOST_AVAILABLE:
        raise RuntimeError(HOST_SKIP_REASON)
    for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(k, v)
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


def import_pack() -> types.ModuleType:
    """The host, then the repo as package PACKAGE with every module of its quant/ and bridge/."""
    import_host()
    pack = register_pack()
    for sub in PACK_SUBPACKAGES:
        importlib.import_module(f"{PACKAGE}.{sub}")
        for info in pkgutil.iter_modules([os.path.join(REPO, sub)]):
            if not info.name.startswith("_"):  # __main__: the CLI, run by `python -m quant` only
                importlib.import_module(f"{PACKAGE}.{sub}.{info.name}")
    return pack
