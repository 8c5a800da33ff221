"""Import this repo as the package the host would load (relative imports need a parent package).

    pack = import_pack()                      # after tests.host_import.import_host()
    pack.bridge.host_model.build_model_patcher(...)
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

from host_import import REPO, import_host

PACKAGE = "comfyui_ltx_fp8_under_test"


def import_pack():
    import_host()
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, f"{REPO}/__init__.py",
                                                      submodule_search_locations=[REPO])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    for sub in ("quant", "quant.loader", "quant.policy", "quant.device", "bridge", "bridge.host_model",
                "bridge.apply_policy", "bridge.vram", "bridge.model_view"):
        importlib.import_module(f"{PACKAGE}.{sub}")
    return sys.modules[PACKAGE]
