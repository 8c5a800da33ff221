"""quant/safetensors_header.py: valid files parse like safetensors' own loader; every malformed
file is refused with a CheckpointError that names the file and the tensor; random and mutated
files never raise anything else."""

from __future__ import annotations

import json
import math
import os
import random
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from quant.errors import CheckpointError
from quant.safetensors_header import (
    DTYPES,
    HeaderIndex,
    TensorInfo,
    open_checkpoint,
    read_header,
    read_tensor,
    refuse_pickle,
)

# ---------------------------------------------------------------------------------------------
# helpers


def header_bytes(entries) -> bytes:
    """JSON text of an object from (key, value) pairs, so tests can write duplicate keys."""
    if isinstance(entries, dict):
        entries = list(entries.items())
    body = ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in entries)
    return ("{" + body + "}").encode("utf-8")


def write_raw(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else header_bytes(header)
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def entry(dtype="F32", shape=(3,), offsets=(0, 12)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def refused(path: Path, tensor: str | None, *fragments: str, **kwargs) -> CheckpointError:
    """read_header(path) must raise a CheckpointError naming `path`, `tensor` and each fragment."""
    with pytest.raises(CheckpointError) as info:
        read_header(path, **kwargs)
    err = info.value
    message = str(err)
    assert err.file == str(path)
    assert str(path) in message
    if tensor is not None:
        assert err.tensor == tensor
        assert f"tensor {tensor}" in message
    for fragment in fragments:
        assert fragment in message, message
    return err


def as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).tolist())


def assert_index_sound(index: HeaderIndex, raw: bytes) -> None:
    """Everything a caller relies on: every tensor inside the file, right size, no overlap."""
    assert index.file_size == len(raw)
    (header_size,) = struct.unpack("<Q", raw[:8])
    assert index.header_size == header_size
    data_start = 8 + header_size
    assert data_start <= len(raw)
    spans = []
    for name, info in index.tensors.items():
        assert isinstance(info, TensorInfo) and info.name == name and name
        assert info.dtype in DTYPES and info.torch_dtype == DTYPES[info.dtype][0]
        assert all(isinstance(d, int) and d >= 0 for d in info.shape)
        assert data_start <= info.begin <= info.end <= len(raw)
        assert info.end - info.begin == info.nbytes == info.numel * DTYPES[info.dtype][1]
        spans.append((info.begin, info.end))
    spans.sort()
    for (_b0, e0), (b1, _e1) in zip(spans, spans[1:], strict=False):
        assert e0 <= b1, (spans, "overlap")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in index.metadata.items())


def assert_reads_match(index: HeaderIndex, path: Path, raw: bytes) -> None:
    with open(path, "rb") as f:
        for info in index.tensors.values():
            try:
                t = read_tensor(f, info, str(path))
            except CheckpointError as e:  # only BOOL tensors with bytes other than 0/1
                assert info.dtype == "BOOL" and e.tensor == info.name
                continue
            assert t.dtype == info.torch_dtype and tuple(t.shape) == info.shape
            assert as_bytes(t) == raw[info.begin : info.end]


ALL_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    return {
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight": (x * 50).to(torch.float8_e4m3fn),
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight_scale": torch.tensor(0.0013),
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.bias": torch.randn(4, generator=g).bfloat16(),
        "f64": torch.randn(2, 3, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, generator=g).half(),
        "e5m2": x.to(torch.float8_e5m2),
        "i64": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.arange(7, dtype=torch.int32).reshape(7, 1),
        "i16": torch.tensor([-1, 2, 300], dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "scalar_i8": torch.tensor(5, dtype=torch.int8),
        "vae.décodeur.权重": torch.ones(2, 2),
    }


METADATA = {
    "config": json.dumps({"transformer": {"num_layers": 48, "apply_gated_attention": True}}),
    "model_version": "2.3.0",
    "_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {"model.diffusion_model.x": {"format": "float8_e4m3fn"}}}
    ),
}


@pytest.fixture
def real_file(tmp_path) -> Path:
    path = tmp_path / "real.safetensors"
    save_file(sample_tensors(), str(path), metadata=METADATA)
    return path


# ---------------------------------------------------------------------------------------------
# valid files


def test_dtype_table_covers_the_required_names():
    for name, dtype in ALL_DTYPES.items():
        assert DTYPES[name] == (dtype, dtype.itemsize)


def test_valid_file_matches_safetensors(real_file):
    index = read_header(real_file)
    reference = load_file(str(real_file))
    raw = real_file.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header_order = [k for k in json.loads(raw[8 : 8 + header_size]) if k != "__metadata__"]

    assert index.path == str(real_file)
    assert index.file_size == len(raw) and index.header_size == header_size
    assert list(index.tensors) == header_order  # insertion order = header order
    assert set(index.tensors) == set(reference)
    assert index.metadata == METADATA
    assert_index_sound(index, raw)
    with open(real_file, "rb") as f:
        for name, ref in reference.items():
            info = index.tensors[name]
            assert info.torch_dtype == ref.dtype and info.shape == tuple(ref.shape)
            assert info.numel == ref.numel() and info.nbytes == ref.numel() * ref.element_size()
            t = read_tensor(f, info, str(real_file))
            assert t.dtype == ref.dtype and t.shape == ref.shape and t.device.type == "cpu"
            assert as_bytes(t) == as_bytes(ref), name  # bitwise, also for fp8 and NaN


def test_read_tensor_returns_its_own_buffer(real_file):
    with open_checkpoint(real_file) as (index, f):
        info = index.tensors["f64"]
        a = read_tensor(f, info)  # no path given: errors would take it from f.name
        b = read_tensor(f, info)
        assert a.untyped_storage().nbytes() == info.nbytes
        a.zero_()
        assert not torch.equal(a, b)
        assert torch.equal(b, load_file(str(real_file))["f64"])


def test_open_checkpoint_yields_index_and_file(real_file):
    with open_checkpoint(real_file) as (index, f):
        assert index == read_header(real_file)
        t = read_tensor(f, index.tensors["i64"], index.path)
        assert t.tolist() == [-3, -2, -1, 0, 1, 2]
    assert f.closed


def test_json_metadata(real_file):
    index = read_header(real_file)
    assert index.json_metadata("config")["transformer"]["num_layers"] == 48
    assert index.json_metadata("_quantization_metadata")["format_version"] == "1.0"
    assert index.json_metadata("absent") is None


def test_no_metadata_and_null_metadata(tmp_path):
    p = write_raw(tmp_path / "a.safetensors", {"x": entry()}, bytes(12))
    assert read_header(p).metadata == {}
    p = write_raw(tmp_path / "b.safetensors", {"__metadata__": None, "x": entry()}, bytes(12))
    assert read_header(p).metadata == {}
    p = write_raw(tmp_path / "c.safetensors", {"__metadata__": {}}, b"")
    index = read_header(p)
    assert index.tensors == {} and index.metadata == {}


def test_zero_size_tensors_between_neighbours(tmp_path):
    header = {"a": entry("F32", [1], [0, 4]), "e": entry("F32", [0, 5], [4, 4]), "b": entry("I8", [2], [4, 6])}
    p = write_raw(tmp_path / "z.safetensors", header, bytes(6))
    index = read_header(p)
    with open(p, "rb") as f:
        assert read_tensor(f, index.tensors["e"]).shape == (0, 5)


# ---------------------------------------------------------------------------------------------
# refusals: the length prefix and the JSON


def test_file_shorter_than_length_prefix(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x05\x00\x00")
    refused(p, None, "8-byte header length")


def test_header_length_zero(tmp_path):
    refused(write_raw(tmp_path / "z.safetensors", b"", length=0), None, "header length is 0")


def test_header_length_past_end_of_file(tmp_path):
    p = write_raw(tmp_path / "p.safetensors", {"x": entry()}, bytes(12), length=10_000)
    refused(p, None, "header length 10000 runs past the end of the file")


def test_header_length_over_the_limit(tmp_path):
    p = write_raw(tmp_path / "l.safetensors", {"x": entry()}, bytes(12))
    refused(p, None, "exceeds the limit of 16 bytes", max_header_bytes=16)
    p = write_raw(tmp_path / "huge.safetensors", b"{}", length=2**64 - 1)
    refused(p, None, "exceeds the limit")


def test_zip_under_safetensors_name_gets_a_hint(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"PK\x03\x04" + bytes(100))
    refused(p, None, "zip archive")


def test_header_not_utf8(tmp_path):
    refused(write_raw(tmp_path / "u.safetensors", b'{"\xff": 1}'), None, "not valid UTF-8")


def test_header_not_json(tmp_path):
    refused(write_raw(tmp_path / "j.safetensors", b'{"x": '), None, "not valid JSON")


def test_header_not_an_object(tmp_path):
    refused(write_raw(tmp_path / "o.safetensors", b"[1, 2]"), None, "expected a JSON object")


def test_deeply_nested_header(tmp_path):
    depth = 100_000
    nested = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
    refused(write_raw(tmp_path / "n1.safetensors", nested), None, "nested too deeply")
    refused(write_raw(tmp_path / "n2.safetensors", b"[" * depth + b"]" * depth), None, "nested too deeply")
    deep_objects = b'{"a":' * depth + b"1" + b"}" * depth
    refused(write_raw(tmp_path / "n3.safetensors", deep_objects), None, "nested too deeply")


def test_huge_integer_literal(tmp_path):
    raw = b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    refused(write_raw(tmp_path / "h.safetensors", raw, bytes(4)), None, "not valid JSON")


def test_duplicate_tensor_name(tmp_path):
    header = [("x", entry()), ("x", entry(offsets=(12, 24)))]
    refused(write_raw(tmp_path / "d.safetensors", header, bytes(24)), "x", "more than once")


def test_duplicate_key_inside_entry(tmp_path):
    raw = b'{"w": {"dtype": "F32", "dtype": "I32", "shape": [3], "data_offsets": [0, 12]}}'
    refused(write_raw(tmp_path / "d.safetensors", raw, bytes(12)), "w", "repeats the key 'dtype'")


def test_duplicate_key_inside_metadata(tmp_path):
    raw = b'{"__metadata__": {"config": "{}", "config": "[]"}}'
    refused(write_raw(tmp_path / "d.safetensors", raw), None, "__metadata__ repeats the key 'config'")


# ---------------------------------------------------------------------------------------------
# refusals: entries


BAD_ENTRIES = [
    ("not_object", [1, 2], "entry is a JSON array; expected an object"),
    ("no_dtype", {"shape": [3], "data_offsets": [0, 12]}, "no 'dtype'"),
    ("no_shape", {"dtype": "F32", "data_offsets": [0, 12]}, "no 'shape'"),
    ("no_offsets", {"dtype": "F32", "shape": [3]}, "no 'data_offsets'"),
    ("unknown_dtype", entry(dtype="F128"), "unknown dtype 'F128'"),
    ("dtype_not_str", entry(dtype=7), "unknown dtype 7"),
    ("shape_not_list", {"dtype": "F32", "shape": 3, "data_offsets": [0, 12]}, "shape is a JSON number"),
    ("negative_dim", entry(shape=[-3]), "shape contains -3; expected integers >= 0"),
    ("float_dim", entry(shape=[3.0]), "shape contains 3.0"),
    ("bool_dim", entry(shape=[True]), "shape contains True"),
    ("too_many_dims", entry(shape=[1] * 65, offsets=(0, 4)), "65 dimensions"),
    ("dim_past_int64", entry(shape=[0, 2**63], offsets=(0, 0)), "exceeds 2**63 - 1"),
    ("empty_but_strides_overflow", entry(shape=[0, 2, 2**62], offsets=(0, 0)), "spans more than 2**63 - 1"),
    ("offsets_one_int", entry(offsets=(12,)), "data_offsets is [12]; expected [begin, end]"),
    ("offsets_three_ints", entry(offsets=(0, 6, 12)), "expected [begin, end]"),
    ("offsets_not_list", {"dtype": "F32", "shape": [3], "data_offsets": "0-12"}, "expected [begin, end]"),
    ("offsets_floats", entry(offsets=(0.0, 12.0)), "expected [begin, end] integers"),
    ("begin_after_end", entry(offsets=(12, 0)), "[12, 0]; expected 0 <= begin <= end"),
    ("negative_begin", entry(offsets=(-12, 0)), "expected 0 <= begin <= end"),
    ("wrong_byte_count", entry(offsets=(0, 10)), "data_offsets [0, 10] hold 10 bytes but F32[3] needs 12"),
    ("huge_shape", entry(shape=[2**62, 2**62, 2**62], offsets=(0, 12)), "spans more than 2**63 - 1"),
    (
        "shape_bigger_than_file",
        entry(shape=[2**31, 2**31], offsets=(0, 12)),
        "F32[2147483648, 2147483648] needs 18446744073709551616",
    ),
    ("past_end", entry(offsets=(12, 24)), "data_offsets [12, 24] end at byte"),
    ("huge_offsets", entry(shape=[0], offsets=(2**200, 2**200)), "a 201-bit integer"),
]


@pytest.mark.parametrize("name,bad,fragment", BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES])
def test_bad_entry(tmp_path, name, bad, fragment):
    header = {"good": entry(offsets=(0, 12)), name: bad}
    if name == "past_end":
        header = {name: bad}
    p = write_raw(tmp_path / f"{name}.safetensors", header, bytes(12))
    refused(p, name, fragment)


def test_empty_tensor_name(tmp_path):
    refused(write_raw(tmp_path / "e.safetensors", {"": entry()}, bytes(12)), None, "empty tensor name")


def test_lone_surrogate_name(tmp_path):
    raw = b'{"bad\\ud800name": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}'
    err = refused(write_raw(tmp_path / "s.safetensors", raw, bytes(12)), "bad\\ud800name", "surrogate")
    str(err).encode("utf-8")  # the message itself stays printable


def test_overlapping_tensors(tmp_path):
    header = {"a": entry("F32", [4], [0, 16]), "b": entry("F32", [2], [8, 16])}
    refused(write_raw(tmp_path / "o.safetensors", header, bytes(16)), "b", "bytes [", "overlap tensor a")


def test_overlap_found_after_sorting(tmp_path):
    header = {
        "c": entry("I8", [4], [10, 14]),
        "a": entry("I8", [10], [0, 10]),
        "b": entry("I8", [6], [4, 10]),
    }
    refused(write_raw(tmp_path / "o.safetensors", header, bytes(14)), "b", "overlap tensor a")


def test_zero_size_tensor_inside_another_is_refused(tmp_path):
    header = {"a": entry("I8", [8], [0, 8]), "e": entry("I8", [0], [4, 4])}
    refused(write_raw(tmp_path / "o.safetensors", header, bytes(8)), "e", "overlap tensor a")


def test_metadata_not_object(tmp_path):
    refused(write_raw(tmp_path / "m.safetensors", {"__metadata__": ["a"]}), None, "__metadata__ is a JSON array")


@pytest.mark.parametrize("value", [1, None, {"a": "b"}, ["x"], True])
def test_metadata_values_must_be_strings(tmp_path, value):
    p = write_raw(tmp_path / "m.safetensors", {"__metadata__": {"config": value}})
    refused(p, None, "__metadata__['config']", "expected a string")


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1, "a": 2}', "repeats the JSON key 'a'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_json_metadata_malformed(tmp_path, text, fragment):
    p = write_raw(tmp_path / "m.safetensors", {"__metadata__": {"config": text}})
    index = read_header(p)
    with pytest.raises(CheckpointError) as info:
        index.json_metadata("config")
    assert info.value.file == str(p) and str(p) in str(info.value)
    assert "config" in str(info.value) and fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# refusals: reading tensors, opening files


def test_short_read_names_tensor(real_file, tmp_path):
    name = "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight"
    index = read_header(real_file)
    info = index.tensors[name]
    with open(real_file, "r+b") as w:  # the file shrinks after its header was read
        w.truncate(info.begin + 3)
    with open(real_file, "rb") as f:
        with pytest.raises(CheckpointError) as err:
            read_tensor(f, info, index.path)
    assert err.value.tensor == name and err.value.file == str(real_file)
    assert "short read: got 3 of 24 bytes" in str(err.value) and name in str(err.value)


def test_read_tensor_refuses_inconsistent_info(real_file):
    with open(real_file, "rb") as f:
        for bad, fragment in [
            (TensorInfo("w", "F32", (3,), 0, 10), "needs 12"),
            (TensorInfo("w", "Q8", (3,), 0, 3), "unknown dtype 'Q8'"),
        ]:
            with pytest.raises(CheckpointError, match=fragment) as err:
                read_tensor(f, bad)  # the file's name comes from f.name
            assert err.value.tensor == "w" and err.value.file == str(real_file)
    with open_checkpoint(real_file) as (_, f):  # opened from a Path: f.name is a Path
        with pytest.raises(CheckpointError) as err:
            read_tensor(f, TensorInfo("w", "F32", (3,), 0, 10))
        assert err.value.file == str(real_file)


def test_bool_bytes_other_than_0_1(tmp_path):
    p = write_raw(tmp_path / "b.safetensors", {"flags": entry("BOOL", [3], [0, 3])}, b"\x00\x01\x07")
    with open_checkpoint(p) as (index, f):
        with pytest.raises(CheckpointError, match="other than 0 and 1") as err:
            read_tensor(f, index.tensors["flags"], index.path)
    assert err.value.tensor == "flags" and str(p) in str(err.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".PT", ".Ckpt"])
def test_pickle_suffixes_refused(tmp_path, suffix):
    p = tmp_path / f"model{suffix}"
    p.write_bytes(b"\x80\x04 not even opened")
    for call in (refuse_pickle, read_header):
        with pytest.raises(CheckpointError, match="pickle formats are never unpickled; convert to safetensors") as err:
            call(p)
        assert err.value.file == str(p)
    with pytest.raises(CheckpointError, match="pickle"):
        with open_checkpoint(p):
            pass
    refuse_pickle(tmp_path / "model.safetensors")  # other names pass
    refuse_pickle(tmp_path / "model.pt.safetensors")


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "absent.safetensors", None, "cannot open")
    refused(tmp_path, None, "cannot open")


# ---------------------------------------------------------------------------------------------
# property tests


KNOWN = list(DTYPES)
tensor_names = st.text(min_size=1, max_size=12) | st.sampled_from(["a", "b", "é", "层", "blocks.0.w"])
FLAWS = [
    "gap",
    "off_by_one",
    "random_offsets",
    "overlap",
    "odd_dim",
    "unknown_dtype",
    "wrong_type",
    "special_name",
    "bad_metadata",
    "length_field",
    "truncate",
]


@st.composite
def random_files(draw):
    """A random header and its data: consistent about half the time, else with 1-3 flaws."""
    flaws = draw(st.lists(st.sampled_from(FLAWS), max_size=3)) if draw(st.booleans()) else []
    entries, cursor = [], 0
    for name in draw(st.lists(tensor_names, max_size=6, unique=True)):
        dtype = draw(st.sampled_from(KNOWN))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = DTYPES[dtype][1] * math.prod(shape)
        begin = cursor
        if "gap" in flaws and draw(st.booleans()):
            begin += draw(st.integers(1, 8))
        offsets = [begin, begin + size]
        if "off_by_one" in flaws and draw(st.booleans()):
            offsets[draw(st.integers(0, 1))] += draw(st.sampled_from([-1, 1]))
        if "random_offsets" in flaws and draw(st.booleans()):
            offsets = draw(st.lists(st.integers(-2, 300) | st.integers(-(2**65), 2**65), min_size=0, max_size=3))
        if "overlap" in flaws and entries and draw(st.booleans()):
            other = draw(st.sampled_from(entries))[1]
            theirs = other.get("data_offsets") if isinstance(other, dict) else None
            if theirs and isinstance(theirs[0], int):
                offsets = [theirs[0], theirs[0] + size]
        if "odd_dim" in flaws and draw(st.booleans()):
            shape = shape + [draw(st.sampled_from([-1, 2**62, 2**63, 2**64, 1.0, True, None, "3"]))]
        if "unknown_dtype" in flaws and draw(st.booleans()):
            dtype = draw(st.sampled_from(["F4", "float32", "", "f32", None, 4]))
        if "special_name" in flaws and draw(st.booleans()):
            name = draw(st.sampled_from(["", "__metadata__", "a"]))
        value = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if "wrong_type" in flaws and draw(st.booleans()):
            value = draw(st.sampled_from([None, 1, "x", [], {}, {"dtype": "F32"}]))
        entries.append((name, value))
        if len(offsets) == 2 and all(isinstance(o, int) for o in offsets) and 0 <= offsets[1] < 4096:
            cursor = max(cursor, offsets[1])  # huge offsets get no data behind them
    if draw(st.booleans()):
        values = st.text(max_size=5) | st.integers() if "bad_metadata" in flaws else st.text(max_size=5)
        metadata = draw(st.dictionaries(st.text(max_size=5), values, max_size=3))
        entries.insert(draw(st.integers(0, len(entries))), ("__metadata__", metadata))
    raw = header_bytes(entries)
    if draw(st.booleans()):  # safetensors pads the header with spaces to a multiple of 8
        raw += b" " * draw(st.integers(0, 7))
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(cursor + draw(st.integers(0, 4)))
    length = len(raw)
    if "length_field" in flaws:
        length = draw(st.integers(0, 2**64 - 1) | st.integers(max(0, length - 4), length + 4))
    blob = struct.pack("<Q", length) + raw + data
    if "truncate" in flaws:
        blob = blob[: draw(st.integers(0, len(blob)))]
    return entries, blob


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """One folder for all examples (each overwrites its file): a folder per example would leave
    thousands behind for pytest to clean up."""
    return tmp_path_factory.mktemp("fuzz")


PROPERTY_SETTINGS = settings(
    # ~3 s each at 400; HEADER_FUZZ_EXAMPLES=20000 for a longer local run.
    max_examples=int(os.environ.get("HEADER_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY_SETTINGS
@given(case=random_files())
def test_random_headers_refused_or_sound(fuzz_dir, case):
    entries, blob = case
    path = fuzz_dir / "r.safetensors"
    path.write_bytes(blob)
    try:
        index = read_header(path)
    except CheckpointError as e:
        assert e.file == str(path) and str(path) in str(e)
        event("refused")
        return
    event(f"accepted with {min(len(index.tensors), 3)}+ tensors")
    assert_index_sound(index, blob)
    assert list(index.tensors) == [n for n, _ in entries if n != "__metadata__"]
    assert_reads_match(index, path, blob)


def torch_cannot_hold(shape) -> bool:
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        return False
    return math.prod(max(d, 1) for d in shape) > 2**63 - 1


@PROPERTY_SETTINGS
@given(case=random_files())
def test_whatever_safetensors_accepts_we_accept_identically(fuzz_dir, case):
    """Differential: a file the reference loader reads must read the same here, except for the
    rules we add on purpose (unique, non-empty names; known dtypes only; shapes torch can
    hold; BOOL bytes 0/1)."""
    from safetensors import safe_open

    entries, blob = case
    tensor_names = [n for n, _ in entries if n != "__metadata__"]
    assume(len(set(tensor_names)) == len(tensor_names) and all(tensor_names))
    # safetensors also knows sub-byte and e8m0 dtypes (F4, F6_*, F8_E8M0) that no LTX file uses.
    assume(all(not isinstance(v, dict) or v.get("dtype") in DTYPES for n, v in entries if n != "__metadata__"))
    # Empty tensors whose other dims multiply past int64 are refused on purpose: torch's view
    # path gives them wrapped-around strides, torch.empty refuses them.
    assume(not any(isinstance(v, dict) and torch_cannot_hold(v.get("shape")) for _, v in entries))
    path = fuzz_dir / "d.safetensors"
    path.write_bytes(blob)
    try:
        with safe_open(str(path), framework="pt") as f:
            reference = {k: f.get_tensor(k) for k in f.keys()}
            reference_meta = f.metadata() or {}
    except Exception:
        event("reference refuses")
        return  # the reference refuses: we may refuse or accept (we allow gaps)
    event("reference accepts")
    index = read_header(path)
    assert set(index.tensors) == set(reference) and index.metadata == reference_meta
    with open(path, "rb") as f:
        for name, ref in reference.items():
            info = index.tensors[name]
            if info.dtype == "BOOL" and any(b > 1 for b in blob[info.begin : info.end]):
                continue
            t = read_tensor(f, info)
            assert t.dtype == ref.dtype and t.shape == ref.shape and as_bytes(t) == as_bytes(ref)


@st.composite
def mutations(draw):
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "length", "truncate"]))
        pos = draw(st.integers(0, 10_000))
        if kind == "flip":
            ops.append((kind, pos, draw(st.integers(0, 7))))
        elif kind == "set":
            ops.append((kind, pos, draw(st.sampled_from(b'{}[]",: 0189\\-eE\xff\x00'))))
        elif kind == "insert":
            ops.append(
                (
                    kind,
                    pos,
                    draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b",", b"{", b"]", b"-1", b"1e9"])),
                )
            )
        elif kind == "delete":
            ops.append((kind, pos, draw(st.integers(1, 8))))
        elif kind == "length":
            ops.append((kind, draw(st.integers(-16, 16) | st.integers(0, 2**64 - 1)), None))
        else:
            ops.append((kind, pos, None))
    return ops


def apply_mutations(blob: bytes, ops) -> bytes:
    b = bytearray(blob)
    for kind, a, c in ops:
        if kind == "length":
            (n,) = struct.unpack("<Q", bytes(b[:8]).ljust(8, b"\0"))
            n = a if a > 16 else (n + a) % 2**64
            b[:8] = struct.pack("<Q", n)
            continue
        pos = a % (len(b) + 1)
        if kind == "flip" and pos < len(b):
            b[pos] ^= 1 << c
        elif kind == "set" and pos < len(b):
            b[pos] = c
        elif kind == "insert":
            b[pos:pos] = c
        elif kind == "delete":
            del b[pos : pos + c]
        elif kind == "truncate":
            del b[pos:]
    return bytes(b)


@pytest.fixture(scope="module")
def small_real_blob(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("base") / "base.safetensors"
    tensors = {k: v for k, v in sample_tensors().items() if k in ("f16", "i8", "bool", "empty", "scalar_i8", "e5m2")}
    save_file(tensors, str(path), metadata={"config": '{"transformer": {"n": 2}}'})
    return path.read_bytes()


@PROPERTY_SETTINGS
@given(ops=mutations())
def test_mutated_real_file_refused_or_sound(fuzz_dir, small_real_blob, ops):
    blob = apply_mutations(small_real_blob, ops)
    path = fuzz_dir / "m.safetensors"
    path.write_bytes(blob)
    try:
        with open_checkpoint(path) as (index, f):
            pass
    except CheckpointError as e:
        assert e.file == str(path) and str(path) in str(e)
        event("refused")
        return
    event("accepted")
    assert_index_sound(index, blob)
    assert_reads_match(index, path, blob)
    try:
        index.json_metadata("config")
    except CheckpointError as e:
        assert e.file == str(path)
