"""This repo as the package the host would load, in a test process: see tools/host_inprocess.py.

pack = import_pack()
pack.bridge.host_model.build_model_patcher(...)
"""

from __future__ import annotations

from host_import import import_host  # noqa: F401  (puts the repo on sys.path)

from tools.host_inprocess import import_pack as _import_pack

PACKAGE = "comfyui_ltx_fp8_under_test"


def import_pack():
    return _import_pack(PACKAGE)
