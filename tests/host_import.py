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

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.host_inprocess import HOST_AVAILABLE, HOST_DIR, HOST_SKIP_REASON, import_host  # noqa: E402,F401
from tools.host_launcher import prepare_torchvision  # noqa: E402,F401
