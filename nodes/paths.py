"""Which files the loader may open: only .safetensors inside the host's model folders."""

from __future__ import annotations

import os

import folder_paths

from ..quant.errors import CheckpointError

MODEL_FOLDERS = ("checkpoints", "diffusion_models")
SAFE_SUFFIXES = (".safetensors", ".sft")


def checkpoint_names() -> list[str]:
    names = []
    for folder in MODEL_FOLDERS:
        for n in folder_paths.get_filename_list(folder):
            if n.lower().endswith(SAFE_SUFFIXES) and n not in names:
                names.append(n)
    return sorted(names)


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, os.path.realpath(r)]) == os.path.realpath(r) for r in roots)


def resolve_checkpoint(name: str) -> str:
    """The absolute path of `name`, refusing anything that leads outside the model folders:
    `..`, absolute paths, and symlinks whose target is elsewhere (a path
    traversal through a widget value would read any file the server can)."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise CheckpointError(
            f"checkpoint name {name!r} must be a relative name inside the {' / '.join(MODEL_FOLDERS)} folders",
            file=str(name),
        )
    if not name.lower().endswith(SAFE_SUFFIXES):
        raise CheckpointError(
            "only .safetensors files are loaded; pickle formats (.ckpt, .pt, .bin) are never unpickled", file=name
        )
    for folder in MODEL_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path is None:
            continue
        # A link from one model folder into another (checkpoints -> diffusion_models) stays inside.
        roots = [r for f in MODEL_FOLDERS for r in folder_paths.get_folder_paths(f)]
        if not _inside(path, roots):
            raise CheckpointError(
                f"resolves outside the {' / '.join(MODEL_FOLDERS)} folders (symlink to "
                f"{os.path.realpath(path)}); refusing to load it",
                file=name,
            )
        return path
    raise CheckpointError(f"not found in the {' or '.join(MODEL_FOLDERS)} folders", file=name)
