"""One copy of each module in a test process (tools/host_inprocess.py, tests/conftest.py).

The core a test imports as `quant`, the core tools/ltx2_fixture.py writes files with, and the core
the bridge reaches through `from ..quant ...` are the same module objects: an error class raised on
one side of the seam is the class caught on the other, a layer built by the bridge is an instance of
the class a test checks against.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import types

import pytest

import quant
import quant.errors
import quant.fp8
import quant.layer
from tools import ltx2_fixture
from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON, PACKAGE, REPO, import_pack, register_pack


def core_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(quant.__path__) if not m.name.startswith("_")]


def test_quant_is_the_packs_quant():
    pack = sys.modules[PACKAGE]
    assert register_pack() is pack  # idempotent: conftest registered it already
    assert quant is pack.quant and quant.__name__ == f"{PACKAGE}.quant"
    names = core_modules()
    assert {"errors", "fp8", "layer", "safetensors_header"} <= set(names)
    for name in names:
        top = importlib.import_module(f"quant.{name}")
        assert top is importlib.import_module(f"{PACKAGE}.quant.{name}"), name
        assert top.__spec__.name == top.__name__ == f"{PACKAGE}.quant.{name}"  # its own spec, not the alias
    assert not [m for m in sys.modules if m.startswith("quant.") and sys.modules[m].__name__ != f"{PACKAGE}.{m}"]


def test_fixture_writer_uses_the_same_core():
    assert ltx2_fixture.quantize is quant.fp8.quantize and ltx2_fixture.FP8 is quant.fp8.FP8


def test_a_missing_core_module_is_reported_under_the_name_asked_for():
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'quant\.no_such_module'"):
        importlib.import_module("quant.no_such_module")


def test_registering_after_a_separate_quant_import_is_refused():
    """In a fresh interpreter: `quant` imported on its own first, then register_pack() must refuse
    (the bridge would otherwise get a second copy) rather than alias half the modules."""
    code = "import quant.fp8\nfrom tools.host_inprocess import register_pack\nregister_pack()\n"
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "RuntimeError: `quant` already imported on its own" in p.stderr and "twice" in p.stderr, p.stderr[-2000:]


@pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON)
def test_the_bridge_uses_the_classes_the_tests_import():
    pack = import_pack()
    assert pack is sys.modules[PACKAGE]
    assert pack.bridge.host_model.CheckpointError is quant.errors.CheckpointError
    assert pack.bridge.host_linear.QuantLayer is quant.layer.QuantLayer
    # Every core class and function a bridge module holds is the object `quant.<mod>` gives a test.
    seen = 0
    for info in pkgutil.iter_modules(pack.bridge.__path__):
        mod = importlib.import_module(f"{PACKAGE}.bridge.{info.name}")
        for obj in vars(mod).values():
            owner = getattr(obj, "__module__", None)
            if isinstance(obj, (type, types.FunctionType)) and owner and owner.startswith(f"{PACKAGE}.quant."):
                top = importlib.import_module(owner[len(PACKAGE) + 1 :])
                assert getattr(top, obj.__qualname__) is obj, (info.name, owner, obj.__qualname__)
                seen += 1
    assert seen >= 10, seen
