"""Headless Chromium (Debian's `chromium`) driven by Playwright against a running host.

    with Editor(host.url) as ed:                 # opens the graph editor, waits for the app
                                                 # (EDITOR_SETTINGS applied in the page only)
        ed.load_workflow(ui_json)                # app.loadGraphData(...)
        prompt_id = ed.queue()                   # app.queuePrompt(0); id from the POST /prompt reply
        host.wait_history(prompt_id)
        ed.wait_for_views(["1", "2", "3"])       # the pack's badges / VRAM table on those nodes
        ed.screenshot(path)

Playwright comes from PyPI (requirements-dev.txt) and is always pointed at the system browser
(`executable_path`); `playwright install` (a download from the internet) is never used.
`ensure_chromium()` installs Debian's package when it is missing and we are root
(tools/bootstrap.sh does the same under a stamp). Standard library + playwright only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("LTXFP8_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1000}

# Editor settings for a quiet, reproducible page: no first-run template browser, no minimap.
EDITOR_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.NodeBadge.NodeIdBadgeMode": "Show all",
    # Text drawn at every zoom level (screenshots of a whole graph are taken zoomed out).
    "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
    # A clean canvas for screenshots: no fps/info corner, no zoom menu.
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    # The pack's own settings at their defaults (a developer's host may have others stored).
    "LTXFP8.Canvas.ShowBadges": True,
    "LTXFP8.Canvas.ShowChart": True,
    "LTXFP8.Canvas.Units": "GB",
}


class BrowserUnavailable(RuntimeError):
    pass


# One Playwright per process (its sync API cannot be started twice in a thread), shared by the
# Editors open at the same time; stopped when the last one closes.
_PLAYWRIGHT: list = []  # [playwright, users]


def _playwright_acquire():
    from playwright.sync_api import sync_playwright

    if not _PLAYWRIGHT:
        _PLAYWRIGHT[:] = [sync_playwright().start(), 0]
    _PLAYWRIGHT[1] += 1
    return _PLAYWRIGHT[0]


def _playwright_release() -> None:
    if not _PLAYWRIGHT:
        return
    _PLAYWRIGHT[1] -= 1
    if _PLAYWRIGHT[1] <= 0:
        pw = _PLAYWRIGHT[0]
        _PLAYWRIGHT.clear()
        pw.stop()


def ensure_chromium() -> str:
    """The path of the system Chromium; installs Debian's `chromium` (as root) when missing."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrowserUnavailable(
            f"{CHROMIUM} missing and cannot install it (need root and apt-get): run `sudo apt-get install -y chromium`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise BrowserUnavailable(f"apt-get install chromium failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    if not os.path.exists(CHROMIUM):
        raise BrowserUnavailable(f"chromium installed but {CHROMIUM} is missing")
    return CHROMIUM


def seed_editor_settings(host, extra: Mapping[str, Any] | None = None) -> None:
    """Kept for callers written against an earlier version: Editor now applies EDITOR_SETTINGS in
    the page itself (nothing is stored on the host), so this does nothing."""


def format_bytes(n: int, units: str = "GB") -> str:
    """The same text as formatBytes() in web/ltx_fp8.js."""
    binary = units == "GiB"
    k = 1024 if binary else 1000
    names = ["KiB", "MiB", "GiB", "TiB"] if binary else ["kB", "MB", "GB", "TB"]
    if abs(n) < k:
        return f"{n} B"
    i, v = -1, float(n)
    while abs(v) >= k and i < len(names) - 1:
        v /= k
        i += 1
    return f"{v:.2f} {names[i]}"


_INSTALL_LISTENERS = """() => {
  if (window.__ltxfp8Test) return;
  const api = window.comfyAPI.api.api;
  const t = window.__ltxfp8Test = { done: {}, messages: [] };
  for (const ev of ["execution_success", "execution_error", "execution_interrupted"]) {
    api.addEventListener(ev, (e) => { t.done[e.detail?.prompt_id] = ev; t.messages.push([ev, e.detail]); });
  }
}"""

# Every rendered view of the pack: {node id: {kind, total, text, chips, rows...}}.
_READ_VIEWS = """() => {
  const out = {};
  const segment = (s) => ({mode: s.dataset.mode, bytes: Number(s.dataset.bytes)});
  for (const host of document.querySelectorAll('.ltxfp8-host')) {
    const v = host.querySelector('[data-ltxfp8]');
    if (!v) continue;
    const r = { kind: v.dataset.ltxfp8, text: v.innerText, visible: host.getBoundingClientRect().width > 0 };
    if (r.kind === 'badge') {
      r.node_kind = v.dataset.nodeKind;
      r.total_bytes = v.dataset.totalBytes === '' ? null : Number(v.dataset.totalBytes);
      r.total_text = v.querySelector('[data-role=total]')?.textContent ?? null;
      r.chips = [...v.querySelectorAll('.ltxfp8-chip')].map(c => ({mode: c.dataset.mode,
        count: Number(c.dataset.count), unit: c.dataset.unit, text: c.textContent}));
      r.bar = [...v.querySelectorAll('.ltxfp8-bar > span')].map(segment);
      r.layers_text = v.querySelector('[data-role=layers]')?.textContent ?? '';
    } else if (r.kind === 'vram') {
      r.title = v.getAttribute('title') ?? '';
      // One entry per model column, in column order.
      r.models = [...v.querySelectorAll('thead th[data-input]')].map(th => {
        const input = th.dataset.input;
        const cells = [...v.querySelectorAll(`tbody td[data-input="${input}"]`)];
        const role = (name) => cells.find(td => td.dataset.role === name);
        return {
          input, label: v.querySelector(`.ltxfp8-labels [data-input="${input}"]`)?.dataset.label,
          total_bytes: Number(role('total')?.dataset.bytes), total_text: role('total')?.textContent,
          resident_bytes: Number(role('resident')?.dataset.bytes), resident_text: role('resident')?.textContent,
          offloaded_bytes: Number(role('offloaded')?.dataset.bytes), offloaded_text: role('offloaded')?.textContent,
          modes: Object.fromEntries(cells.filter(td => td.dataset.mode).map(td => [td.dataset.mode,
            {bytes: Number(td.dataset.bytes), layers: td.dataset.layers === '' ? null : Number(td.dataset.layers),
             text: td.textContent}])),
        };
      });
      r.chart = [...v.querySelectorAll('.ltxfp8-chart-row')].map(row => ({input: row.dataset.input,
        segments: [...row.querySelectorAll('.ltxfp8-bar > span')].map(segment),
        value: row.querySelector('.ltxfp8-chart-value')?.textContent}));
      r.device_text = v.querySelector('[data-role=device]')?.textContent ?? '';
    }
    out[host.dataset.nodeId] = r;
  }
  return out;
}"""


class Editor:
    """One headless Chromium page on the host's graph editor."""

    def __init__(
        self,
        url: str,
        viewport: Mapping[str, int] = VIEWPORT,
        timeout_s: float = 90,
        settings: Mapping[str, Any] | None = None,
    ):
        self.url = url.rstrip("/")
        # Editor settings this page sees (EDITOR_SETTINGS + settings) over the user's stored ones.
        # They live in the page only: the settings requests are answered here, so nothing is
        # written to the host's user settings (tools may point this at a person's own host).
        self.settings = {**EDITOR_SETTINGS, **(settings or {})}
        self.viewport = dict(viewport)
        self.timeout_ms = int(timeout_s * 1000)
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self._pw = self._browser = self.page = None

    # ----- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> Editor:
        exe = ensure_chromium()
        self._pw = _playwright_acquire()
        try:
            self._browser = self._pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
            ctx = self._browser.new_context(viewport=self.viewport, device_scale_factor=1)
            ctx.route("**/*", self._route)
            self.page = ctx.new_page()
            self.page.set_default_timeout(self.timeout_ms)
            self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
            self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _route(self, route) -> None:
        req = route.request
        url = req.url
        if url.startswith(("data:", "blob:")):
            return route.continue_()
        if not url.startswith(self.url + "/"):
            return route.abort()  # keep the page off the internet (update checks, telemetry)
        path = urllib.parse.urlparse(url).path
        for prefix in ("/api/settings", "/settings"):
            if path == prefix and req.method == "GET":
                resp = route.fetch()
                data = resp.json() if resp.ok else {}
                data.update(self.settings)
                return route.fulfill(status=200, json=data)
            if path == prefix and req.method == "POST":
                self.settings.update(json.loads(req.post_data or "{}"))
                return route.fulfill(status=200, body="")
            if path.startswith(prefix + "/"):
                key = urllib.parse.unquote(path[len(prefix) + 1 :])
                if req.method == "POST":
                    self.settings[key] = json.loads(req.post_data or "null")
                    return route.fulfill(status=200, body="")
                if req.method == "GET" and key in self.settings:
                    return route.fulfill(status=200, json=self.settings[key])
        return route.continue_()

    def close(self) -> None:
        if self._browser is not None:
            try:
                self._browser.close()
            except Exception:
                pass
        if self._pw is not None:
            _playwright_release()
        self._browser = self._pw = self.page = None

    def open(self) -> None:
        self.page.goto(self.url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(
            "() => window.app?.graph && window.comfyAPI?.api?.api && window.app.extensionManager?.setting"
            " && window.app.extensions?.some(e => e.name === 'LTXFP8.Canvas')"
        )
        self.page.evaluate(_INSTALL_LISTENERS)
        # The editor loads its start-up graph (the default workflow) and rearranges its workflow
        # tabs for a second or so after the app is up; a workflow loaded before that settles is
        # replaced. Wait until graph and tabs have not changed for 1.5 s.
        state = (
            "() => [app.graph._nodes.length, app.extensionManager.workflow?.activeWorkflow?.path,"
            " (app.extensionManager.workflow?.openWorkflows ?? []).map(w => w.path).join('|')].join(';')"
        )
        last, stable_since, deadline = None, time.monotonic(), time.monotonic() + 30
        while time.monotonic() < deadline:
            now = self.page.evaluate(state)
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= 1.5 and not now.startswith("0;"):
                break
            self.page.wait_for_timeout(250)
        self.dismiss_overlays()

    # ----- page helpers -------------------------------------------------------------------------
    def dismiss_overlays(self) -> None:
        """Close dialogs (template browser, first-run), toasts and banners such as
        "comfyui-workflow-templates is not installed"; none of them is needed here."""
        self.page.evaluate("""() => {
          // Only dialogs, toasts and messages: a workflow tab's close button would close the graph.
          for (const sel of ['.p-dialog .p-dialog-close-button', '.p-toast .p-toast-close-button',
                             '.p-message .p-message-close-button'])
            for (const b of document.querySelectorAll(sel)) { try { b.click(); } catch {} }
        }""")
        self.page.keyboard.press("Escape")

    def command(self, command_id: str) -> None:
        self.page.evaluate("(id) => app.extensionManager.command.execute(id)", command_id)

    def load_workflow(self, workflow: Mapping | str) -> None:
        """app.loadGraphData(workflow); checks the graph then holds exactly its nodes."""
        data = dict(json.loads(workflow) if isinstance(workflow, str) else workflow)
        # A workflow whose id is the open one's (e.g. built from the default graph, whose id is
        # fixed) makes the editor switch back to that open workflow instead of loading this one.
        data["id"] = str(uuid.uuid4())
        want = sorted((str(n["id"]), n["type"]) for n in data["nodes"])
        got = None
        for _ in range(3):
            self.page.evaluate("async (wf) => { await app.loadGraphData(wf, true, true, null); }", dict(data))
            ok = True
            for wait_ms in (300, 700):
                self.page.wait_for_timeout(wait_ms)
                got = sorted(self.page.evaluate("() => app.graph._nodes.map(n => [String(n.id), n.type])"))
                ok = ok and [list(x) for x in want] == got
            if ok:
                break
        else:
            raise RuntimeError(f"the editor did not take the workflow: want {want}, has {got}")
        self.dismiss_overlays()

    def node_ids(self, node_type: str | None = None) -> list[str]:
        return self.page.evaluate(
            "(t) => app.graph._nodes.filter(n => !t || n.type === t).map(n => String(n.id))", node_type
        )

    def fit_view(self) -> None:
        self.page.evaluate("() => { app.canvas.deselectAll?.(); }")
        self.command("Comfy.Canvas.FitView")
        self.page.wait_for_timeout(300)
        self.page.evaluate("() => app.graph.setDirtyCanvas(true, true)")
        self.page.wait_for_timeout(200)

    def queue(self) -> str:
        """Queue the loaded graph as the user's Run button does; return the prompt id."""
        with self.page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/prompt")) as info:
            self.page.evaluate("() => app.queuePrompt(0, 1)")
        body = info.value.json()
        if "prompt_id" not in body:
            raise RuntimeError(f"prompt refused: {json.dumps(body)[:4000]}")
        return body["prompt_id"]

    def wait_done(self, prompt_id: str, timeout_s: float = 300) -> str:
        """Wait for the page's websocket to report the end of the prompt; return the event name."""
        self.page.wait_for_function(
            "(id) => window.__ltxfp8Test.done[id]", arg=prompt_id, timeout=int(timeout_s * 1000)
        )
        return self.page.evaluate("(id) => window.__ltxfp8Test.done[id]", prompt_id)

    def wait_for_views(self, node_ids: Iterable[str], timeout_s: float = 30) -> dict:
        ids = [str(i) for i in node_ids]
        self.page.wait_for_function(
            '(ids) => ids.every(id => document.querySelector(`.ltxfp8-host[data-node-id="${id}"] [data-ltxfp8]`))',
            arg=ids,
            timeout=int(timeout_s * 1000),
        )
        return self.views()

    def views(self) -> dict:
        return self.page.evaluate(_READ_VIEWS)

    def set_setting(self, setting_id: str, value: Any) -> None:
        self.page.evaluate("async ([id, v]) => { await app.extensionManager.setting.set(id, v); }", [setting_id, value])

    def screenshot(self, path: str | os.PathLike, canvas_only: bool = False) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(250)
        if canvas_only:
            self.page.locator("canvas#graph-canvas").screenshot(path=str(path))
        else:
            self.page.screenshot(path=str(path))
        return path

    def focus_mode(self, on: bool = True) -> None:
        """The editor's focus mode: only the canvas, no side bar, tabs or menus (and, for clean
        screenshots, not the focus-mode exit button either)."""
        chrome_visible = self.page.evaluate(
            "() => [...document.querySelectorAll('.side-tool-bar-container, .workflow-tabs')]"
            ".some(e => e.getBoundingClientRect().width > 0)"
        )
        if chrome_visible == on:
            self.command("Workspace.ToggleFocusMode")
            self.page.wait_for_timeout(400)
        self.page.evaluate(
            """(on) => {
          document.getElementById('ltxfp8-focus')?.remove();
          if (on) document.head.append(Object.assign(document.createElement('style'), {id: 'ltxfp8-focus',
            textContent: '.no-drag.fixed.top-0.right-0 { visibility: hidden !important; }'}));
        }""",
            on,
        )

    def frame_graph(
        self, node_ids: Iterable[str] | None = None, pad: int = 24, max_scale: float = 1.0, how: str = "fit"
    ) -> dict:
        """Zoom and pan the canvas onto the given nodes (default all); return a page-pixel clip
        {x, y, width, height, scale}. how="fit": the nodes' bounding box (title bars and node
        badges included), as large as the canvas allows. how="square-left": a square as tall as
        the canvas, the nodes filling its height from their left edge (wider graphs are cut on
        the right)."""
        ids = None if node_ids is None else [str(i) for i in node_ids]
        clip = self.page.evaluate(
            """([ids, pad, maxScale, how]) => {
          const c = app.canvas, LG = window.LiteGraph;
          const nodes = app.graph._nodes.filter(n => !ids || ids.includes(String(n.id)));
          const th = LG.NODE_TITLE_HEIGHT || 30, badge = 22;
          let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
          for (const n of nodes) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - th - badge);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
          }
          const rect = c.canvas.getBoundingClientRect();
          const side = Math.min(rect.width, rect.height);
          const scale = how === "square-left"
            ? Math.min(maxScale, (side - 2 * pad) / (y1 - y0))
            : Math.min(maxScale, (rect.width - 2 * pad) / (x1 - x0), (rect.height - 2 * pad) / (y1 - y0));
          c.ds.scale = scale;
          c.ds.offset[0] = pad / scale - x0;
          c.ds.offset[1] = pad / scale - y0;
          c.setDirty(true, true);
          app.graph.setDirtyCanvas(true, true);
          if (how === "square-left")
            return {x: rect.left, y: rect.top, width: Math.floor(side), height: Math.floor(side), scale};
          return {x: rect.left, y: rect.top, width: Math.ceil((x1 - x0) * scale + 2 * pad),
                  height: Math.ceil((y1 - y0) * scale + 2 * pad), scale};
        }""",
            [ids, pad, max_scale, how],
        )
        # Let the canvas redraw and the DOM widgets follow it.
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.wait_for_timeout(300)
        return clip

    def screenshot_graph(
        self,
        path: str | os.PathLike,
        node_ids: Iterable[str] | None = None,
        pad: int = 24,
        max_scale: float = 1.0,
        how: str = "fit",
        **kwargs,
    ) -> Path:
        """A screenshot of just the graph (or of `node_ids`), framed by frame_graph()."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dismiss_overlays()
        clip = self.frame_graph(node_ids, pad, max_scale, how)
        self.page.screenshot(path=str(path), clip={k: clip[k] for k in ("x", "y", "width", "height")}, **kwargs)
        return path

    def diagnostics(self, lines: int = 60) -> str:
        tail = "\n".join(self.console[-lines:])
        errs = "\n".join(self.page_errors[-20:])
        return f"--- browser console ---\n{tail}\n--- page errors ---\n{errs}\n---"


def pack_node_ids(workflow: Mapping) -> dict[str, str]:
    """{node id: class} of the nodes of this pack that show figures on the canvas."""
    return {str(n["id"]): n["type"] for n in workflow["nodes"] if n["type"] in PACK_VIEW_NODES}


PACK_VIEW_NODES = ("LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport")


def run_in_editor(ed: Editor, host, workflow: Mapping, timeout_s: float = 600) -> tuple[dict, dict]:
    """Load `workflow`, queue it from the page, wait for the run (the page's websocket and the
    host's /history) and for the pack's views on the canvas. Returns (history entry, views)."""
    ed.load_workflow(workflow)
    prompt_id = ed.queue()
    entry = host.wait_history(prompt_id, timeout=timeout_s)
    status = entry["status"].get("status_str")
    if status != "success":
        raise RuntimeError(f"prompt {prompt_id} ended {status}: {json.dumps(entry['status'])[:3000]}")
    ed.wait_done(prompt_id, timeout_s=60)
    views = ed.wait_for_views(pack_node_ids(workflow))
    entry["prompt_id"] = prompt_id
    return entry, views


def three_node_workflow(page_editor: Editor, ckpt_name: str, policy: str = "auto", apply_policy: str = "bf16") -> dict:
    """Build loader -> Apply Quant Policy -> VRAM Report in the page and return it as UI-format
    JSON (app.graph.serialize()): the fallback when example_workflows/ has no workflow yet."""
    return page_editor.page.evaluate(
        """([ckpt, policy, applyPolicy]) => {
      const LG = window.LiteGraph;
      app.graph.clear();
      const mk = (type, pos) => { const n = LG.createNode(type); n.pos = pos; app.graph.add(n); return n; };
      const set = (n, name, v) => { const w = n.widgets.find(w => w.name === name); w.value = v; };
      const a = mk('LTXFP8CheckpointLoader', [40, 80]);
      const b = mk('LTXFP8ApplyQuantPolicy', [480, 80]);
      const c = mk('LTXFP8VRAMReport', [900, 80]);
      set(a, 'ckpt_name', ckpt); set(a, 'policy', policy); set(b, 'policy', applyPolicy);
      a.connect(0, b, 0);
      a.connect(0, c, 0);
      b.connect(0, c, 1);
      return app.graph.serialize();
    }""",
        [ckpt_name, policy, apply_policy],
    )
