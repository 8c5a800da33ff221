"""Loader-level fuzzing: mutate real fixture files, run `plan_checkpoint` + the whole `iter_load`,
and judge the outcome. Shared by tests/test_hostile_files.py (hypothesis and a seeded loop) and the
atheris run (`PYTHONPATH=. python tests/support/loader_fuzz.py --atheris ...` from the repo root, started
by that test as a subprocess).

Every case is one mutated file and an expectation:
- `error`: a `CheckpointError` is required (a wrong weight must not load), naming the file, and
  naming a tensor (one of `tensors` when given);
- `load`:  the file must load (the mutation kept it valid);
- `either`: loads, or refuses cleanly (the mutation may or may not keep it valid).
Whatever the expectation, anything but a clean load or a `CheckpointError` fails the case, a
refusal always names the file (and a tensor when `need_tensor`), every read stays inside the
file, no other file is opened, and a case ends within CASE_SECONDS. A load is checked too: every
weight that came out is finite and every scale positive and finite.

Mutators take an `R` (random source): a seeded `random.Random`, hypothesis's `st.randoms()`, or
atheris's FuzzedDataProvider, so the three drivers share the same mutations.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

CASE_SECONDS = float(os.environ.get("LOADER_FUZZ_CASE_SECONDS", "20"))
FP8_CODES_NAN = 0x7F
E4M3_MAX = 448.0
F32_MAX = float(torch.finfo(torch.float32).max)
# The plausibility limits of quant/scale_range.py, restated (the oracle does not import the rule it
# checks): a larger weight scale, or an input scale outside these, makes the layer meaningless.
WEIGHT_SCALE_MAX = 1e6
INPUT_SCALE_LIMITS = (1e-12, 1e8)

# The fixture files every mutation starts from (tools.ltx2_fixture TINY config, seed 5).
BASES: dict[str, dict] = {
    "ltx-core": dict(encoding="ltx-core"),
    "ltx-core-per-row": dict(encoding="ltx-core", per_row=True, scale_2d=True),
    "ltx-core-transposed": dict(encoding="ltx-core", transposed=True, prefix="diffusion_model."),
    "comfy-native-header": dict(encoding="comfy-native-header", per_row=True),
    "comfy-native-tensor": dict(encoding="comfy-native-tensor"),
    "comfy-legacy": dict(encoding="comfy-legacy"),
    "bf16": dict(encoding="bf16", prefix=""),
}
POLICIES = ("auto", "fp8-cast", "scaled-mm", "bf16", "fp8-cast; transformer_blocks.1.attn1.*=bf16")
KINDS = (
    "header_flip",
    "data_flip",
    "truncate",
    "length_field",
    "offsets",
    "dtype_shape",
    "duplicate_key",
    "non_utf8_name",
    "scale_value",
    "scale_shape",
    "nan_codes",
    "nonfinite_full",
    "hostile_config",
)

_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "C64": 8,
}
_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
PASSENGER_PREFIXES = ("vae.", "audio_vae.", "vocoder.", "text_embedding_projection.")
WEIGHT_SCALES = (".weight_scale", ".scale_weight")
INPUT_SCALES = (".input_scale", ".scale_input")


# ------------------------------------------------------------------------------------------------
# Random sources


class R:
    """The few draws the mutators make, from a random.Random (seeded loop, hypothesis)."""

    def __init__(self, rng):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:  # inclusive
        return self.rng.randint(lo, hi) if hi > lo else lo

    def pick(self, seq):
        seq = list(seq)
        return seq[self.int(0, len(seq) - 1)]

    def chance(self) -> bool:
        return self.int(0, 1) == 1


class FDPR(R):
    """The same draws from atheris's FuzzedDataProvider (coverage-guided choices)."""

    def __init__(self, fdp):
        self.fdp = fdp

    def int(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return lo
        if hi - lo < 2**63:
            return self.fdp.ConsumeIntInRange(lo, hi)
        return lo + self.fdp.ConsumeIntInRange(0, 2**63 - 1) * ((hi - lo) // (2**63 - 1) or 1)


# ------------------------------------------------------------------------------------------------
# Base files


@dataclass
class Entry:
    name: str
    dtype: str
    shape: list
    begin: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass
class Base:
    name: str
    path: str
    raw: bytes
    header: dict  # parsed header, file order
    header_size: int
    prefix: str
    encoding: str
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    @property
    def data(self) -> bytes:
        return self.raw[self.data_start :]

    def keys(self, pred) -> list[str]:
        return [k for k, e in self.entries.items() if pred(k, e)]


def make_bases(directory: str | os.PathLike, seed: int = 5) -> dict[str, Base]:
    from tools.ltx2_fixture import TINY, write_checkpoint

    out = {}
    for name, kw in BASES.items():
        path = os.path.join(os.fspath(directory), f"base-{name}.safetensors")
        kw = dict(kw)
        fx = write_checkpoint(path, TINY, kw.pop("encoding"), seed=seed, **kw)
        out[name] = load_base(name, path, fx.prefix, fx.encoding)
    return out


def load_base(name: str, path: str, prefix: str, encoding: str) -> Base:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = Base(name, path, raw, header, n, prefix, encoding)
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        base.entries[k] = Entry(k, v["dtype"], list(v["shape"]), base.data_start + b, base.data_start + e)
    return base


def is_passenger(name: str) -> bool:
    return name.startswith(PASSENGER_PREFIXES)


def serialize(header_pairs, data: bytes, pad: bool = True) -> bytes:
    """u64 length + JSON text of `header_pairs` ((key, value) pairs or raw bytes) + data."""
    if isinstance(header_pairs, (bytes, bytearray)):
        text = bytes(header_pairs)
    else:
        text = (
            "{" + ",".join(json.dumps(k) + ":" + json.dumps(v, separators=(",", ":")) for k, v in header_pairs) + "}"
        ).encode("utf-8")
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def relayout(base: Base, replace: dict[str, tuple[str, list, bytes]]) -> bytes:
    """The base file re-written with some tensors replaced by (dtype, shape, bytes), offsets redone."""
    pairs, chunks, offset = [], [], 0
    for k, v in base.header.items():
        if k == "__metadata__":
            pairs.append((k, v))
            continue
        e = base.entries[k]
        dtype, shape, blob = replace.get(k, (e.dtype, e.shape, base.raw[e.begin : e.end]))
        pairs.append((k, {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}))
        chunks.append(blob)
        offset += len(blob)
    return serialize(pairs, b"".join(chunks))


# ------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    kind: str
    detail: str
    blob: bytes
    expect: str = "either"  # error | load | either
    tensors: set | None = None  # acceptable err.tensor values (None: any)
    need_tensor: bool = True  # a refusal must name a tensor
    # What building the host model from it must do (the node's path); None: as `expect`. E.g. a
    # renamed key loads in the core (the caller knows which layers the model needs) but the
    # model cannot be built without it.
    bridge_expect: str | None = None


def _pairs(base: Base) -> list:
    return [(k, json.loads(json.dumps(v))) for k, v in base.header.items()]


def _with_entry(base: Base, name: str, value) -> bytes:
    pairs = [(k, value if k == name else v) for k, v in _pairs(base)]
    return serialize(pairs, base.data)


def _rel(base: Base, e: Entry) -> list[int]:
    return [e.begin - base.data_start, e.end - base.data_start]


def _f32_bytes(values) -> bytes:
    return torch.tensor(values, dtype=torch.float32).numpy().tobytes()


def _role(name: str) -> str:
    if name.endswith(WEIGHT_SCALES):
        return "weight_scale"
    if name.endswith(INPUT_SCALES):
        return "input_scale"
    if name.endswith(".comfy_quant"):
        return "comfy_quant"
    if name.endswith("scaled_fp8"):
        return "marker"
    return "tensor"


def tensor_valid(base: Base, name: str, blob: bytes) -> bool | None:
    """Would the loader accept tensor `name` holding `blob`? None: cannot tell (comfy_quant JSON)."""
    e = base.entries[name]
    if is_passenger(name):
        return True
    role = _role(name)
    if role == "comfy_quant":
        return None
    if e.dtype == "F8_E4M3":
        return not any((b & 0x7F) == FP8_CODES_NAN for b in blob)
    t = torch.frombuffer(bytearray(blob), dtype=_TORCH[e.dtype]).float() if blob else torch.zeros(0)
    if role == "weight_scale":
        return bool(
            torch.isfinite(t).all()
            and (t > 0).all()
            and torch.isfinite(t.double() * E4M3_MAX).all()
            and (t.double() * E4M3_MAX <= F32_MAX).all()
            and (t.double() <= WEIGHT_SCALE_MAX).all()  # larger: no trained linear (quant/scale_range.py)
        )
    if role == "input_scale":
        if base.encoding == "comfy-legacy" and t.numel() == 1 and float(t) == 1.0:
            return True
        lo, hi = INPUT_SCALE_LIMITS  # beyond: every activation zero or saturated (quant/scale_range.py)
        return bool(torch.isfinite(t).all() and (t.double() >= lo).all() and (t.double() <= hi).all())
    return bool(torch.isfinite(t).all())


def _fp8_weights(base: Base) -> list[str]:
    return base.keys(lambda k, e: e.dtype == "F8_E4M3" and e.nbytes > 0 and k.endswith(".weight"))


def _scales(base: Base, roles=("weight_scale", "input_scale")) -> list[str]:
    return base.keys(lambda k, e: _role(k) in roles and e.nbytes > 0)


def _rows_of(base: Base, scale_key: str) -> tuple[int, int]:
    """(out, in) of the layer a weight scale belongs to."""
    layer = scale_key.rsplit(".", 1)[0]
    w = base.entries[layer + ".weight"]
    a, b = w.shape
    transposed = base.name == "ltx-core-transposed"
    return (b, a) if transposed else (a, b)


def mut_header_flip(r: R, base: Base) -> Case:
    blob = bytearray(base.raw)
    flips = []
    for _ in range(r.int(1, 4)):
        pos = r.int(8, base.data_start - 1)
        x = r.int(1, 255)
        blob[pos] ^= x
        flips.append((pos, x))
    return Case("header_flip", f"xor {flips}", bytes(blob), "either", need_tensor=False)


def mut_data_flip(r: R, base: Base) -> Case:
    blob = bytearray(base.raw)
    touched = set()
    for _ in range(r.int(1, 4)):
        if r.chance():  # aim at a tensor the loader reads
            k = r.pick(base.keys(lambda k, e: e.nbytes > 0 and not is_passenger(k)))
            e = base.entries[k]
            pos = r.int(e.begin, e.end - 1)
        else:
            pos = r.int(base.data_start, len(blob) - 1)
        blob[pos] ^= r.int(1, 255)
        touched.add(pos)
    names = {k for k, e in base.entries.items() if any(e.begin <= p < e.end for p in touched)}
    verdicts = {k: tensor_valid(base, k, bytes(blob[base.entries[k].begin : base.entries[k].end])) for k in names}
    bad = {k for k, v in verdicts.items() if v is False}
    unknown = {k for k, v in verdicts.items() if v is None}
    detail = f"flipped {sorted(touched)} in {sorted(names)}"
    if bad:
        # A flipped comfy_quant JSON may be refused first (the planner reads it before any weight):
        # naming it is as right as naming the bad tensor.
        return Case("data_flip", detail, bytes(blob), "error", bad | unknown)
    if any(v is None for v in verdicts.values()):
        return Case("data_flip", detail, bytes(blob), "either")
    return Case("data_flip", detail, bytes(blob), "load")


def mut_truncate(r: R, base: Base) -> Case:
    cut = r.pick(
        [
            r.int(0, len(base.raw) - 1),
            r.int(base.data_start, len(base.raw) - 1),
            len(base.raw) - 1,
            r.int(0, 8),
            base.data_start,
        ]
    )
    return Case(
        "truncate", f"cut at {cut} of {len(base.raw)}", base.raw[:cut], "error", need_tensor=cut >= base.data_start
    )


def mut_length_field(r: R, base: Base) -> Case:
    n, size = base.header_size, len(base.raw)
    choice = r.pick(
        [
            0,
            r.int(1, n - 1),
            n - r.int(1, 7),
            n + r.int(1, 16),
            size - 8,
            size - 7,
            size,
            r.int(0, 2**64 - 1),
            2**64 - 1,
            100 * 2**20 + 1,
            2**32 + n,
        ]
    )
    if choice == n:
        choice = n + 1
    blob = struct.pack("<Q", choice % 2**64) + base.raw[8:]
    return Case("length_field", f"header length {n} -> {choice}", blob, "error", need_tensor=False)


def mut_offsets(r: R, base: Base) -> Case:
    k = r.pick(base.keys(lambda k, e: e.nbytes > 0))
    e = base.entries[k]
    b, end = _rel(base, e)
    data_len = len(base.raw) - base.data_start
    other = base.entries[r.pick([o for o in base.entries if o != k and base.entries[o].nbytes > 0])]
    ob, oe = _rel(base, other)
    d = r.pick([-1, 1]) * r.int(1, 16)
    option = r.int(0, 9)
    tensors = {k}
    if option == 0:
        new, what = [b + d, end + d], f"shifted by {d}"
        tensors = None  # the overlapped neighbour may be the one named
    elif option == 1:
        new, what = [b, end + d], f"end moved by {d}"
    elif option == 2:
        new, what = [ob, ob + e.nbytes], f"placed over {other.name}"
        tensors = {k, other.name}
    elif option == 3:
        new, what = [end, b], "reversed"
    elif option == 4:
        s = data_len + r.int(0, 64)
        new, what = [s, s + e.nbytes], "past the end of the file"
    elif option == 5:
        new, what = (
            r.pick(
                [[2**64, 2**64 + e.nbytes], [2**63 - 1, 2**63 - 1 + e.nbytes], [-e.nbytes, 0], [b - 2**64, end - 2**64]]
            ),
            "huge or negative",
        )
    elif option == 6:
        new, what = (
            r.pick([[b], [b, end, end], [], "0", [b, float(end)], [True, end], None, [str(b), str(end)], {"begin": b}]),
            "malformed",
        )
    elif option == 7:
        new, what = [b, b + 2 * e.nbytes], "twice the bytes"
    elif option == 8:
        new, what = [max(0, b - e.nbytes // 2), max(0, b - e.nbytes // 2) + e.nbytes], "half over the previous"
        tensors = None
        if b == 0:
            new, what, tensors = [b + 1, end + 1], "shifted by 1", None
    else:
        new, what = [ob + 1, ob + 1 + e.nbytes] if other.nbytes > 1 else [ob, oe + 1], f"inside {other.name}"
        tensors = None
    value = dict(base.header[k], data_offsets=new)
    return Case(
        "offsets", f"{k}: data_offsets {_rel(base, e)} -> {new} ({what})", _with_entry(base, k, value), "error", tensors
    )


INVALID_DTYPES = ["F4", "float32", "", "f32", None, 7, ["F32"], "F8_E8M0", "Q4_0"]
INT_DTYPES = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


def mut_dtype_shape(r: R, base: Base) -> Case:
    k = r.pick(list(base.entries))
    e = base.entries[k]
    v = dict(base.header[k])
    numel = math.prod(e.shape)
    option = r.int(0, 5)
    expect, tensors = "error", {k}
    if option == 0:
        v["dtype"] = r.pick(INVALID_DTYPES)
    elif option == 1:  # another valid dtype: a different byte count, or the same one
        v["dtype"] = r.pick([d for d in _ITEMSIZE if d != e.dtype])
        same = _ITEMSIZE[v["dtype"]] == _ITEMSIZE[e.dtype] or numel == 0
        if same:
            expect, tensors = "either", None
            if (
                not is_passenger(k)
                and numel > 0
                and _role(k) in ("tensor", "weight_scale", "input_scale")
                and v["dtype"] in INT_DTYPES
            ):
                # A float tensor of the model re-labelled as integers is no weight: refused.
                expect, tensors = "error", {k}
    elif option == 2:  # a shape with a different element count
        shape = list(e.shape)
        how = r.int(0, 3)
        if how == 0 or not shape:
            shape = shape + [r.int(2, 5)]
        elif how == 1:
            shape[r.int(0, len(shape) - 1)] += r.pick([-1, 1, 7])
        elif how == 2:
            shape = shape[:-1]
        else:
            shape = [numel + 1]
        v["shape"] = shape
        if math.prod(shape) == numel:
            expect, tensors = "either", None
    elif option == 3:  # shape values that are not dimensions
        v["shape"] = r.pick(
            [
                [-1],
                [1.5],
                ["3"],
                [True],
                [[2]],
                [1] * 65,
                None,
                "64",
                {"0": 1},
                e.shape + [-(2**64)],
                [2**64] + e.shape,
                [2**63, 0],
            ]
        )
    elif option == 4:  # the same byte count, another shape
        shape = list(e.shape)
        v["shape"] = r.pick([shape[::-1], [numel], shape + [1], [1] + shape, [numel, 1]])
        expect, tensors = "either", None
    else:  # entry structure
        v = r.pick([None, [], "x", 1, {"dtype": e.dtype}, {"dtype": e.dtype, "shape": e.shape}, {**v, "extra": 1}])
        if isinstance(v, dict) and "extra" in v:
            expect, tensors = "either", None
    return Case("dtype_shape", f"{k}: {base.header[k]} -> {v}", _with_entry(base, k, v), expect, tensors)


def _text_pairs(pairs) -> bytes:
    return (
        "{"
        + ",".join(
            p if isinstance(p, str) else json.dumps(p[0]) + ":" + json.dumps(p[1], separators=(",", ":")) for p in pairs
        )
        + "}"
    ).encode("utf-8")


def mut_duplicate_key(r: R, base: Base) -> Case:
    pairs = _pairs(base)
    tensor_keys = [k for k, _ in pairs if k != "__metadata__"]
    k = r.pick(tensor_keys)
    option = r.int(0, 5)
    out = []
    need, tensors = True, {k}
    for key, v in pairs:
        out.append((key, v))
        if key != k:
            continue
        if option == 0:
            out.append((key, v))
            what = "entry repeated"
        elif option == 1:
            other = base.header[r.pick([t for t in tensor_keys if t != k])]
            out.append((key, other))
            what = "entry repeated with another's value"
        elif option == 2:
            out[-1] = (
                json.dumps(key)
                + ":"
                + '{"dtype":'
                + json.dumps(v["dtype"])
                + ',"dtype":'
                + json.dumps(v["dtype"])
                + ',"shape":'
                + json.dumps(v["shape"])
                + ',"data_offsets":'
                + json.dumps(v["data_offsets"])
                + "}"
            )
            what = "dtype twice inside the entry"
        else:
            what = None
    if option >= 3:  # __metadata__ level: no tensor to name
        need, tensors = False, None
        meta = dict(base.header.get("__metadata__", {}))
        out = [p for p in out if p[0] != "__metadata__"] if option != 3 else out
        if option == 3:
            out.append(("__metadata__", meta))
            what = "__metadata__ twice"
        elif option == 4:
            body = ",".join(json.dumps(a) + ":" + json.dumps(b) for a, b in meta.items())
            out.insert(0, '"__metadata__":{' + body + ',"model_version":"9"}')
            what = "a key twice inside __metadata__"
        else:
            cfg = meta["config"]
            meta = dict(meta, config=cfg[:-1] + ',"transformer":{}}')
            out.insert(0, ("__metadata__", meta))
            what = "a key twice inside the config JSON"
    return Case("duplicate_key", f"{k}: {what}", serialize(_text_pairs(out), base.data), "error", tensors, need)


def mut_non_utf8_name(r: R, base: Base) -> Case:
    k = r.pick([k for k in base.entries])
    text = _text_pairs(_pairs(base))
    quoted = json.dumps(k).encode()
    at = text.index(quoted) + 1 + r.int(0, len(k) - 1)
    option = r.int(0, 3)
    if option == 0:
        bad = r.pick([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80"])
        blob_text = text[:at] + bad + text[at + 1 :]
        return Case(
            "non_utf8_name", f"{k}: raw bytes {bad!r}", serialize(blob_text, base.data), "error", need_tensor=False
        )
    if option == 1:
        esc = r.pick([b"\\ud800", b"\\udfff", b"\\udc80x"])
        blob_text = text[:at] + esc + text[at + 1 :]
        return Case("non_utf8_name", f"{k}: lone surrogate {esc!r}", serialize(blob_text, base.data), "error")
    ch = r.pick(["é", "层", "\\u0000", "\u202e", "\\n", " ", "\\\\"]).encode("utf-8")
    blob_text = text[:at] + ch + text[at + 1 :]
    # A renamed passenger is still a passenger (or ignored). A renamed model key is not the model's:
    # the core refuses it inside the transformer, or leaves it out (a renamed prefix: a key outside
    # the transformer is ignored with a warning), and building the model then refuses the file for
    # the missing tensor. Optional keys (input scales, comfy_quant, the legacy marker) may go.
    bridge = "either" if is_passenger(k) or _role(k) in ("input_scale", "comfy_quant", "marker") else "error"
    return Case(
        "non_utf8_name",
        f"{k}: a character replaced by {ch!r}",
        serialize(blob_text, base.data),
        "either",
        bridge_expect=bridge,
    )


# name -> (value, loads as a weight scale, loads as an input scale). Beyond finite and positive,
# quant/scale_range.py refuses what makes a layer meaningless: an input scale above 1e8 (every
# activation quantizes to zero) or below 1e-12 (every activation saturates), a weight scale above
# 1e6; a tiny weight scale (tiny weights, e.g. an all-zero row) and merely implausible ones load
# with a warning.
SCALE_VALUES = {
    "nan": (float("nan"), False, False),
    "inf": (float("inf"), False, False),
    "-inf": (float("-inf"), False, False),
    "zero": (0.0, False, False),
    "-zero": (-0.0, False, False),
    "negative": (-0.01, False, False),
    "-tiny": (-1e-30, False, False),
    "subnormal": (1e-42, True, False),
    "implausible": (1e3, True, True),
    "meaningless-weight": (1e7, False, True),
    "meaningless-both": (1e9, False, False),
    "big": (1e30, False, False),
    "overflowing": (1e38, False, False),
}


def mut_scale_value(r: R, base: Base) -> Case:
    scales = _scales(base)
    if not scales:
        return mut_nonfinite_full(r, base)
    k = r.pick(scales)
    e = base.entries[k]
    name = r.pick(list(SCALE_VALUES))
    value, weight_ok, input_ok = SCALE_VALUES[name]
    ok = input_ok if _role(k) == "input_scale" else weight_ok
    blob = bytearray(base.raw)
    n = e.nbytes // 4
    j = r.int(0, n - 1)
    blob[e.begin + 4 * j : e.begin + 4 * j + 4] = struct.pack("<f", value)
    return Case("scale_value", f"{k}[{j}] = {name}", bytes(blob), "load" if ok else "error", {k})


def mut_scale_shape(r: R, base: Base) -> Case:
    scales = _scales(base)
    if not scales:
        return mut_dtype_shape(r, base)
    k = r.pick(scales)
    e = base.entries[k]
    value = struct.unpack("<f", base.raw[e.begin : e.begin + 4])[0]
    if _role(k) == "weight_scale":
        out, inn = _rows_of(base, k)
        wrong = [[out + 1], [2], [out, 2], [1, out], [1, 1, 1], [0], [out - 1], [2, out]]
        if inn != out:
            wrong.append([inn])
        valid = [[1], [out], [out, 1], []]
    else:
        wrong, valid = [[2], [1, 2], [0], [3, 3]], [[1], [1, 1], []]
    if r.int(0, 3) == 0:
        shape, expect = r.pick(valid), "load"
    else:
        shape, expect = r.pick(wrong), "error"
    blob = _f32_bytes([value] * math.prod(shape))
    return Case(
        "scale_shape", f"{k}: shape {e.shape} -> {shape}", relayout(base, {k: ("F32", shape, blob)}), expect, {k}
    )


def mut_nan_codes(r: R, base: Base) -> Case:
    weights = _fp8_weights(base)
    if not weights:
        return mut_nonfinite_full(r, base)
    k = r.pick(weights)
    e = base.entries[k]
    blob = bytearray(base.raw)
    spots = sorted({r.int(e.begin, e.end - 1) for _ in range(r.int(1, 4))})
    for p in spots:
        blob[p] = r.pick([0x7F, 0xFF])
    return Case("nan_codes", f"{k}: NaN codes at {[p - e.begin for p in spots]}", bytes(blob), "error", {k})


def mut_nonfinite_full(r: R, base: Base) -> Case:
    keys = base.keys(
        lambda k, e: e.dtype in FLOAT_DTYPES and e.nbytes > 0 and not is_passenger(k) and _role(k) == "tensor"
    )
    k = r.pick(keys)
    e = base.entries[k]
    size = _ITEMSIZE[e.dtype]
    j = r.int(0, e.nbytes // size - 1)
    value = r.pick([float("nan"), float("inf"), float("-inf")])
    t = torch.tensor([value], dtype=_TORCH[e.dtype])
    blob = bytearray(base.raw)
    blob[e.begin + j * size : e.begin + (j + 1) * size] = t.view(torch.uint8).numpy().tobytes()
    return Case("nonfinite_full", f"{k}[{j}] = {value}", bytes(blob), "error", {k})


def mut_hostile_config(r: R, base: Base) -> Case:
    pairs = _pairs(base)
    meta = dict(base.header["__metadata__"])
    cfg = json.loads(meta["config"])
    tr = cfg["transformer"]
    option = r.int(0, 4)
    if option == 0:
        key = r.pick(
            [
                "connector_num_layers",
                "num_layers",
                "num_attention_heads",
                "attention_head_dim",
                "audio_connector_attention_head_dim",
                "in_channels",
                "caption_channels",
            ]
        )
        tr[key] = r.pick([10**9, 2**63, 10**30, -1, -(10**9), 0, 1.5, "2", None, [2], {"a": 1}, True, 1e308])
        what = f"config transformer {key} = {tr[key]!r}"
    elif option == 1:
        cfg["transformer"] = r.pick([None, [], "x", 1, {}])
        what = f"config transformer = {cfg['transformer']!r}"
    elif option == 2:
        nested = "[" * 100000 + "]" * 100000
        meta["config"] = r.pick(['{"transformer":' + nested + "}", nested, "{", "", "null", "1e999999"])
        what = "config text replaced"
        cfg = None
    elif option == 3:  # a key whose block index is huge: the block count comes from the keys
        k = r.pick(
            [k for k in base.entries if ".transformer_blocks.1." in "." + k or k.startswith("transformer_blocks.1.")]
        )
        new = k.replace(
            "transformer_blocks.1.", "transformer_blocks." + r.pick(["999999999", "2", "10", str(2**70)]) + ".", 1
        )
        pairs = [(new if a == k else a, v) for a, v in pairs]
        what = f"{k} renamed {new}"
    else:
        meta["_quantization_metadata"] = r.pick(
            [
                "{}",
                '{"layers": []}',
                '{"layers": {"x": {"format": "int4"}}}',
                "[1]",
                "{",
                json.dumps({"layers": {base.prefix + "transformer_blocks.1.attn1.to_q": {"format": "nvfp4"}}}),
                json.dumps({"layers": {base.prefix + "transformer_blocks.1.attn1.to_q": []}}),
            ]
        )
        what = f"_quantization_metadata = {meta['_quantization_metadata'][:60]}"
    if cfg is not None:
        meta["config"] = json.dumps(cfg)
    pairs = [(a, meta if a == "__metadata__" else v) for a, v in pairs]
    return Case("hostile_config", what, serialize(pairs, base.data), "either", need_tensor=False)


MUTATORS = {
    "header_flip": mut_header_flip,
    "data_flip": mut_data_flip,
    "truncate": mut_truncate,
    "length_field": mut_length_field,
    "offsets": mut_offsets,
    "dtype_shape": mut_dtype_shape,
    "duplicate_key": mut_duplicate_key,
    "non_utf8_name": mut_non_utf8_name,
    "scale_value": mut_scale_value,
    "scale_shape": mut_scale_shape,
    "nan_codes": mut_nan_codes,
    "nonfinite_full": mut_nonfinite_full,
    "hostile_config": mut_hostile_config,
}
assert set(MUTATORS) == set(KINDS)


# ------------------------------------------------------------------------------------------------
# Running one case


def module(pkg: str, name: str):
    import importlib

    return importlib.import_module(f"{pkg}.{name}")


class Guard:
    """Instruments quant's file access: which files are opened, and that every read and every
    mapping lies inside the file (`offset + size <= file size`; the 8-byte length prefix may be cut by a tiny file).
    `pkg` is the quant package: `quant`, or the pack's copy the host imported."""

    def __init__(self, pkg: str = "quant"):
        # plan.py opens the file to plan, stream.py to read the weights: watch both.
        self.planner, self.streamer = module(pkg, "plan"), module(pkg, "stream")
        self.sh = module(pkg, "safetensors_header")
        self.opened: list[str] = []
        self.violations: list[str] = []
        self.reads = 0

    def _open(self, file, *a, **kw):
        self.opened.append(os.fspath(file))
        return open(file, *a, **kw)

    def __enter__(self):
        sh, guard = self.sh, self
        self._orig = (sh._read_at, sh._read_exactly_into, sh._map_region)
        read_at, read_into, map_region = self._orig

        def checked_read_at(f, offset, size, path):
            guard._check(f, offset, size, allow_short=(offset == 0 and size == 8))
            return read_at(f, offset, size, path)

        def checked_read_into(f, offset, buf, path, name):
            guard._check(f, offset, len(buf), allow_short=False, name=name)
            return read_into(f, offset, buf, path, name)

        def checked_map_region(f, offset, size, path, name):
            # A mapping past the end of the file would kill the process (SIGBUS) when touched.
            guard._check(f, offset, size, allow_short=False, name=name)
            return map_region(f, offset, size, path, name)

        sh._read_at, sh._read_exactly_into, sh._map_region = checked_read_at, checked_read_into, checked_map_region
        self.planner.open = self.streamer.open = self._open
        sh.open = self._open
        return self

    def _check(self, f, offset, size, allow_short, name=None):
        self.reads += 1
        file_size = os.fstat(f.fileno()).st_size
        if offset < 0 or size < 0 or (offset + size > file_size and not allow_short):
            self.violations.append(f"read of {size} bytes at {offset} ({name}) outside a {file_size}-byte file")

    def __exit__(self, *exc):
        self.sh._read_at, self.sh._read_exactly_into, self.sh._map_region = self._orig
        for m in (self.planner, self.streamer, self.sh):
            with contextlib.suppress(AttributeError):
                del m.open
        return False


@dataclass
class Outcome:
    loaded: bool
    error: Exception | None = None
    items: int = 0
    seconds: float = 0.0


def load_all(path: str, policy: str, pkg: str = "quant") -> Outcome:
    """plan_checkpoint + the whole iter_load; returns the outcome. Exceptions other than
    CheckpointError propagate (they are failures)."""
    CheckpointError = module(pkg, "errors").CheckpointError
    QuantLayer = module(pkg, "layer").QuantLayer
    plan_checkpoint, iter_load = module(pkg, "plan").plan_checkpoint, module(pkg, "stream").iter_load
    caps = module(pkg, "device").DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)
    t0 = time.monotonic()
    items = 0
    try:
        plan = plan_checkpoint(path, policy, device=caps)
        for name, item in iter_load(plan):
            items += 1
            _check_loaded(name, item, QuantLayer)
    except CheckpointError as e:
        return Outcome(False, e, items, time.monotonic() - t0)
    return Outcome(True, None, items, time.monotonic() - t0)


def _check_loaded(name, item, QuantLayer) -> None:
    """What came out of a load is a usable weight: finite values, positive finite scales."""
    if isinstance(item, QuantLayer):
        if item.scale is not None:
            assert torch.isfinite(item.scale).all() and (item.scale > 0).all(), f"{name}: bad scale loaded"
            assert torch.isfinite(item.effective_weight(torch.float32)).all(), f"{name}: non-finite weight loaded"
        else:
            assert torch.isfinite(item.weight.float()).all(), f"{name}: non-finite weight loaded"
        if item.bias is not None:
            assert torch.isfinite(item.bias.float()).all(), f"{name}: non-finite bias loaded"
    elif item.is_floating_point():
        assert torch.isfinite(item.float()).all(), f"{name}: non-finite tensor loaded"


def build_model(path: str, policy: str, pack: str) -> Outcome:
    """The node's path in-process: plan + the host's LTXAV model built by the bridge (needs the
    host imported, `pack` = the pack's package name). A built model must hold no meta tensor (a
    parameter the file never filled) and only finite weights."""
    CheckpointError = module(pack, "quant.errors").CheckpointError
    plan_checkpoint = module(pack, "quant.plan").plan_checkpoint
    build = module(pack, "bridge.host_model").build_model_patcher
    caps = module(pack, "quant.device").DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)
    cpu = torch.device("cpu")
    t0 = time.monotonic()
    try:
        plan = plan_checkpoint(path, policy, device=caps)
        patcher = build(plan, load_device=cpu, offload_device=cpu)
    except CheckpointError as e:
        return Outcome(False, e, 0, time.monotonic() - t0)
    n = 0
    for name, t in list(patcher.model.diffusion_model.named_parameters()) + list(
        patcher.model.diffusion_model.named_buffers()
    ):
        if t is None:
            continue
        n += 1
        assert t.device.type != "meta", f"{name}: never loaded (still a meta tensor)"
        if t.is_floating_point() and t.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
            assert torch.isfinite(t).all(), f"{name}: non-finite values in the built model"
    del patcher
    return Outcome(True, None, n, time.monotonic() - t0)


def judge(case: Case, path: str, out: Outcome, guard: Guard, stage: str = "core") -> str:
    """'loaded' or 'refused'; raises AssertionError with the whole story on a violation."""
    story = f"[{case.kind}] ({stage}) {case.detail}\n  file {path}\n"
    if stage == "bridge":
        case = Case(case.kind, case.detail, b"", case.bridge_expect or case.expect, case.tensors, case.need_tensor)
    assert not guard.violations, story + "  reads outside the file: " + "; ".join(guard.violations[:3])
    strangers = {p for p in guard.opened if os.path.realpath(p) != os.path.realpath(path)}
    assert not strangers, story + f"  opened other files: {sorted(strangers)}"
    assert out.seconds < CASE_SECONDS, story + f"  took {out.seconds:.1f} s (hang?)"
    if out.loaded:
        assert case.expect != "error", story + f"  LOADED ({out.items} items) but must be refused"
        return "loaded"
    err = out.error
    msg = str(err)
    assert case.expect != "load", story + f"  refused but must load: {msg}"
    assert err.file == path and f"file {path}" in msg, story + f"  error does not name the file: {msg}"
    if case.need_tensor:
        assert err.tensor, story + f"  error names no tensor: {msg}"
    if err.tensor:
        assert f"tensor {err.tensor}" in msg, story + f"  message does not show the tensor: {msg}"
    if case.tensors is not None:
        assert err.tensor in case.tensors, (
            story + f"  error names {err.tensor!r}, expected one of {sorted(case.tensors)}: {msg}"
        )
    return "refused"


def run_case(case: Case, path: str, policy: str, pack: str | None = None) -> str:
    """Write the case, load it with the core (`quant`, or the pack's copy when `pack` is given)
    and, when `pack` is given, build the host model from it too. Returns 'loaded' or 'refused'
    (what the node would do); AssertionError on any violation."""
    Path(path).write_bytes(case.blob)
    pkg = "quant" if pack is None else pack + ".quant"
    with Guard(pkg) as guard:
        out = load_all(path, policy, pkg)
    verdict = judge(case, path, out, guard)
    if pack is not None and verdict == "loaded":
        with Guard(pkg) as guard:
            out = build_model(path, policy, pack)
        verdict = judge(case, path, out, guard, "bridge")
    return verdict


def generate(r: R, bases: dict[str, Base], kind: str | None = None) -> tuple[Case, str]:
    kind = kind or r.pick(KINDS)
    base = bases[r.pick(sorted(bases))]
    policy = r.pick(POLICIES)
    return MUTATORS[kind](r, base), policy


# ------------------------------------------------------------------------------------------------
# atheris driver: PYTHONPATH=. python tests/support/loader_fuzz.py --atheris WORKDIR COUNTS.json [libFuzzer flags]


def _atheris_main(argv: list[str]) -> None:
    import atheris

    workdir, counts_path = argv[0], argv[1]
    with atheris.instrument_imports(include=["quant"]):
        import quant.encodings  # noqa: F401
        import quant.fp8  # noqa: F401
        import quant.layout  # noqa: F401
        import quant.plan  # noqa: F401
        import quant.safetensors_header  # noqa: F401
        import quant.stream  # noqa: F401
    bases = make_bases(workdir)
    path = os.path.join(workdir, "case.safetensors")
    counts: dict[str, dict[str, int]] = {}

    def one_input(data: bytes) -> None:
        r = FDPR(atheris.FuzzedDataProvider(data))
        case, policy = generate(r, bases)
        verdict = run_case(case, path, policy)
        c = counts.setdefault(case.kind, {"loaded": 0, "refused": 0})
        c[verdict] += 1
        tmp = counts_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, counts_path)

    atheris.Setup([sys.argv[0]] + argv[2:], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--atheris":
        _atheris_main(sys.argv[2:])
    else:
        sys.exit(
            "usage: PYTHONPATH=. python tests/support/loader_fuzz.py --atheris WORKDIR COUNTS.json [libFuzzer flags]"
        )
