"""Shared fixtures.

`host`: one real ComfyUI (the pinned `.host/ComfyUI`) with this pack, started headless on a free
loopback port for the whole session (see hostlib.Host). Tests write model files into
`host.model_dir("checkpoints")` / `"diffusion_models"` / `"loras"` before queueing; use unique
file names, the host is shared. Node packs used only by tests (`tests/nodepack/`, linked as
`ltx-fp8-testnodes`, and any `tests/host_nodes/<name>/` with an `__init__.py`) are linked into
the host's custom_nodes.
`make_host(**kwargs)`: a separate host for a test that needs its own (other args, a fault...).
Tests using either fixture get the `host` marker (deselect them with `-m "not host"`).
The session host's log is kept at `test-artifacts/host.log`.

Imports: pytest puts the repo root and tests/ on sys.path (`pythonpath` in pyproject.toml), so
tests import the core as `quant`, the repo's tools as `tools`, and their helpers as `support.<module>`
(tests/support/).
`register_pack()` below runs before any test module is imported: the repo is then the package
`tools.host_inprocess.PACKAGE` and `quant` one more name of its `quant`, so the core a test imports
and the core the bridge uses are the same modules (tests/test_one_import_path.py checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import hostlib

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON, register_pack

register_pack()

TESTS = Path(__file__).resolve().parent
ARTIFACTS = hostlib.REPO / "test-artifacts"
HOST_FIXTURES = {"host", "make_host"}


def test_node_packs() -> list[tuple[str, Path]]:
    """Test-only node packs linked into every test host: tests/nodepack (as ltx-fp8-testnodes, the
    name tools/demo.py uses too) and each tests/host_nodes/<name>/ with an __init__.py."""
    packs: list[tuple[str, Path]] = []
    if (TESTS / "nodepack" / "__init__.py").is_file():
        packs.append(("ltx-fp8-testnodes", TESTS / "nodepack"))
    root = TESTS / "host_nodes"
    if root.is_dir():
        packs += [(p.name, p) for p in sorted(root.iterdir()) if (p / "__init__.py").is_file()]
    return packs


test_node_packs.__test__ = False  # not a test


def pytest_configure(config):
    config.addinivalue_line("markers", "host: needs the real ComfyUI host (started by the tests)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HOST_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def host():
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "host.log"
    if log.exists():
        log.unlink()
    h = hostlib.Host(extra_custom_nodes=test_node_packs(), log_path=log)
    h.start()
    sys.stderr.write(f"\n[host] ComfyUI up on {h.url} in {h.startup_seconds:.1f} s (log: {log})\n")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def make_host(request):
    """Factory: make_host(**Host kwargs) -> a started Host, stopped after the test."""
    started: list[hostlib.Host] = []

    def _make(**kwargs) -> hostlib.Host:
        kwargs.setdefault("extra_custom_nodes", test_node_packs())
        if "log_path" not in kwargs:
            ARTIFACTS.mkdir(exist_ok=True)
            safe = "".join(c if c.isalnum() else "_" for c in request.node.name)[:80]
            kwargs["log_path"] = ARTIFACTS / f"host-{safe}-{len(started)}.log"
            if kwargs["log_path"].exists():
                kwargs["log_path"].unlink()
        h = hostlib.Host(**kwargs)
        started.append(h)
        return h.start()

    yield _make
    for h in started:
        h.stop()


# ---- figures: counts and measurements that a report quotes ---------------------------------------
FIGURES: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def figures():
    """`figures(section, line)`: a line shown in the run's terminal summary ("figures") and kept in
    test-artifacts/figures.txt, e.g. fuzz case counts or measured RSS margins."""

    def add(section: str, line: str) -> None:
        FIGURES.append((section, line))

    return add


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("figures")
    lines = []
    for section in dict.fromkeys(s for s, _ in FIGURES):
        lines.append(f"[{section}]")
        lines += [f"  {line}" for s, line in FIGURES if s == section]
    for line in lines:
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "figures.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: OpenMP threads cost more than they give (about 10x on a busy 2-core
    machine). For a module: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pack():
    """The pack as the host imports it (in this process), for tests that build host models here."""
    if not HOST_AVAILABLE:
        pytest.skip(HOST_SKIP_REASON)
    from tools.host_inprocess import import_pack

    return import_pack()
