"""The checkpoints the benchmarks load, generated with tools.ltx2_fixture and kept in bench/out/
(git-ignored): regenerated only when missing or made for another config.

One set per profile, all of the same weights (seed 0), diffusion-model files (no prefix, no
passengers), every block quantized:
- `ltx-core`: fp8 codes + `weight_scale` + `input_scale`, no quant metadata (the official layout);
- `comfy-native-header`: the same + the header's `_quantization_metadata` (what the host loads);
- `bf16`: everything bf16 (the on-the-fly quantization input).
"""

from __future__ import annotations

import json
import os
import sys
import time

ENCODINGS = ("ltx-core", "comfy-native-header", "bf16")
SEED = 0


def profile_config(profile: dict) -> dict:
    from tools import ltx2_fixture as F

    base = getattr(F, profile["base"])
    return F.config(base, num_layers=profile["num_layers"], connector_num_layers=profile["connector_num_layers"])


def file_set_dir(workdir: str, profile: dict) -> str:
    tag = f"{profile['base'].lower()}-L{profile['num_layers']}-C{profile['connector_num_layers']}"
    return os.path.join(workdir, tag)


def _manifest_ok(path: str, want: dict) -> bool:
    try:
        with open(path) as f:
            have = json.load(f)
    except (OSError, ValueError):
        return False
    if have.get("config") != want["config"] or have.get("seed") != want["seed"]:
        return False
    for enc, meta in have.get("files", {}).items():
        p = os.path.join(os.path.dirname(path), f"{enc}.safetensors")
        if not os.path.isfile(p) or os.path.getsize(p) != meta.get("bytes"):
            return False
    return set(have.get("files", {})) == set(ENCODINGS)


def ensure_files(workdir: str, profile: dict) -> dict:
    """Generate the file set if needed; return the manifest {config, seed, files: {enc: {...}}}."""
    from tools import ltx2_fixture as F

    cfg = profile_config(profile)
    d = os.path.abspath(file_set_dir(workdir, profile))
    os.makedirs(d, exist_ok=True)
    mpath = os.path.join(d, "manifest.json")
    want = {"config": cfg, "seed": SEED}
    if _manifest_ok(mpath, want):
        with open(mpath) as f:
            m = json.load(f)
        for enc, meta in m["files"].items():
            meta["path"] = os.path.abspath(os.path.join(d, f"{enc}.safetensors"))
        m["generated"] = False
        return m
    files = {}
    for enc in ENCODINGS:
        path = os.path.join(d, f"{enc}.safetensors")
        t = time.perf_counter()
        fx = F.write_checkpoint(path, cfg, enc, seed=SEED, prefix="", bf16_blocks=(), passengers=False)
        files[enc] = {
            "path": path,
            "bytes": os.path.getsize(path),
            "seconds": time.perf_counter() - t,
            "quantized_layers": len(fx.quantized),
            "tensors": len(fx.keys),
        }
        sys.stderr.write(
            f"[bench files] wrote {path} ({files[enc]['bytes'] / 1e9:.2f} GB, {files[enc]['seconds']:.0f} s)\n"
        )
    m = {"config": cfg, "seed": SEED, "files": files}
    with open(mpath, "w") as f:
        json.dump(m, f, indent=1)
    m["generated"] = True
    return m


def main(argv: list[str]) -> int:
    from .common import emit

    spec = json.loads(argv[0])
    emit(ensure_files(spec["workdir"], spec["profile"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
