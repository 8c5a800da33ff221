"""Files that a live model uses: the pack never writes over one of them.

The bridge registers the checkpoint a model was built from (with the model as owner); the entry
goes away when the model is garbage-collected. A writer (quant/safetensors_writer.py) refuses an
output that is, by path or by inode, a registered file: replacing the file under a model that
reads from it, or that the user believes came from it, would make the two disagree silently.
"""

from __future__ import annotations

import os
import threading
import weakref

_lock = threading.Lock()
# token -> (realpath, (st_dev, st_ino) or None, description)
_entries: dict[int, tuple[str, tuple[int, int] | None, str]] = {}
_next = 0


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def register(path: str | os.PathLike, owner: object | None = None, what: str = "a loaded model") -> int:
    """Mark `path` as used; with `owner`, until `owner` is garbage-collected (else until `release`)."""
    global _next
    path = os.fspath(path)
    entry = (os.path.realpath(path), _identity(path), what)
    with _lock:
        _next += 1
        token = _next
        _entries[token] = entry
    if owner is not None:
        weakref.finalize(owner, release, token)
    return token


def release(token: int) -> None:
    with _lock:
        _entries.pop(token, None)


def user_of(path: str | os.PathLike) -> str | None:
    """What uses `path` (a description), or None."""
    path = os.fspath(path)
    real, ident = os.path.realpath(path), _identity(path)
    with _lock:
        for p, i, what in _entries.values():
            if p == real or (ident is not None and i == ident):
                return f"{what}: {p}"
    return None
