"""Small helpers for the reliability tests against the real host (test_paths_and_files.py,
test_faults.py, test_soak.py): API prompts for the pack's nodes, reading their outputs from the
history, fixture files in the host's model folders, file fingerprints."""

from __future__ import annotations

import hashlib
import json
import os

from tools.ltx2_fixture import TINY, config, write_checkpoint

from . import hostlib


def loader(name: str, policy: str = "auto", rules: str = "", activation: str = "static") -> dict:
    return {
        "class_type": "LTXFP8CheckpointLoader",
        "inputs": {
            "ckpt_name": name,
            "policy": policy,
            "rules": rules,
            "activation_scale": activation,
            "backend": "auto",
        },
    }


def apply_policy(model_ref: list, policy: str, rules: str = "") -> dict:
    return {
        "class_type": "LTXFP8ApplyQuantPolicy",
        "inputs": {
            "model": model_ref,
            "policy": policy,
            "rules": rules,
            "activation_scale": "static",
            "backend": "auto",
        },
    }


def vram_report(*model_refs) -> dict:
    inputs = {"model": model_refs[0]}
    for i, ref in enumerate(model_refs[1:], 2):
        inputs[f"model_{i}"] = ref
    return {"class_type": "LTXFP8VRAMReport", "inputs": inputs}


def preview(ref: list) -> dict:
    """The host's own "Preview as Text": shows a STRING (e.g. the loader's report) in the history."""
    return {"class_type": "PreviewAny", "inputs": {"source": ref}}


def load_prompt(name: str, policy: str = "auto", rules: str = "") -> dict:
    """Loader -> VRAM Report, and the loader's report text previewed (node 3)."""
    return {"1": loader(name, policy, rules), "2": vram_report(["1", 0]), "3": preview(["1", 1])}


def vram(entry: dict, node: str = "2") -> dict:
    """The VRAM Report JSON of `node` in a history entry."""
    return json.loads(entry["outputs"][node]["ltx_fp8_vram"][0])


def text(entry: dict, node: str = "3") -> str:
    return entry["outputs"][node]["text"][0]


def cached_nodes(entry: dict) -> set[str]:
    for msg in (entry.get("status") or {}).get("messages") or []:
        if msg[0] == "execution_cached":
            return set(msg[1].get("nodes") or [])
    return set()


def error(entry: dict) -> dict | None:
    return hostlib.execution_error(entry)


def write(host, name: str, folder: str = "checkpoints", cfg=TINY, encoding: str = "ltx-core", **kw):
    """A fixture checkpoint in one of the host's model folders (tools.ltx2_fixture)."""
    return write_checkpoint(host.model_dir(folder) / name, cfg, encoding, **kw)


def fingerprint(path) -> tuple[str, int, int]:
    """(sha256, size, mtime_ns) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    st = os.stat(path)
    return h.hexdigest(), st.st_size, st.st_mtime_ns


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


__all__ = [
    "TINY",
    "config",
    "write_checkpoint",
    "loader",
    "apply_policy",
    "vram_report",
    "preview",
    "load_prompt",
    "vram",
    "text",
    "cached_nodes",
    "error",
    "write",
    "fingerprint",
    "mib",
]


def sample_prompt(
    name: str,
    policy: str = "auto",
    tag: str = "rel",
    steps: int = 1,
    width: int = 64,
    height: int = 64,
    length: int = 9,
    seed: int = 42,
) -> dict:
    """The single example workflow (loader -> synthetic conditioning -> KSampler -> SaveLatent),
    small and short: `tag` names the saved latents (ltx_fp8/<tag>_video|audio). Node 1 is the
    loader, 21 the sampler, 41 / 42 the SaveLatent nodes; no VRAM report."""
    from tools import demo

    p = demo.single_prompt(tag, ckpt_name=name, policy=policy, rules="")
    p["12"]["inputs"].update(width=width, height=height, length=length)
    p["13"]["inputs"]["frames_number"] = length
    p["21"]["inputs"].update(steps=steps, seed=seed)
    return p


def latents(host, entry: dict) -> dict:
    """{"video": tensor, "audio": tensor} saved by a sample_prompt run."""
    from tools import demo

    paths = demo.saved_latent_paths(host.base_dir / "output", entry)
    return {"video": demo.read_latent(paths["41"]), "audio": demo.read_latent(paths["42"])}
