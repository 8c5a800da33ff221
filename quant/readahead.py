"""Read-ahead of a file being loaded, from a thread of its own.

The loader maps one tensor at a time, and a mapping's own fault read-around is ~128 KiB: on a cold
file the disk would idle while the loader validates or quantizes a tensor. So the loader says where
it reads (`ReadAhead.reading`) and this thread asks the kernel for the bytes that follow
(`posix_fadvise(POSIX_FADV_WILLNEED)`), a few MiB per call, up to `window` bytes ahead.

A thread, not an inline call: WILLNEED returns only after it has queued the reads of its range,
which blocked the loader itself (0.49 s of a 2.37 s cold load of two bf16 blocks quantized to fp8,
the 48-block LTX-2.3 bundle on this repo's machine). Read-ahead is only a hint: where the OS or the
file system has no `posix_fadvise`, the loader reads the same bytes through its mappings.
"""

from __future__ import annotations

import os
import threading

# Kept requested past the end of the tensor being read: the next tensors' bytes arrive while this
# one is converted (a 4096x16384 bf16 weight is 128 MiB).
WINDOW_BYTES = 256 << 20
# Bytes asked for per call: the thread re-checks the loader's position (and a close) this often.
STEP_BYTES = 16 << 20


class ReadAhead:
    """`with ReadAhead(fd) as ra: ra.reading(begin, end)` before each read of bytes [begin, end)."""

    def __init__(self, fd: int, window: int = WINDOW_BYTES, step: int = STEP_BYTES):
        self.fd, self.window, self.step = fd, window, step
        self._begin = self._until = self._asked = 0  # the reader's range, and how far was asked for
        self._closed = False
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ltx-fp8-readahead", daemon=True)
        self._thread.start()

    def reading(self, begin: int, end: int) -> None:
        """The loader reads bytes [begin, end) now: keep the kernel `window` bytes past `end`."""
        with self._cv:
            back = begin < self._begin  # a read back in the file (not the loader's order): start over there
            if back:
                self._asked = begin
            until = end + self.window if back else max(self._until, end + self.window)
            if (begin, until) != (self._begin, self._until):
                self._begin, self._until = begin, until
                self._cv.notify()

    def close(self) -> None:
        """Stop and wait for the thread (before the file descriptor is closed and maybe reused)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _next_range(self) -> tuple[int, int] | None:
        with self._cv:
            while not self._closed and max(self._asked, self._begin) >= self._until:
                self._cv.wait()
            if self._closed:
                return None
            start = max(self._asked, self._begin)  # never behind the reader: those bytes are in use
            end = min(start + self.step, self._until)
            self._asked = end
            return start, end

    def _run(self) -> None:
        while (rng := self._next_range()) is not None:
            try:
                os.posix_fadvise(self.fd, rng[0], rng[1] - rng[0], os.POSIX_FADV_WILLNEED)
            except (AttributeError, OSError):  # no fadvise here: the mappings still read the bytes
                return
