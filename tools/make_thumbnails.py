#!/usr/bin/env python
"""Thumbnails of the shipped templates and the README screenshots, from real screenshots of the
graph editor (headless Debian Chromium driven by Playwright; tests/support/browser/driver.py).

    .venv/bin/python tools/make_thumbnails.py                       # all example_workflows/*.json
    .venv/bin/python tools/make_thumbnails.py ltx23_two_stage_mix   # one
    .venv/bin/python tools/make_thumbnails.py --url http://127.0.0.1:8188   # use a running host
    .venv/bin/python tools/make_thumbnails.py --no-readme           # thumbnails only

For each template `example_workflows/NAME.json` (UI format) it starts a headless host with this pack
and tests/nodepack (or uses --url; unless --url is given, the demo files and the templates' tiny
stand-ins (tests/support/templates.py) are written into its model folders), opens the editor,
loads the template, runs it on the stand-ins for that page (text encoder swapped in the queued
prompt only: the page shows the template as shipped) so the canvas shows the pack's badges and the
VRAM Report table, and writes `example_workflows/NAME.jpg`, 768 x 768 JPEG: the template browser
shows thumbnails in square cards, so the graph fills the square's height from its left edge (a
wide graph is cut on the right).
Also writes, for the README, from the test graph tests/workflows/ltx_fp8_mix.json after its run:
`docs/mix-workflow.png` (the whole graph), `docs/mix-loaders.png` (the three loaders with their
badges, at 100 %) and `docs/mix-vram-report.png` (the VRAM Report node, at 150 %).
Runs in a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from support import hostlib  # noqa: E402
from support import templates as tpl  # noqa: E402
from support.browser.driver import Editor, run_in_editor  # noqa: E402

WORKFLOWS = REPO / "example_workflows"
TEST_WORKFLOWS = REPO / "tests" / "workflows"
README_SHOT = REPO / "docs" / "mix-workflow.png"
README_LOADERS = REPO / "docs" / "mix-loaders.png"
README_VRAM = REPO / "docs" / "mix-vram-report.png"
README_WORKFLOW = "ltx_fp8_mix"
THUMB_SIZE = 768
THUMB_VIEWPORT = {"width": 1600, "height": 1600}
README_VIEWPORT = {"width": 2400, "height": 1200}


class _UrlHost(hostlib.Host):
    """hostlib.Host's HTTP helpers for a host started elsewhere (--url)."""

    def __init__(self, url: str):
        super().__init__(base_dir=tempfile.gettempdir(), log_path=os.devnull)
        self.port = int(url.rstrip("/").rsplit(":", 1)[1])

    def alive(self) -> bool:
        try:
            return self.request("GET", "/system_stats", timeout=10)[0] == 200
        except hostlib.HostError:
            return False


def thumbnail(png: bytes, out: Path, size: int = THUMB_SIZE) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    img.save(out, "JPEG", quality=85, optimize=True, progressive=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="workflow names (default: all example_workflows/*.json)")
    ap.add_argument("--url", help="a running host with this pack, tests/nodepack, the demo files and stand-ins")
    ap.add_argument("--no-readme", action="store_true", help=f"do not write {README_SHOT.relative_to(REPO)}")
    args = ap.parse_args(argv)

    names = args.names or sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    if not names:
        print("no example_workflows/*.json", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    own = None
    if args.url:
        host = _UrlHost(args.url)
    else:
        from tools import demo

        own = host = hostlib.Host(extra_custom_nodes=demo.node_packs())
        host.prepare()
        demo.ensure_assets(host.models_dir, log=lambda *a: None)
        tpl.install_stand_ins(host.models_dir)
        host.start()
        print(f"[thumbnails] host up on {host.url} in {host.startup_seconds:.1f} s")
    try:
        with Editor(host.url, viewport=THUMB_VIEWPORT) as ed:
            ed.focus_mode(True)
            for name in names:
                tpl.run_in_editor(ed, host, name)
                ed.dismiss_overlays()
                clip = ed.frame_graph(pad=32, how="square-left")
                png = ed.page.screenshot(clip={k: clip[k] for k in ("x", "y", "width", "height")})
                out = WORKFLOWS / f"{name}.jpg"
                thumbnail(png, out)
                print(f"[thumbnails] {out.relative_to(REPO)}")
        if not args.no_readme:
            with Editor(host.url, viewport=README_VIEWPORT) as ed:
                ed.focus_mode(True)
                wf = json.loads((TEST_WORKFLOWS / f"{README_WORKFLOW}.json").read_text())
                run_in_editor(ed, host, wf)
                ed.screenshot_graph(README_SHOT, pad=16)
                loaders = [str(n["id"]) for n in wf["nodes"] if n["type"] == "LTXFP8CheckpointLoader"]
                reports = [str(n["id"]) for n in wf["nodes"] if n["type"] == "LTXFP8VRAMReport"]
                ed.screenshot_graph(README_LOADERS, node_ids=loaders, pad=12, max_scale=1.0)
                ed.screenshot_graph(README_VRAM, node_ids=reports, pad=12, max_scale=1.5)
                for p in (README_SHOT, README_LOADERS, README_VRAM):
                    print(f"[thumbnails] {p.relative_to(REPO)}")
    finally:
        if own is not None:
            own.stop()
    print(f"[thumbnails] done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
