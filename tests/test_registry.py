"""Ready for the Comfy Registry (https://docs.comfy.org/registry/specifications): `comfy node
validate` (comfy-cli from PyPI, installed by tools/bootstrap.sh into .host/comfy-cli, run without
prompts) passes on the repo, and pyproject.toml has what a listing needs that the validator does
not check: the icon at a URL the registry can fetch (this repo's raw file on GitHub) and present in
the repo, square, at most 400 x 400; a semantic version; the install commands in the README."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
COMFY_CLI = Path(os.environ.get("LTXFP8_COMFY_CLI", REPO / ".host" / "comfy-cli" / "bin" / "comfy"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_comfy_node_validate_passes():
    if not COMFY_CLI.is_file():
        pytest.fail(f"no comfy-cli at {COMFY_CLI}: run tools/bootstrap.sh (or set LTXFP8_COMFY_CLI)")
    env = dict(os.environ, DO_NOT_TRACK="1")
    proc = subprocess.run(
        [str(COMFY_CLI), "--skip-prompt", "node", "validate"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # comfy-cli exits 0 on warnings (license format, ruff security rules S102/S307/E702): none here.
    assert "All validation checks passed" in out, out
    assert not re.search(r"warning|error", out, re.I), out


def test_pyproject_has_the_registry_fields():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (REPO / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert comfy["PublisherId"] and comfy["DisplayName"]


def test_the_icon_url_serves_the_repos_icon():
    from PIL import Image

    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    repo_path = urlparse(PYPROJECT["project"]["urls"]["Repository"]).path.strip("/")
    url = urlparse(icon)
    assert url.scheme == "https" and url.netloc == "raw.githubusercontent.com", icon
    parts = url.path.strip("/").split("/")
    owner_repo, branch, path = "/".join(parts[:2]), parts[2], "/".join(parts[3:])
    assert owner_repo == repo_path and branch == "main", icon
    img = Image.open(REPO / path)
    assert img.format in ("PNG", "JPEG", "GIF"), img.format
    assert img.size[0] == img.size[1] <= 400, img.size


def test_readme_install_section_covers_manager_comfy_cli_and_git():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Install") :]
    section = section[: section.index("\n## ", 4)]
    name = PYPROJECT["project"]["name"]
    assert f"comfy node install {name}" in section
    assert "ComfyUI-Manager" in section
    assert "git clone " + PYPROJECT["project"]["urls"]["Repository"] in section
