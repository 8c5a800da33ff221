"""The host and this pack in a bench process: see tools/host_inprocess.py."""

from __future__ import annotations

import sys

from .common import REPO

if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.host_inprocess import HOST_DIR, import_host  # noqa: E402,F401
from tools.host_inprocess import import_pack as _import_pack  # noqa: E402

PACKAGE = "comfyui_ltx_fp8_bench"


def import_pack():
    return _import_pack(PACKAGE)
