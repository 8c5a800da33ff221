"""The UI-format example workflows open in the host's real graph editor (headless Chromium) and the
editor turns each back into exactly its API-format copy (`app.graphToPrompt()`): same nodes,
class types, inputs, links and titles. So what a person opens from the template browser is what
the tests and the demo queue. Skipped where Chromium or Playwright is missing."""

from __future__ import annotations

import json

import pytest

from tools import demo

NAMES = ("ltx_fp8_single", "ltx_fp8_mix")


@pytest.fixture(scope="module")
def editor(host):
    pytest.importorskip("playwright.sync_api")
    from support.browser.driver import BrowserUnavailable, Editor, seed_editor_settings

    demo.ensure_assets(host.models_dir, log=lambda *a: None)
    seed_editor_settings(host)
    try:
        ed = Editor(host.url).__enter__()
    except BrowserUnavailable as e:
        pytest.skip(str(e))
    try:
        yield ed
    finally:
        ed.close()


def _core(prompt: dict) -> dict:
    return {
        k: {"class_type": v["class_type"], "inputs": v["inputs"], "title": (v.get("_meta") or {}).get("title")}
        for k, v in prompt.items()
    }


@pytest.mark.parametrize("name", NAMES)
def test_editor_turns_the_ui_workflow_into_the_api_one(editor, name):
    ui = json.loads((demo.WORKFLOWS / f"{name}.json").read_text())
    editor.load_workflow(ui)
    out = editor.page.evaluate("async () => (await app.graphToPrompt()).output")
    assert _core(out) == _core(demo.load_api_workflow(name)), editor.diagnostics()
    assert not editor.page_errors, editor.diagnostics()
