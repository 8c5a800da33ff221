"""quant/readahead.py: the thread asks the kernel for the bytes past the loader's position, never
those behind it, at most `window` ahead, and stops on close; the real kernel then holds those pages
(util-linux `fincore`); a descriptor without fadvise ends the thread quietly."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from quant import readahead
from quant.readahead import ReadAhead

MIB = 1 << 20


class Asked:
    """The real `posix_fadvise` calls' ranges, recorded (the call itself still happens)."""

    def __init__(self, monkeypatch):
        self.ranges: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        real = os.posix_fadvise

        def record(fd, offset, length, advice):
            with self.lock:
                self.ranges.append((offset, offset + length))
            return real(fd, offset, length, advice)

        monkeypatch.setattr(readahead.os, "posix_fadvise", record)

    def until(self, end: int, after: int = 0, timeout: float = 10.0) -> list[tuple[int, int]]:
        """The ranges once a call after the first `after` ones reached byte `end`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if any(e >= end for _, e in self.ranges[after:]):
                    return list(self.ranges)
            time.sleep(0.005)
        raise AssertionError(f"read-ahead never reached byte {end}: {self.ranges}")


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "data.bin"
    with open(p, "wb") as f:
        f.truncate(64 * MIB)  # sparse: the ranges matter here, not the bytes
    return p


def test_asks_for_the_window_past_the_reader_in_steps_and_never_behind_it(data_file, monkeypatch):
    asked = Asked(monkeypatch)
    with open(data_file, "rb") as f, ReadAhead(f.fileno(), window=8 * MIB, step=MIB) as ra:
        ra.reading(0, 2 * MIB)
        first = asked.until(10 * MIB)
        assert first[0][0] == 0
        assert all(b == a2 for (_, b), (a2, _) in zip(first, first[1:], strict=False)), "contiguous"
        assert all(e - b <= MIB for b, e in first), "one step per call"
        assert first[-1][1] == 10 * MIB, "exactly the window past the tensor's end"
        time.sleep(0.05)
        assert asked.ranges == first, "nothing past the window"
        # The loader skips ahead (a `names` filter): the bytes it skipped are never asked for.
        ra.reading(30 * MIB, 31 * MIB)
        later = asked.until(39 * MIB, after=len(first))[len(first) :]
        assert later[0][0] == 30 * MIB and later[-1][1] == 39 * MIB
        assert all(b >= 30 * MIB for b, _ in later)
    n = len(asked.ranges)
    assert not ra._thread.is_alive(), "close() waits for the thread"
    time.sleep(0.05)
    assert len(asked.ranges) == n, "no call after close()"


def test_a_read_back_in_the_file_starts_over_there(data_file, monkeypatch):
    asked = Asked(monkeypatch)
    with open(data_file, "rb") as f, ReadAhead(f.fileno(), window=4 * MIB, step=MIB) as ra:
        ra.reading(40 * MIB, 41 * MIB)
        n = len(asked.until(45 * MIB))
        ra.reading(MIB, 2 * MIB)  # a second pass (verify reads a reference file beside the loaded one)
        back = asked.until(6 * MIB, after=n)[n:]
        assert back[0][0] == MIB and back[-1][1] == 6 * MIB


def _cached_bytes(path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def test_the_kernel_then_holds_the_pages_ahead(tmp_path):
    if shutil.which("fincore") is None:
        pytest.skip("util-linux fincore is not installed")
    p = tmp_path / "cold.bin"
    with open(p, "wb") as f:
        f.write(os.urandom(4 * MIB) * 8)  # 32 MiB of real blocks
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if _cached_bytes(p) > 4 * MIB:
        pytest.skip(f"this file system keeps the pages whatever is advised ({tmp_path})")
    with open(p, "rb", buffering=0) as f, ReadAhead(f.fileno(), window=16 * MIB, step=4 * MIB) as ra:
        ra.reading(0, MIB)
        deadline = time.monotonic() + 20
        while _cached_bytes(p) < 17 * MIB and time.monotonic() < deadline:
            time.sleep(0.02)
        cached = _cached_bytes(p)
    assert cached >= 17 * MIB, f"{cached} bytes cached, expected the first MiB and 16 MiB past it"


def test_a_descriptor_without_fadvise_ends_the_thread_quietly():
    r, w = os.pipe()  # fadvise on a pipe: ESPIPE
    try:
        ra = ReadAhead(r, window=MIB, step=MIB)
        ra.reading(0, MIB)
        ra._thread.join(timeout=10)
        assert not ra._thread.is_alive()
        ra.close()  # still fine after the thread ended on its own
    finally:
        os.close(r)
        os.close(w)
