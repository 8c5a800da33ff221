"""quant/ram_guard.py: the core's whole-model load (`stream.load`) is refused before a byte is read
when what it converts cannot fit the RAM available, saying what would fit; the RAM probe reads the
kernel's MemAvailable."""

from __future__ import annotations

import pytest

from quant import ram_guard
from quant import stream as stream_mod
from quant.plan import plan_checkpoint
from quant.ram_guard import LoadRefused, private_bytes_by_preset
from quant.stream import load
from tools.ltx2_fixture import TINY, write_checkpoint


@pytest.fixture(scope="module")
def fp8_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("guard") / "m.safetensors"
    write_checkpoint(p, TINY, "ltx-core", seed=3)
    return str(p)


def test_a_core_load_that_cannot_fit_is_refused_before_reading(fp8_file, monkeypatch):
    need = private_bytes_by_preset(plan_checkpoint(fp8_file, "bf16"))
    assert need["bf16"] > need["fp8-cast"]  # bf16 dequantizes every fp8 weight into private memory
    monkeypatch.setattr(ram_guard, "ram_available", lambda: (need["bf16"] + need["fp8-cast"]) // 2)
    opened = []

    class Counted(stream_mod.TensorSource):  # the loader's one way to a tensor's bytes
        def get(self, info):
            opened.append(info.name)
            return super().get(info)

    monkeypatch.setattr(stream_mod, "TensorSource", Counted)
    with pytest.raises(LoadRefused) as err:
        load(fp8_file, "bf16")
    assert isinstance(err.value, MemoryError)
    msg = str(err.value)
    assert msg.startswith("m.safetensors: not loaded, it would not fit in RAM: policy bf16 needs"), msg
    assert "Policy fp8-cast (or scaled-mm) would fit: try it" in msg
    assert opened == [], "refused before a tensor was read"
    _, layers, _ = load(fp8_file, "fp8-cast")  # what the message advises: loads
    assert layers and opened


def test_the_copy_mode_counts_every_byte(fp8_file, monkeypatch):
    plan = plan_checkpoint(fp8_file, "auto")
    mapped, copied = private_bytes_by_preset(plan, in_ram=False), private_bytes_by_preset(plan, in_ram=True)
    assert copied["requested"] > mapped["requested"]
    monkeypatch.setattr(ram_guard, "ram_available", lambda: (mapped["requested"] + copied["requested"]) // 2)
    load(fp8_file, "auto", in_ram=False)  # file-backed: fits
    with pytest.raises(LoadRefused, match="policy auto needs"):
        load(fp8_file, "auto", in_ram=True)


def test_no_probe_no_refusal(fp8_file, monkeypatch):
    monkeypatch.setattr(ram_guard, "ram_available", lambda: None)  # e.g. no /proc/meminfo
    _, layers, _ = load(fp8_file, "bf16")
    assert layers


def test_the_probe_reads_memavailable():
    avail = ram_guard.ram_available()
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    kib = int(fields["MemAvailable"].split()[0])
    total = int(fields["MemTotal"].split()[0]) * 1024
    assert avail is not None and 0 < avail <= total
    assert abs(avail - kib * 1024) < 0.05 * total  # the same figure, read a moment apart
