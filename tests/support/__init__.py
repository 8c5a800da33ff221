"""Helpers shared by the tests (and by tools/demo.py, tools/workflow_ui.py, tools/make_thumbnails.py),
imported as `support.<module>` (tests/ is on sys.path: `pythonpath` in pyproject.toml):

- `hostlib`: a real ComfyUI host with this pack, started headless on a free port (standard library
  only, so tools/ scripts can use it without torch);
- `reliability`: API prompts for the pack's nodes, their outputs from the history, fixture files in
  the host's model folders, file fingerprints;
- `loader_fuzz`: mutations of real fixture files and the oracle that judges a load (also run by
  atheris as a script);
- `browser.driver`: the host's graph editor in headless Chromium through Playwright.
"""
