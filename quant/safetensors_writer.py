"""Write a safetensors file one tensor at a time, so that it is complete or absent.

The header (every entry's dtype, shape and offsets, and `__metadata__`) is computed up front from
the tensors' specs and written first; then each tensor's bytes go to their offset as they come, so
peak memory is the one tensor being written, never the whole state dict (safetensors' own
`save_file` needs every tensor in memory at once).

Atomicity: the bytes go to a temporary file in OUT's folder (same filesystem), which is flushed,
fsync'd and `os.replace`d onto OUT only when every tensor has been written and the header read back.
On any error, interrupt (KeyboardInterrupt, a user's Cancel) or full disk (ENOSPC) the temporary is
removed and OUT is left as it was. A process killed outright (SIGKILL) cannot clean up: its
temporary carries its pid in the name and the next writer of the same OUT removes it.

Refusals: OUT the same file as a source being read (same path or inode: writing over it would
destroy the input mid-read), OUT a file a loaded model uses (quant/in_use.py).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from . import in_use
from .errors import CheckpointError
from .safetensors_header import DTYPES, METADATA_KEY, read_header

_LENGTH_PREFIX = 8
_COPY_CHUNK = 16 << 20  # raw copies (passengers) go through one reused 16 MiB buffer
# `.<OUT name>.<pid>.partial`: hidden, next to OUT, and naming the process that writes it.
_TEMP_SUFFIX = ".partial"

TORCH_TO_ST = {dt: name for name, (dt, _) in DTYPES.items()}


def st_dtype(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (`torch.float8_e4m3fn` -> `F8_E4M3`)."""
    try:
        return TORCH_TO_ST[dtype]
    except KeyError:
        raise ValueError(f"{dtype} has no safetensors dtype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One entry of the header to write: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: unknown safetensors dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]

    @classmethod
    def of(cls, name: str, t: torch.Tensor) -> TensorSpec:
        return cls(name, st_dtype(t.dtype), tuple(t.shape))


def header_bytes(specs: Iterable[TensorSpec], metadata: dict[str, str] | None) -> tuple[bytes, dict[str, tuple]]:
    """The header (8-byte length + JSON padded with spaces to a multiple of 8, as safetensors pads
    it) and `{name: (begin, end)}` relative to the data section, tensors laid out in `specs` order
    without gaps (the reference implementation refuses gaps)."""
    header: dict = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"__metadata__ must map strings to strings, not {k!r}: {type(v).__name__}")
        header[METADATA_KEY] = dict(metadata)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for s in specs:
        if s.name == METADATA_KEY or s.name in offsets:
            raise ValueError(f"tensor name {s.name!r} repeated or reserved")
        offsets[s.name] = (pos, pos + s.nbytes)
        header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [pos, pos + s.nbytes]}
        pos += s.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(out: str) -> list[str]:
    """Temporaries of OUT left by writers that no longer run (killed outright)."""
    folder, name = os.path.split(os.path.abspath(out))
    pat = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}{re.escape(_TEMP_SUFFIX)}$")
    stale = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    for e in entries:
        m = pat.match(e)
        if m and not _pid_alive(int(m.group(1))):
            stale.append(os.path.join(folder, e))
    return stale


class SafetensorsWriter:
    """`with SafetensorsWriter(out, specs, metadata, sources=[src]) as w: w.write(name, tensor) ...`

    Every spec must be written exactly once (any order; each at its own offset). Leaving the block
    normally commits (fsync + rename onto OUT); leaving it by an exception aborts (the temporary is
    removed, OUT untouched) and the exception propagates. `progress(done_bytes, total_bytes, name)`
    is called after each tensor; it may raise to cancel (the write then aborts)."""

    def __init__(
        self,
        out: str | os.PathLike,
        specs: Iterable[TensorSpec],
        metadata: dict[str, str] | None = None,
        *,
        sources: Iterable[str | os.PathLike] = (),
        progress: Callable[[int, int, str], None] | None = None,
    ):
        self.out = os.path.abspath(os.fspath(out))
        self.specs = {s.name: s for s in specs}
        self.metadata = metadata
        self.sources = [os.fspath(s) for s in sources]
        self.progress = progress
        self.header, self.offsets = header_bytes(self.specs.values(), metadata)
        self.data_start = len(self.header)
        self.total_bytes = self.data_start + sum(s.nbytes for s in self.specs.values())
        self.done_bytes = 0
        self.written: set[str] = set()
        self.temp: str | None = None
        self._fd: int | None = None

    # -- refusals ---------------------------------------------------------------------------------
    def check_target(self) -> None:
        """Refuse OUT being a source or a file a loaded model uses; OUT's folder must exist."""
        for src in self.sources:
            if _same_file(self.out, src):
                raise CheckpointError(
                    f"refusing to write over the source file {src} (it is being read); choose another output",
                    file=self.out,
                )
        user = in_use.user_of(self.out)
        if user is not None:
            raise CheckpointError(
                f"refusing to write over a file a loaded model uses ({user}); choose another output or unload it",
                file=self.out,
            )
        folder = os.path.dirname(self.out)
        if not os.path.isdir(folder):
            raise CheckpointError(f"the output folder {folder} does not exist", file=self.out)
        if os.path.isdir(self.out):
            raise CheckpointError("the output is a folder; expected a file name", file=self.out)

    # -- the context manager ------------------------------------------------------------------------
    def __enter__(self) -> SafetensorsWriter:
        self.check_target()
        for stale in stale_temporaries(self.out):
            try:
                os.unlink(stale)
            except OSError:
                pass
        folder, name = os.path.split(self.out)
        self.temp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}{_TEMP_SUFFIX}")
        try:
            self._fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._write_at(0, memoryview(self.header), METADATA_KEY)
        except BaseException:
            self.abort()
            raise
        self.done_bytes = self.data_start
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise

    # -- writing ----------------------------------------------------------------------------------
    def spec(self, name: str) -> TensorSpec:
        s = self.specs.get(name)
        if s is None:
            raise CheckpointError(f"tensor {name} is not in the header being written", file=self.out, tensor=name)
        if name in self.written:
            raise CheckpointError("tensor written twice", file=self.out, tensor=name)
        return s

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor (CPU or not, contiguous or not) at its offset; its dtype and shape must
        be the header's."""
        s = self.spec(name)
        if st_dtype(tensor.dtype) != s.dtype or tuple(tensor.shape) != s.shape:
            raise CheckpointError(
                f"tensor is {st_dtype(tensor.dtype)}{list(tensor.shape)} but the header says {s.dtype}{list(s.shape)}",
                file=self.out,
                tensor=name,
            )
        t = tensor.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        if t.numel():
            self._write_at(self.data_start + self.offsets[name][0], memoryview(t.view(torch.uint8).numpy()), name)
        self._done(name, s.nbytes)

    def copy(self, name: str, src, offset: int) -> None:
        """Copy `name`'s bytes as they are from the open file `src` at `offset` (byte for byte,
        through one reused buffer: no tensor is built)."""
        s = self.spec(name)
        remaining, pos, dst = s.nbytes, offset, self.data_start + self.offsets[name][0]
        buf = bytearray(min(_COPY_CHUNK, max(remaining, 1)))
        view = memoryview(buf)
        try:
            while remaining:
                n = min(remaining, len(buf))
                src.seek(pos)
                got = src.readinto(view[:n])
                if not got:
                    raise CheckpointError(
                        f"short read from {getattr(src, 'name', 'the source')} at byte {pos}",
                        file=self.out,
                        tensor=name,
                    )
                self._write_at(dst, view[:got], name)
                remaining, pos, dst = remaining - got, pos + got, dst + got
        finally:
            view.release()
        self._done(name, s.nbytes)

    def _done(self, name: str, nbytes: int) -> None:
        self.written.add(name)
        self.done_bytes += nbytes
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes, name)

    def _write_at(self, pos: int, data: memoryview, name: str) -> None:
        try:
            while len(data):
                n = os.pwrite(self._fd, data, pos)
                data, pos = data[n:], pos + n
        except OSError as e:
            what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            raise CheckpointError(
                f"cannot write at byte {pos} ({what}); nothing was written to the output (temporary removed)",
                file=self.out,
                tensor=None if name == METADATA_KEY else name,
            ) from e

    # -- ending -----------------------------------------------------------------------------------
    def commit(self) -> None:
        missing = [n for n in self.specs if n not in self.written]
        if missing:
            raise CheckpointError(
                f"{len(missing)} tensor(s) of the header never written, first {missing[0]}",
                file=self.out,
                tensor=missing[0],
            )
        try:
            os.fchmod(self._fd, 0o666 & ~_umask())  # mkstemp-style 0600 would surprise the user
            os.fsync(self._fd)
        except OSError as e:
            raise CheckpointError(f"cannot flush the output ({e.strerror or e})", file=self.out) from e
        os.close(self._fd)
        self._fd = None
        # Read the header back from the temporary: what a loader will see (offsets, sizes).
        index = read_header(self.temp)
        if index.file_size != self.total_bytes or len(index.tensors) != len(self.specs):
            raise CheckpointError(
                f"written file holds {index.file_size} bytes and {len(index.tensors)} tensors, expected "
                f"{self.total_bytes} and {len(self.specs)}",
                file=self.out,
            )
        self.check_target()  # again: a model may have started using OUT meanwhile
        os.replace(self.temp, self.out)
        self.temp = None
        try:  # the rename itself is durable once the folder is synced
            dfd = os.open(os.path.dirname(self.out), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass

    def abort(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self.temp is not None:
            try:
                os.unlink(self.temp)
            except FileNotFoundError:
                pass
            self.temp = None


def save(
    out: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
    **kw,
) -> None:
    """Write a small state dict atomically (tests, tools): the same writer, tensors in dict order."""
    with SafetensorsWriter(out, [TensorSpec.of(k, t) for k, t in tensors.items()], metadata, **kw) as w:
        for k, t in tensors.items():
            w.write(k, t)


__all__ = ["SafetensorsWriter", "TensorSpec", "header_bytes", "save", "st_dtype", "stale_temporaries"]
