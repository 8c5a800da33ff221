"""quant/safetensors_writer.py: the streaming writer's file is what safetensors itself reads, byte
for byte what `save_file` would hold per tensor; it is complete or absent (errors, interrupts, a full
disk: the temporary is removed and OUT untouched); it refuses to write over its source or a file a
loaded model uses."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from quant import in_use
from quant.errors import CheckpointError
from quant.safetensors_header import read_header
from quant.safetensors_writer import SafetensorsWriter, TensorSpec, header_bytes, save, stale_temporaries

REPO = Path(__file__).resolve().parents[2]


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    return {
        "a.weight": (w / 0.01).clamp(-448, 448).to(torch.float8_e4m3fn),
        "a.weight_scale": torch.tensor(0.01),
        "a.bias": torch.randn(48, generator=g).to(torch.bfloat16),
        "b.table": torch.randn(3, 5, 7, generator=g, dtype=torch.float64),
        "c.count": torch.arange(10, dtype=torch.int64),
        "d.empty": torch.empty(0, 4, dtype=torch.float16),
        "e.flag": torch.tensor([True, False, True]),
        "f.t": torch.randn(16, 8, generator=g).t(),  # not contiguous
    }


def raw(t: torch.Tensor) -> list[int]:
    return t.contiguous().reshape(-1).view(torch.uint8).tolist()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_round_trip_read_by_safetensors_and_our_reader(tmp_path):
    sd = tensors()
    meta = {"config": json.dumps({"transformer": {"num_layers": 2}}), "model_version": "2.3.0", "ünï": "cödé"}
    out = tmp_path / "o.safetensors"
    save(out, sd, meta)
    back = load_file(str(out))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert raw(back[k]) == raw(v), k
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == meta
    idx = read_header(out)  # our strict reader: no gaps, no overlap, no trailing bytes
    assert list(idx.tensors) == list(sd)
    assert idx.file_size == os.path.getsize(out)
    assert idx.data_start % 8 == 0


def test_header_offsets_are_contiguous_and_padded():
    specs = [TensorSpec("x", "F32", (3,)), TensorSpec("y", "F8_E4M3", (5, 2)), TensorSpec("z", "BF16", ())]
    raw, offsets = header_bytes(specs, {"k": "v"})
    assert offsets == {"x": (0, 12), "y": (12, 22), "z": (22, 24)}
    (n,) = struct.unpack("<Q", raw[:8])
    assert n == len(raw) - 8 and n % 8 == 0
    header = json.loads(raw[8:])
    assert header["__metadata__"] == {"k": "v"}
    assert header["y"] == {"dtype": "F8_E4M3", "shape": [5, 2], "data_offsets": [12, 22]}
    with pytest.raises(ValueError, match="repeated"):
        header_bytes([specs[0], specs[0]], None)
    with pytest.raises(ValueError, match="strings"):
        header_bytes(specs, {"k": 1})


def test_writes_in_any_order_and_checks_each_tensor(tmp_path):
    sd = tensors()
    out = tmp_path / "o.safetensors"
    with SafetensorsWriter(out, [TensorSpec.of(k, v) for k, v in sd.items()]) as w:
        for k in reversed(list(sd)):
            w.write(k, sd[k])
    back = load_file(str(out))
    for k, v in sd.items():
        assert raw(back[k]) == raw(v), k

    for bad, match in (
        (lambda w: w.write("a.bias", torch.zeros(48)), "header says BF16"),
        (lambda w: w.write("a.bias", torch.zeros(47, dtype=torch.bfloat16)), r"header says BF16\[48\]"),
        (lambda w: w.write("nope", torch.zeros(1)), "not in the header"),
        (lambda w: (w.write("c.count", sd["c.count"]), w.write("c.count", sd["c.count"])), "twice"),
        (lambda w: None, "never written"),
    ):
        before = out.read_bytes()
        with pytest.raises(CheckpointError, match=match) as e:
            with SafetensorsWriter(out, [TensorSpec.of(k, v) for k, v in sd.items()]) as w:
                bad(w)
        assert str(out) in str(e.value)
        assert out.read_bytes() == before, "OUT must be untouched by a failed write"
        assert leftovers(tmp_path) == []


def test_raw_copy_is_byte_for_byte(tmp_path):
    src = tmp_path / "src.safetensors"
    sd = {"p": torch.randn(1000, 37), "q": torch.arange(5, dtype=torch.uint8)}
    save(src, sd)
    idx = read_header(src)
    out = tmp_path / "o.safetensors"
    specs = [TensorSpec(i.name, i.dtype, i.shape) for i in idx.tensors.values()]
    with SafetensorsWriter(out, specs, sources=[src]) as w, open(src, "rb", buffering=0) as f:
        for i in idx.tensors.values():
            w.copy(i.name, f, i.begin)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("failure", ["error", "interrupt", "enospc"])
def test_failure_mid_write_leaves_out_untouched_and_no_temporary(tmp_path, monkeypatch, failure):
    import quant.safetensors_writer as W

    sd = tensors()
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"the previous version")
    calls = {"n": 0}
    real = os.pwrite

    def flaky(fd, data, pos):
        calls["n"] += 1
        if calls["n"] == 4:
            if failure == "interrupt":
                raise KeyboardInterrupt
            if failure == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, pos)

    monkeypatch.setattr(W.os, "pwrite", flaky)
    expected = {
        "error": (CheckpointError, "kaboom"),
        "interrupt": (KeyboardInterrupt, None),
        "enospc": (CheckpointError, "disk is full"),
    }[failure]

    def progress(done, total, name):
        if failure == "error" and name == "b.table":
            raise CheckpointError("kaboom")

    with pytest.raises(expected[0], match=expected[1]) as e:
        save(out, sd, progress=progress)
    if failure == "enospc":
        assert str(out) in str(e.value) and isinstance(e.value.__cause__, OSError)
    assert out.read_bytes() == b"the previous version"
    assert leftovers(tmp_path) == []


def test_a_real_write_limit_fails_cleanly(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG, as a full disk refuses with ENOSPC): the
    writer's error names OUT and nothing is left behind."""
    code = (
        "import sys, signal, resource, torch\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "from quant.safetensors_writer import save\n"
        "from quant.errors import CheckpointError\n"
        "try:\n"
        "    save(sys.argv[1], {'big': torch.zeros(100_000, dtype=torch.float32)})\n"
        "except CheckpointError as e:\n"
        "    print('REFUSED', e); sys.exit(3)\n"
    )
    out = tmp_path / "o.safetensors"
    p = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, (p.stdout, p.stderr[-2000:])
    assert "REFUSED" in p.stdout and str(out) in p.stdout and "File too large" in p.stdout
    assert not out.exists() and leftovers(tmp_path) == []


def test_refuses_the_source_by_path_link_and_inode(tmp_path):
    src = tmp_path / "src.safetensors"
    save(src, {"x": torch.ones(3)})
    before = src.read_bytes()
    (tmp_path / "link.safetensors").symlink_to(src)
    os.link(src, tmp_path / "hard.safetensors")
    for target in (
        src,
        tmp_path / "link.safetensors",
        tmp_path / "hard.safetensors",
        tmp_path / "." / "src.safetensors",
    ):
        with pytest.raises(CheckpointError, match="source file"):
            save(target, {"x": torch.zeros(3)}, sources=[src])
    assert src.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_refuses_a_file_a_loaded_model_uses(tmp_path):
    used = tmp_path / "used.safetensors"
    save(used, {"x": torch.ones(3)})

    class Model:
        pass

    model = Model()
    in_use.register(used, model, "model M")
    with pytest.raises(CheckpointError, match="loaded model uses .model M"):
        save(used, {"x": torch.zeros(3)})
    alias = tmp_path / "alias.safetensors"
    os.link(used, alias)
    with pytest.raises(CheckpointError, match="loaded model"):
        save(alias, {"x": torch.zeros(3)})
    del model  # the registration goes with its model
    import gc

    gc.collect()
    save(used, {"x": torch.zeros(3)})
    assert torch.equal(load_file(str(used))["x"], torch.zeros(3))


def test_refuses_a_missing_folder_and_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save(tmp_path / "no" / "o.safetensors", {"x": torch.ones(1)})
    with pytest.raises(CheckpointError, match="is a folder"):
        save(tmp_path, {"x": torch.ones(1)})


def test_stale_temporary_of_a_killed_writer_is_removed(tmp_path):
    out = tmp_path / "o.safetensors"
    # A pid that no longer runs: a child that has exited.
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(p.stdout)
    stale = tmp_path / f".o.safetensors.{dead}.0123abcd.partial"
    stale.write_bytes(b"half a file")
    mine = tmp_path / f".o.safetensors.{os.getpid()}.0123abcd.partial"  # a live writer's: kept
    mine.write_bytes(b"in progress")
    assert stale_temporaries(out) == [str(stale)]
    save(out, {"x": torch.ones(2)})
    assert not stale.exists() and mine.exists()


def test_permissions_follow_the_umask(tmp_path):
    out = tmp_path / "o.safetensors"
    old = os.umask(0o027)
    try:
        save(out, {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o640
