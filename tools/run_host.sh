#!/usr/bin/env bash
# Start the pinned ComfyUI host with this pack in the foreground, on 127.0.0.1:$PORT.
# Usage: tools/run_host.sh [main.py args...]      (env: PORT=8188, HOST_BASE=.work/host,
#                                                  LTXFP8_HOST_DEVICE=auto|cpu|gpu)
# The base directory persists: custom_nodes/comfyui-ltx-fp8 links this repo, models go to
# $HOST_BASE/models/{checkpoints,diffusion_models,loras,vae,text_encoders}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${PORT:-8188}"
base="${HOST_BASE:-$root/.work/host}"
case "$base" in /*) ;; *) base="$root/$base" ;; esac
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "run_host: no .venv; run 'make setup' first" >&2; exit 1; }

mkdir -p "$base/custom_nodes" "$base/input" "$base/output" "$base/user"
for kind in checkpoints diffusion_models loras vae text_encoders; do mkdir -p "$base/models/$kind"; done
link="$base/custom_nodes/comfyui-ltx-fp8"
if [ -L "$link" ] || [ ! -e "$link" ]; then ln -sfn "$root" "$link"; fi

# ComfyUI's default database lives in its own tree (.host/ComfyUI/user/comfyui.db, a folder the
# sdist lacks); keep it with the rest of this host's state unless ARGS name one.
db=(--database-url "sqlite:///$base/user/comfyui.db")
for a in "$@"; do case "$a" in --database-url|--database-url=*) db=() ;; esac; done

echo "[run_host] ComfyUI with comfyui-ltx-fp8 on http://127.0.0.1:$PORT (base: $base)" >&2
export PYTHONUNBUFFERED=1
exec "$py" "$root/tools/host_launcher.py" --listen 127.0.0.1 --port "$PORT" --disable-auto-launch \
  --base-directory "$base" ${db[@]+"${db[@]}"} "$@"
