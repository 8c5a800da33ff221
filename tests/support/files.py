"""Fixture files for the refusal tests: intact checkpoints to start from, and copies of them with keys
dropped, added or replaced and metadata changed (written by safetensors itself, so only the change
under test is wrong)."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from tools import ltx2_fixture as LF


def base_files(d: Path, seed: int) -> dict[str, LF.Fixture]:
    """One intact file per encoding (bundle prefix) for the rewrite-based cases."""
    return {enc: LF.write_checkpoint(d / f"{enc}.safetensors", LF.TINY, enc, seed=seed) for enc in LF.ENCODINGS}


def rewrite(src: str, dst: Path, *, drop=(), add=None, replace=None, metadata=None) -> str:
    """Copy a safetensors file with keys dropped / added / replaced and metadata changed."""
    with safe_open(src, "pt") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    sd.update(add or {})
    sd.update(replace or {})
    if metadata:
        meta.update(metadata)
    save_file(sd, str(dst), metadata=meta)
    return str(dst)
