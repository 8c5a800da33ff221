"""The UI-format workflows (the shipped templates in example_workflows/ and the test graphs in
tests/workflows/) open in the host's real graph editor (headless Chromium) and the editor turns
each back into exactly its API-format copy (`app.graphToPrompt()`): same nodes, class types,
inputs, links and titles. So what a person opens from the template browser is what the tests
queue. Skipped where Chromium or Playwright is missing."""

from __future__ import annotations

import json

import pytest
from support import templates as tpl

from tools import demo, workflow_ui

NAMES = [n for d in workflow_ui.DIRS for n in workflow_ui.api_names(d)]


@pytest.fixture(scope="module")
def editor(host):
    pytest.importorskip("playwright.sync_api")
    from support.browser.driver import BrowserUnavailable, Editor, seed_editor_settings

    demo.ensure_assets(host.models_dir, log=lambda *a: None)
    tpl.install_stand_ins(host.models_dir)  # the templates' file names in the loaders' lists
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
    folder = workflow_ui.folder_of(name)
    ui = json.loads((folder / f"{name}.json").read_text())
    editor.load_workflow(ui)
    out = editor.page.evaluate("async () => (await app.graphToPrompt()).output")
    api = json.loads((folder / "api" / f"{name}.json").read_text())
    assert _core(out) == _core(api), editor.diagnostics()
    assert not editor.page_errors, editor.diagnostics()
