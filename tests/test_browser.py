"""The pack in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright against
the real host serving a real frontend with this pack.

For each test graph (tests/workflows/*.json, UI format, on the demo files) and for a loader ->
Apply Quant Policy -> VRAM Report graph built in the page: open the editor, load it
(`app.loadGraphData`), queue it from the page (`app.queuePrompt`), wait for the run, and check that
the canvas shows the pack's badges and the VRAM Report table with the numbers of that run, read
back from the host's /history (the nodes' `ui` outputs): mode counts, byte totals and their text,
per-model per-mode bytes and layer counts, the bar chart's segments. For each shipped template
(example_workflows/*.json): it opens with every node known and every link drawn, and after a run
on the tiny stand-ins (tests/support/templates.py; queued over HTTP for this page with the text
encoder swapped, the page's graph untouched) its pack nodes show that run. Also: the settings
(units, chart, badges), the figures coming back when the nodes are cached or the editor restores
outputs, the modern node design (Nodes 2.0), the node help pages found by the editor, the inputs'
tooltips, the thumbnails. Screenshots go to test-artifacts/browser/<frontend>/.

Two frontends: `pinned`, the one ComfyUI 0.30.0 installs (comfyui-frontend-package 1.47), and
`latest`, the newest on PyPI (tools/bootstrap.sh unpacks it into .host/frontend-latest; the pinned
host serves it with --front-end-root). LTXFP8_BROWSER_FRONTENDS=pinned limits the run to the
pinned one (LTXFP8_FRONTEND_LATEST=DIR points at another unpacked frontend).

Needs /usr/bin/chromium (tools/bootstrap.sh installs Debian's package when run as root; the driver
installs it too when missing and root) and playwright (requirements-dev.txt). Set
LTXFP8_SKIP_BROWSER=1 to skip where no browser can be had. About 2 minutes per frontend on CPU.
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest
from support import hostlib
from support import templates as tpl

from tools import demo

REPO = Path(__file__).resolve().parent.parent

ARTIFACTS_ROOT = REPO / "test-artifacts" / "browser"
WEB = REPO / "web"
PACK = hostlib.PACK_NAME
LOADER, APPLY, REPORT = "LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport"
SAVE = "LTXFP8SaveCheckpoint"
PACK_NODES = (LOADER, APPLY, REPORT)  # the nodes of the test graphs
ALL_NODES = PACK_NODES + (SAVE,)  # every node of the pack: each has a help page and tooltips
TEST_GRAPHS = sorted(p.stem for p in demo.WORKFLOWS.glob("*.json"))  # tests/workflows/
TEMPLATES = tpl.template_names()  # example_workflows/
FRONTEND_LATEST = Path(os.environ.get("LTXFP8_FRONTEND_LATEST", REPO / ".host" / "frontend-latest" / "static"))
FRONTENDS = [f.strip() for f in os.environ.get("LTXFP8_BROWSER_FRONTENDS", "pinned,latest").split(",") if f.strip()]
TOOLTIP_HARDWARE = re.compile(r"GPU|CUDA|device|CPU", re.I)
TOOLTIP_UNITS = re.compile(r"byte|memory", re.I)
SCALED_MM_INPUTS = ("policy", "rules", "activation_scale", "backend")

pytestmark = pytest.mark.timeout(900)


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def driver():
    if os.environ.get("LTXFP8_SKIP_BROWSER") == "1":
        pytest.skip("LTXFP8_SKIP_BROWSER=1")
    from support.browser import driver as drv  # needs playwright (requirements-dev.txt)

    drv.ensure_chromium()  # installs Debian's chromium when missing and root; else raises
    return drv


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request):
    """ "pinned" (the host's own) or "latest" (--front-end-root: the newest on PyPI)."""
    if request.param not in ("pinned", "latest"):
        raise ValueError(f"LTXFP8_BROWSER_FRONTENDS: unknown frontend {request.param!r} (pinned, latest)")
    if request.param == "latest" and not (FRONTEND_LATEST / "index.html").is_file():
        pytest.fail(f"no frontend at {FRONTEND_LATEST}: run tools/bootstrap.sh (or LTXFP8_BROWSER_FRONTENDS=pinned)")
    return request.param


@pytest.fixture(scope="module")
def artifacts(frontend):
    d = ARTIFACTS_ROOT / frontend
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def ui_host(host, frontend, artifacts):
    """The session host for the pinned frontend when it has tests/nodepack (the test graphs need
    it), else one of our own (with it, and --front-end-root for the latest frontend). The demo
    files and the templates' stand-ins are written into its model folders."""
    own = None
    h = host
    if frontend == "latest" or "LTXFP8TestConditioning" not in host.object_info("LTXFP8TestConditioning"):
        args = ["--front-end-root", str(FRONTEND_LATEST)] if frontend == "latest" else []
        own = h = hostlib.Host(extra_custom_nodes=demo.node_packs(), extra_args=args, log_path=artifacts / "host.log")
        h.start()
    demo.ensure_assets(h.models_dir, log=lambda *a: None)
    tpl.install_stand_ins(h.models_dir)
    try:
        yield h
    finally:
        if own is not None:
            own.stop()


@pytest.fixture(scope="module")
def editor(driver, ui_host):
    with driver.Editor(ui_host.url) as ed:
        yield ed


# ----------------------------------------------------------------------------------------------
# Checks of what the page shows against what the run returned


def _payload(entry: dict, node_id: str, key: str):
    out = entry["outputs"].get(node_id)
    assert out and key in out, f"node {node_id}: no {key!r} in /history outputs {sorted(entry['outputs'])}"
    return json.loads(out[key][0])


def _nonzero(d: dict) -> dict:
    return {k: v for k, v in (d or {}).items() if v}


def _bytes(held: dict) -> dict:
    """Bytes by mode of a holdings payload (quant/holdings.py) as the bars show them: the linears'
    modes, and "other" for the other tensors."""
    return _nonzero({**{k: v["bytes"] for k, v in held["modes"].items()}, "other": held["other"]["bytes"]})


def _layers(held: dict) -> dict:
    return _nonzero({k: v["layers"] for k, v in held["modes"].items()})


def check_badge(view: dict, p: dict, kind: str, fmt) -> None:
    held = p["holdings"]
    assert view["kind"] == "badge" and view["node_kind"] == kind, view
    assert view["visible"], view
    assert view["total_bytes"] == held["total_bytes"]
    assert view["total_text"] == fmt(held["total_bytes"]), (view["total_text"], held["total_bytes"])
    blocks = _nonzero(held["blocks_by_mode"])
    assert blocks, p
    assert {c["mode"]: c["count"] for c in view["chips"]} == blocks
    for c in view["chips"]:
        assert c["text"] == f"{c['mode']} {c['count']} block{'' if c['count'] == 1 else 's'}"
    for mode, n in _layers(held).items():
        assert f"{mode} {n}" in view["layers_text"], (mode, n, view["layers_text"])
    assert f"policy {p['policy']}" in view["layers_text"]
    bar = {s["mode"]: s["bytes"] for s in view["bar"]}
    assert bar == _bytes(held)
    assert sum(bar.values()) == held["total_bytes"]
    if kind == APPLY:
        assert f"new {fmt(p['allocated_bytes'])}" in view["layers_text"]
    if p.get("warnings"):
        assert f"{p['warnings']} warning" in view["layers_text"]


def check_vram(view: dict, report: dict, text: str, fmt) -> None:
    assert view["kind"] == "vram" and view["visible"], view
    assert view["title"] == text  # the node's text table, on hover
    models = report["models"]
    assert [m["input"] for m in view["models"]] == [m["input"] for m in models]
    for got, m in zip(view["models"], models, strict=False):
        held = m["holdings"]
        # The flat keys of the report's JSON are views of its holdings.
        assert _nonzero(m["weight_bytes_by_mode"]) == _bytes(held) and m["total_bytes"] == held["total_bytes"]
        assert _nonzero(m["layers_by_mode"]) == _layers(held)
        assert got["label"] == m["label"]
        for key in ("total_bytes", "resident_bytes", "offloaded_bytes"):
            assert got[key] == m[key], (m["input"], key)
            assert got[key.replace("bytes", "text")] == fmt(m[key]), (m["input"], key)
        by_mode = {k: v["bytes"] for k, v in got["modes"].items() if v["bytes"]}
        assert by_mode == _bytes(held), m["input"]
        layers = {k: v["layers"] for k, v in got["modes"].items() if v["layers"]}
        assert layers == _layers(held), m["input"]
        for mode, b in _bytes(held).items():
            assert got["modes"][mode]["text"].startswith(fmt(b)), (mode, got["modes"][mode])
        assert sum(by_mode.values()) == held["total_bytes"]
    assert [c["input"] for c in view["chart"]] == [m["input"] for m in models]
    for c, m in zip(view["chart"], models, strict=False):
        assert {s["mode"]: s["bytes"] for s in c["segments"]} == _bytes(m["holdings"])
        assert c["value"] == fmt(m["holdings"]["total_bytes"])
    d = report["device"]
    assert f"device {d['device']}: total {fmt(d['total_bytes'])}" in view["device_text"]


def check_run(driver, entry: dict, views: dict, workflow: dict, units: str = "GB") -> dict:
    """Every pack node of `workflow` shows the figures of this run; returns {id: class}."""
    fmt = lambda n: driver.format_bytes(n, units)  # noqa: E731
    nodes = driver.pack_node_ids(workflow)
    assert nodes, "no node of this pack in the workflow"
    for nid, cls in nodes.items():
        assert nid in views, f"node {nid} ({cls}) shows nothing; views: {sorted(views)}"
        if cls == REPORT:
            check_vram(views[nid], _payload(entry, nid, "ltx_fp8_vram"), entry["outputs"][nid]["text"][0], fmt)
        else:
            check_badge(views[nid], _payload(entry, nid, "ltx_fp8"), cls, fmt)
    return nodes


def check_widgets_untouched(ed, workflow: dict) -> None:
    """The canvas views are never saved: widgets_values of the pack's nodes are as loaded."""
    saved = {str(n["id"]): n.get("widgets_values") for n in ed.page.evaluate("() => app.graph.serialize().nodes")}
    for n in workflow["nodes"]:
        if n["type"] in PACK_NODES:
            assert (saved[str(n["id"])] or []) == (n.get("widgets_values") or []), (n["id"], n["type"])


# ----------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", TEST_GRAPHS)
def test_test_graph_shows_the_run_on_the_canvas(driver, editor, ui_host, artifacts, name):
    wf = json.loads((demo.WORKFLOWS / f"{name}.json").read_text())
    try:
        entry, views = driver.run_in_editor(editor, ui_host, wf)
        nodes = check_run(driver, entry, views, wf)
    finally:
        editor.screenshot_graph(artifacts / f"{name}.png")
    assert LOADER in nodes.values() and REPORT in nodes.values()
    check_widgets_untouched(editor, wf)
    assert not editor.page_errors, editor.diagnostics()


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_opens_complete_and_shows_a_run(driver, editor, ui_host, artifacts, name):
    """Every node of the template is a known node type in this frontend (none drawn as missing),
    every link is drawn, and after a run of the template on the stand-ins (queued for this page
    over HTTP with the text encoder swapped: the page's graph keeps the real one) its loader,
    Apply Quant Policy and VRAM Report show that run."""
    wf = tpl.load_ui(name)
    editor.load_workflow(wf)
    state = editor.page.evaluate(
        """() => ({
          types: app.graph._nodes.map(n => n.type),
          unknown: app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
          links: app.graph.links instanceof Map ? app.graph.links.size : Object.keys(app.graph.links).length,
          client: window.comfyAPI.api.api.clientId,
        })"""
    )
    assert sorted(state["types"]) == sorted(n["type"] for n in wf["nodes"])
    assert not state["unknown"], f"{name}: drawn as missing in this frontend: {state['unknown']}"
    assert state["links"] == len(wf["links"])
    entry, _views, _ = tpl.run_in_editor(editor, ui_host, name)
    try:
        nodes = driver.pack_node_ids(wf)
        editor.frame_graph(list(nodes), pad=60)  # a node's DOM view is hidden while it is off-screen
        check_run(driver, entry, editor.views(), wf)
    finally:
        editor.dismiss_overlays()
        editor.screenshot_graph(artifacts / f"{name}.png")
    assert LOADER in nodes.values()
    if name == "ltx23_two_stage_mix":
        assert sorted(nodes.values()) == sorted(PACK_NODES)
    check_widgets_untouched(editor, wf)
    assert not editor.page_errors, editor.diagnostics()


def test_the_page_runs_the_intended_frontend(editor, frontend):
    """The editor's own version (window.__COMFYUI_FRONTEND_VERSION__): the host's pin for "pinned",
    the version tools/bootstrap.sh unpacked for "latest"."""
    got = editor.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    req = (hostlib.HOST_DIR / "requirements.txt").read_text()
    pinned = re.search(r"^comfyui-frontend-package==([0-9.]+)", req, re.M).group(1)
    if frontend == "pinned":
        assert got == pinned
    else:
        stamp = FRONTEND_LATEST.parent.parent / "stamps" / "frontend-latest"  # .host/stamps
        assert got != pinned and got == stamp.read_text().strip(), (got, pinned)


def test_apply_quant_policy_badge_settings_cache_and_help(driver, editor, ui_host, artifacts):
    wf = driver.three_node_workflow(editor, demo.DEMO_FP8, policy="auto", apply_policy="bf16")
    entry, views = driver.run_in_editor(editor, ui_host, wf)
    nodes = check_run(driver, entry, views, wf)
    assert sorted(nodes.values()) == sorted(PACK_NODES)
    ids = {cls: nid for nid, cls in nodes.items()}
    applied = _payload(entry, ids[APPLY], "ltx_fp8")
    assert applied["changed"] and applied["allocated_bytes"] > 0, applied  # fp8 -> bf16 allocates
    assert set(_nonzero(applied["holdings"]["blocks_by_mode"])) == {"bf16"}
    editor.screenshot_graph(artifacts / "apply_quant_policy.png")

    # Units: GiB everywhere, at once (no re-run).
    editor.set_setting("LTXFP8.Canvas.Units", "GiB")
    check_run(driver, entry, editor.views(), wf, units="GiB")
    editor.set_setting("LTXFP8.Canvas.Units", "GB")
    # The chart can be hidden; the badges too (the VRAM table stays).
    editor.set_setting("LTXFP8.Canvas.ShowChart", False)
    assert editor.views()[ids[REPORT]]["chart"] == []
    editor.set_setting("LTXFP8.Canvas.ShowChart", True)
    editor.set_setting("LTXFP8.Canvas.ShowBadges", False)
    assert set(editor.views()) == {ids[REPORT]}
    editor.set_setting("LTXFP8.Canvas.ShowBadges", True)
    check_run(driver, entry, editor.views(), wf)

    # Queued again: loader and Apply Quant Policy are cached on the host and their figures come
    # back all the same (has_intermediate_output), equal to the first run's.
    editor.page.evaluate(
        "() => { for (const n of app.graph._nodes) n.__ltxfp8 = undefined; "
        "for (const h of document.querySelectorAll('.ltxfp8-host')) h.replaceChildren(); }"
    )
    assert editor.views() == {}
    pid = editor.queue()
    entry2 = ui_host.wait_history(pid)
    assert entry2["status"]["status_str"] == "success"
    views2 = editor.wait_for_views(nodes)
    check_run(driver, entry2, views2, wf)
    for cls in (LOADER, APPLY):
        assert _payload(entry2, ids[cls], "ltx_fp8") == _payload(entry, ids[cls], "ltx_fp8")
    check_widgets_untouched(editor, wf)
    # Outputs the editor restores (a job reopened from the queue sets app.nodeOutputs) show too.
    editor.page.evaluate(
        "() => { for (const n of app.graph._nodes) n.__ltxfp8 = undefined; "
        "for (const h of document.querySelectorAll('.ltxfp8-host')) h.replaceChildren(); "
        "app.nodeOutputs = {...app.nodeOutputs}; }"
    )
    check_run(driver, entry2, editor.wait_for_views(nodes), wf)

    # The editor finds the node's help page (web/docs/<node id>.md) in its Info panel.
    editor.frame_graph([ids[LOADER]], pad=150)  # room above the node for the selection toolbox
    editor.page.evaluate(
        "(id) => { app.canvas.deselectAll?.(); "
        "app.canvas.selectNode(app.graph.getNodeById(Number(id))); app.canvas.setDirty(true, true); }",
        ids[LOADER],
    )
    editor.page.click("[data-testid=info-button]", timeout=20000)
    editor.page.get_by_text("whatever its fp8 encoding").first.wait_for(timeout=20000)
    editor.screenshot(artifacts / "node_help.png")
    editor.page.keyboard.press("Escape")
    assert not editor.page_errors, editor.diagnostics()


def test_figures_show_with_the_modern_node_design(driver, ui_host, artifacts):
    """Settings -> Nodes 2.0 (Vue nodes, DOM-rendered): the same views, the same numbers."""
    with driver.Editor(ui_host.url, settings={"Comfy.VueNodes.Enabled": True}) as ed:
        wf = driver.three_node_workflow(ed, demo.DEMO_FP8, policy="fp8-cast", apply_policy="auto")
        entry, views = driver.run_in_editor(ed, ui_host, wf)
        check_run(driver, entry, views, wf)
        ed.screenshot(artifacts / "vue_nodes.png")
        assert not ed.page_errors, ed.diagnostics()


def test_help_pages_are_served_where_the_editor_looks(ui_host):
    """Frontend 1.47 (NodeHelpService) fetches /extensions/<pack>/docs/<node id>.md for nodes
    whose python_module is custom_nodes.<pack>."""
    for cls in ALL_NODES:
        info = ui_host.object_info(cls)[cls]
        assert info["python_module"] == f"custom_nodes.{PACK}"
        status, body = ui_host.request("GET", f"/extensions/{PACK}/docs/{cls}.md")
        assert status == 200 and isinstance(body, str), (cls, status)
        assert body.startswith(f"# {info['display_name']}\n"), body[:80]
        for section in ("required", "optional"):
            for name in info["input"].get(section, {}):
                assert f"`{name}`" in body, f"{cls}.md does not document input {name}"


def test_every_input_has_a_tooltip_with_units_and_hardware(ui_host):
    for cls in ALL_NODES:
        info = ui_host.object_info(cls)[cls]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                tip = (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}).get("tooltip", "")
                assert TOOLTIP_UNITS.search(tip), f"{cls}.{name}: no units in tooltip {tip!r}"
                assert TOOLTIP_HARDWARE.search(tip), f"{cls}.{name}: no hardware in tooltip {tip!r}"
                if name in SCALED_MM_INPUTS:
                    assert "8.9" in tip, f"{cls}.{name}: tooltip does not say scaled-mm needs CC 8.9+"


def test_example_workflows_have_thumbnails(ui_host):
    from PIL import Image

    assert TEMPLATES, "no example_workflows/*.json"
    listed = ui_host.get("/workflow_templates").get(PACK, [])
    assert sorted(listed) == TEMPLATES  # the test graphs are not listed
    for name in TEMPLATES:
        jpg = REPO / "example_workflows" / f"{name}.jpg"
        assert jpg.is_file(), f"{jpg} missing: run tools/make_thumbnails.py"
        img = Image.open(jpg)
        assert img.format == "JPEG" and img.size[0] == img.size[1] >= 256, (img.format, img.size)
        assert name in listed
        # Served where the template browser looks: /api/workflow_templates/<pack>/<name>.jpg
        url = f"{ui_host.url}/api/workflow_templates/{PACK}/{name}.jpg"
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
            Image.open(io.BytesIO(r.read())).verify()


def test_extension_is_quiet_at_import():
    """Registered through app.registerExtension with its settings under LTXFP8; imports app/api
    from the host's shims; no timers or requests at import (api.fetchApi only on a menu click)."""
    js = (WEB / "ltx_fp8.js").read_text()
    assert 'import { app } from "../../scripts/app.js";' in js
    assert 'import { api } from "../../scripts/api.js";' in js
    assert "app.registerExtension(" in js
    assert re.findall(r'category: \["LTXFP8"', js), "settings not under the LTXFP8 category"
    assert "setInterval" not in js and "setTimeout" not in js
    assert "fetch(" not in js.replace("api.fetchApi(", "")
    assert js.count("api.fetchApi(") == 1
    assert sorted(p.name for p in (WEB / "docs").glob("*.md")) == sorted(f"{c}.md" for c in ALL_NODES)


def test_canvas_formatters_match_the_python_ones(editor):
    """formatGB / formatGiB of web/ltx_fp8.js write bytes as quant.units does (the loader's and the
    VRAM Report's text outputs), across the unit boundaries."""
    from quant.units import format_gb, format_gib

    values = [
        0,
        1,
        999,
        1000,
        1023,
        1024,
        1152,
        1536,
        10**6 - 1,
        2**20,
        10**9,
        2**30,
        21_900_000_000,
        3 * 2**40,
        10**16,
    ]
    got = editor.page.evaluate(
        """async ([pack, values]) => {
          const m = await import(`/extensions/${pack}/ltx_fp8.js`);
          return values.map((n) => [m.formatGB(n), m.formatGiB(n)]);
        }""",
        [PACK, values],
    )
    assert got == [[format_gb(n), format_gib(n)] for n in values]
