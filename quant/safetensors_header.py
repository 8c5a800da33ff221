"""Strict reader of the safetensors container: the header, and the tensors, file-backed.

Why not `safetensors.safe_open`: it maps the whole file in one private mapping (torch's
`UntypedStorage.from_file`), which the kernel refuses for a file larger than RAM, and the
checkpoints this pack loads are 30-46 GB. We read the header (8 + header_size bytes) ourselves and
validate every entry against the file before a single tensor byte is touched. Then each large
tensor is mapped on its own (`TensorSource`): a copy-on-write mapping of the pages around it, so
its bytes stay file-backed (the OS pages them in and out like any file cache, no private copy) and
no mapping ever has to fit in RAM. Small tensors are read into fresh memory. A truncated or hostile
file is refused with a message naming the file and the tensor instead of crashing somewhere later.

File layout (https://github.com/huggingface/safetensors, "Format"):
    u64 little-endian N | N bytes of UTF-8 JSON header | data section
    header = {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"<str>": "<str>", ...}}   (optional)
    begin/end are relative to the start of the data section (8 + N).

Every refusal is a `CheckpointError`; bad input never surfaces as KeyError, TypeError,
OverflowError, RecursionError or MemoryError.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from .errors import CheckpointError
from .readahead import ReadAhead

# safetensors dtype string -> (torch dtype, bytes per element). Same names as safetensors.torch.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    name: (dt, dt.itemsize)
    for name, dt in {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U64": torch.uint64,
        "U32": torch.uint32,
        "U16": torch.uint16,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
        "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
        "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
        "C64": torch.complex64,
    }.items()
}

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
METADATA_KEY = "__metadata__"
DEFAULT_MAX_HEADER_BYTES = 100 * 1024 * 1024

# torch sizes and strides are signed 64-bit; a larger shape cannot become a tensor even when one
# dimension is 0. Real checkpoints have <= 5 dims; the cap keeps numel a small-int product.
_MAX_DIM = 2**63 - 1
_MAX_NDIM = 64
_LENGTH_PREFIX = 8


@dataclass(frozen=True)
class TensorInfo:
    """One header entry, validated. begin/end are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype][1]


@dataclass(frozen=True)
class HeaderIndex:
    """The validated header of one file. `tensors` keeps the header's order."""

    path: str
    file_size: int
    header_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def data_start(self) -> int:
        return _LENGTH_PREFIX + self.header_size

    def json_metadata(self, key: str) -> object | None:
        """`metadata[key]` parsed as JSON (e.g. "config", "_quantization_metadata"); None if absent."""
        text = self.metadata.get(key)
        if text is None:
            return None
        try:
            value = _strict_json_loads(text)
        except _DuplicateKeyError as e:
            raise CheckpointError(
                f"__metadata__[{key!r}] repeats the JSON key {_short(e.key)}; expected unique keys",
                file=self.path,
            ) from None
        except _JSON_FAILURES as e:
            raise CheckpointError(
                f"__metadata__[{key!r}] is not valid JSON ({_json_failure(e)})", file=self.path
            ) from None
        return value


# --------------------------------------------------------------------------------------------
# Public entry points


def refuse_pickle(path: str | os.PathLike) -> None:
    """Refuse pickle-based checkpoints by name: unpickling runs arbitrary code."""
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError("pickle formats are never unpickled; convert to safetensors", file=os.fspath(path))


def read_header(path: str | os.PathLike, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> HeaderIndex:
    """Read and validate the header of `path`. Reads only the first 8 + header_size bytes."""
    with _open(path) as f:
        return _read_header_from(f, os.fspath(path), max_header_bytes)


def read_tensor(f: BinaryIO, info: TensorInfo, path: str | None = None) -> torch.Tensor:
    """Read one tensor from the open file `f` into a fresh CPU tensor (no mapping of the file)."""
    path = path if path is not None else _name_of(f)
    nbytes = _check_info(info, path)
    if nbytes == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)

    buf = bytearray(nbytes)
    got = _read_exactly_into(f, info.begin, buf, path, info.name)
    if got != nbytes:
        raise CheckpointError(
            f"short read: got {got} of {nbytes} bytes at offset {info.begin} "
            "(file truncated or changed since its header was read)",
            file=path,
            tensor=info.name,
        )
    raw = torch.frombuffer(buf, dtype=torch.uint8)  # shares `buf`, which the tensor keeps alive
    _check_bool(raw, info, path)
    return raw.view(info.torch_dtype).reshape(info.shape)


def _check_info(info: TensorInfo, path: str | None) -> int:
    """The byte count of `info`, re-checked (only a hand-made TensorInfo can fail here: read_header
    checks every entry)."""
    if info.dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {_short(info.dtype)}", file=path, tensor=info.name)
    nbytes = info.nbytes
    if info.end - info.begin != nbytes:
        raise CheckpointError(
            f"offsets [{info.begin}, {info.end}] hold {info.end - info.begin} bytes "
            f"but {_typed(info.dtype, info.shape)} needs {nbytes}",
            file=path,
            tensor=info.name,
        )
    return nbytes


def _check_bool(raw: torch.Tensor, info: TensorInfo, path: str | None) -> None:
    if info.dtype == "BOOL" and bool((raw > 1).any()):
        # torch assumes bool bytes are 0/1; anything else gives undefined results downstream.
        raise CheckpointError("BOOL tensor holds bytes other than 0 and 1", file=path, tensor=info.name)


# Tensors below a page are read into private memory: their mapping would save nothing and cost a
# system call and a kernel VMA (vm.max_map_count defaults to 65530; the 22B bundle maps ~5000).
MAP_MIN_BYTES = mmap.PAGESIZE


def map_tensor(f: BinaryIO, info: TensorInfo, path: str | None = None) -> torch.Tensor:
    """`info`'s bytes as a file-backed CPU tensor: a copy-on-write (MAP_PRIVATE) mapping of the
    pages around it, kept alive by the tensor. Reading it reads the file cache; a write (e.g. the
    host's in-place LoRA update) copies only the touched pages into private memory and never
    reaches the file. A file renamed over this one leaves the mapping on the old bytes."""
    path = path if path is not None else _name_of(f)
    nbytes = _check_info(info, path)
    if nbytes == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    try:
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CheckpointError(f"cannot stat: {e.strerror or e}", file=path, tensor=info.name) from e
    if info.end > size:
        # Mapping past the end of the file succeeds, but touching those pages kills the process
        # (SIGBUS): refuse while it is still an error.
        raise CheckpointError(
            f"the file now holds {size} bytes but this tensor ends at byte {info.end} "
            "(file truncated or changed since its header was read)",
            file=path,
            tensor=info.name,
        )
    mm, delta = _map_region(f, info.begin, nbytes, path, info.name)
    # frombuffer keeps `mm` alive as long as the tensor (and every view of it) lives.
    raw = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=delta)
    _check_bool(raw, info, path)
    return raw.view(info.torch_dtype).reshape(info.shape)


def _map_region(f: BinaryIO, offset: int, size: int, path: str | None, name: str) -> tuple[mmap.mmap, int]:
    """A copy-on-write mapping covering file bytes [offset, offset + size); returns it and where
    `offset` lies in it (mappings start on an allocation-granularity boundary)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    try:
        return mmap.mmap(f.fileno(), offset + size - start, access=mmap.ACCESS_COPY, offset=start), offset - start
    except (OSError, ValueError, OverflowError) as e:
        raise CheckpointError(
            f"cannot map {size} bytes at offset {offset}: {getattr(e, 'strerror', None) or e}",
            file=path,
            tensor=name,
        ) from e


class TensorSource:
    """The tensors of one open file, one at a time, file-backed unless `in_ram`.

    Large tensors come from `map_tensor` (one mapping per tensor, never one of the whole file);
    small ones, and all of them when `in_ram` (the copy mode: weights in private memory, as a
    user may want on a network share), from `read_tensor`. A `ReadAhead` thread keeps the kernel
    reading the bytes that follow the tensor asked for, so the disk works while it is validated and
    converted. `with TensorSource(f) as source:` stops that thread before the file is closed."""

    def __init__(self, f: BinaryIO, path: str | None = None, in_ram: bool = False):
        self.f, self.path, self.in_ram = f, path if path is not None else _name_of(f), in_ram
        self._ahead = ReadAhead(f.fileno())

    def get(self, info: TensorInfo) -> torch.Tensor:
        self._ahead.reading(info.begin, info.end)
        if self.in_ram or info.nbytes < MAP_MIN_BYTES:
            return read_tensor(self.f, info, self.path)
        return map_tensor(self.f, info, self.path)

    @staticmethod
    def file_backed(info: TensorInfo, in_ram: bool = False) -> bool:
        """Whether `get(info)` returns a file-backed tensor (the one rule, used by the estimates)."""
        return not in_ram and info.nbytes >= MAP_MIN_BYTES

    def close(self) -> None:
        self._ahead.close()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def open_checkpoint(
    path: str | os.PathLike, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> Iterator[tuple[HeaderIndex, BinaryIO]]:
    """`with open_checkpoint(p) as (index, f): read_tensor(f, index.tensors[name], index.path)`.

    The header is read through the same file object that is yielded, so the index always
    describes the file being read even if `path` is replaced meanwhile.
    """
    with _open(path) as f:
        yield _read_header_from(f, os.fspath(path), max_header_bytes), f


# --------------------------------------------------------------------------------------------
# Reading the raw header


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    refuse_pickle(path)
    try:
        # Unbuffered: the header read takes exactly 8 + header_size bytes, and read_tensor's
        # readinto goes straight into the tensor's buffer with no read-ahead copy.
        f = open(path, "rb", buffering=0)
    except OSError as e:
        raise CheckpointError(f"cannot open: {e.strerror or e}", file=os.fspath(path)) from e
    with f:
        yield f


def _read_header_from(f: BinaryIO, path: str, max_header_bytes: int) -> HeaderIndex:
    try:
        file_size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise CheckpointError(f"cannot stat: {e.strerror or e}", file=path) from e

    prefix = _read_at(f, 0, _LENGTH_PREFIX, path)
    if len(prefix) < _LENGTH_PREFIX:
        raise CheckpointError(
            f"file holds {file_size} bytes; a safetensors file starts with an 8-byte header length",
            file=path,
        )
    (header_size,) = struct.unpack("<Q", prefix)
    _check_header_size(header_size, file_size, max_header_bytes, prefix, path)

    raw = _read_at(f, _LENGTH_PREFIX, header_size, path)
    if len(raw) != header_size:
        raise CheckpointError(f"short read of the header: got {len(raw)} of {header_size} bytes", file=path)
    header = _parse_header_json(raw, path)
    tensors, metadata = _validate_entries(header, path, file_size, _LENGTH_PREFIX + header_size)
    return HeaderIndex(path, file_size, header_size, tensors, metadata)


def _check_header_size(header_size: int, file_size: int, max_header_bytes: int, prefix: bytes, path: str) -> None:
    if header_size == 0:
        raise CheckpointError("header length is 0; expected a JSON object", file=path)
    if header_size > max_header_bytes:
        raise CheckpointError(
            f"header length {header_size} exceeds the limit of {max_header_bytes} bytes"
            + _not_safetensors_hint(prefix),
            file=path,
        )
    if _LENGTH_PREFIX + header_size > file_size:
        raise CheckpointError(
            f"header length {header_size} runs past the end of the file "
            f"(8 + {header_size} > {file_size} bytes; truncated download?)" + _not_safetensors_hint(prefix),
            file=path,
        )


def _not_safetensors_hint(prefix: bytes) -> str:
    """A garbage length prefix often means the file is some other format under a .safetensors name."""
    if prefix.startswith(b"PK\x03\x04"):
        return "; the file starts like a zip archive (torch.save), which is never unpickled"
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "; the file starts like a pickle, which is never unpickled"
    return ""


def _read_at(f: BinaryIO, offset: int, size: int, path: str) -> bytes:
    try:
        f.seek(offset)
        chunks = []
        remaining = size
        while remaining > 0:  # a read may return fewer bytes than asked without being at EOF
            chunk = f.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise CheckpointError(f"read failed at offset {offset}: {e.strerror or e}", file=path) from e
    except MemoryError:
        raise CheckpointError(f"not enough memory to read {size} header bytes", file=path) from None


def _read_exactly_into(f: BinaryIO, offset: int, buf: bytearray, path: str | None, name: str) -> int:
    """readinto until `buf` is full or EOF; returns the number of bytes read."""
    view = memoryview(buf)
    got = 0
    try:
        f.seek(offset)
        while got < len(buf):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    except OSError as e:
        raise CheckpointError(f"read failed at offset {offset + got}: {e.strerror or e}", file=path, tensor=name) from e
    finally:
        view.release()
    return got


def _name_of(f: BinaryIO) -> str | None:
    name = getattr(f, "name", None)  # a str or PathLike for files, an int for raw descriptors
    return os.fspath(name) if isinstance(name, (str, os.PathLike)) else None


# --------------------------------------------------------------------------------------------
# JSON parsing: strict about duplicates, safe against deep nesting and huge numbers


class _DuplicateKeyError(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    # json.loads silently keeps the last of repeated keys; a file that says two different
    # things about one name is refused instead.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKeyError(_first_repeat(pairs))
    return obj


class _HeaderObject(dict):
    """A JSON object of the header that remembers its repeated keys (see _header_object)."""

    repeated: str | None = None


def _header_object(pairs: list[tuple[str, object]]) -> dict:
    # The hook runs innermost-first and cannot know where an object sits, so it only marks the
    # object; validation then refuses it naming the tensor (top level or entry) or __metadata__.
    obj = _HeaderObject(pairs)
    if len(obj) != len(pairs):
        obj.repeated = _first_repeat(pairs)
    return obj


def _first_repeat(pairs: list[tuple[str, object]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no repeated key")  # only called when dict(pairs) lost a key


# ValueError covers JSONDecodeError and ints beyond sys.get_int_max_str_digits().
_JSON_FAILURES = (ValueError, RecursionError, MemoryError)


def _strict_json_loads(text: str) -> object:
    return json.loads(text, object_pairs_hook=_unique_object)


def _repeated_key(obj: object) -> str | None:
    return obj.repeated if isinstance(obj, _HeaderObject) else None


def _json_failure(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, MemoryError):
        return "too large to parse"
    return str(e)


def _parse_header_json(raw: bytes, path: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"header is not valid UTF-8 ({e.reason} at byte {8 + e.start})", file=path) from None
    try:
        header = json.loads(text, object_pairs_hook=_header_object)
    except _JSON_FAILURES as e:
        raise CheckpointError(f"header is not valid JSON ({_json_failure(e)})", file=path) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"header is a JSON {_describe(header)}; expected a JSON object", file=path)
    return header


# --------------------------------------------------------------------------------------------
# Validating the entries


def _validate_entries(
    header: dict, path: str, file_size: int, data_start: int
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    repeated = _repeated_key(header)
    if repeated is not None:
        raise CheckpointError(
            "the header lists this name more than once; expected unique names",
            file=path,
            tensor=_printable(repeated),
        )
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == METADATA_KEY:
            metadata = _validate_metadata(entry, path)
        else:
            tensors[name] = _validate_entry(name, entry, path, file_size, data_start)
    _check_no_overlap(tensors, path)
    return tensors, metadata


def _validate_metadata(entry: object, path: str) -> dict[str, str]:
    if entry is None:  # the reference implementation accepts null as "no metadata"
        return {}
    if not isinstance(entry, dict):
        raise CheckpointError(f"__metadata__ is a JSON {_describe(entry)}; expected an object of strings", file=path)
    repeated = _repeated_key(entry)
    if repeated is not None:
        raise CheckpointError(f"__metadata__ repeats the key {_short(repeated)}; expected unique keys", file=path)
    for key, value in entry.items():
        if not isinstance(value, str):
            raise CheckpointError(
                f"__metadata__[{_short(key)}] is a JSON {_describe(value)}; expected a string "
                "(the format allows only string values)",
                file=path,
            )
        if not _is_utf8(key) or not _is_utf8(value):
            raise CheckpointError(
                f"__metadata__[{_short(key)}] contains an unpaired surrogate escape; expected text",
                file=path,
            )
    return dict(entry)  # a plain dict, not the parser's _HeaderObject


def _validate_entry(name: str, entry: object, path: str, file_size: int, data_start: int) -> TensorInfo:
    def refuse(what: str) -> CheckpointError:
        return CheckpointError(what, file=path, tensor=_printable(name))

    if not name:
        raise refuse("empty tensor name; expected a non-empty string")
    if not _is_utf8(name):
        raise refuse("tensor name contains an unpaired surrogate escape; expected text")
    if not isinstance(entry, dict):
        raise refuse(f"entry is a JSON {_describe(entry)}; expected an object with dtype, shape, data_offsets")
    repeated = _repeated_key(entry)
    if repeated is not None:
        raise refuse(f"entry repeats the key {_short(repeated)}; expected each key once")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise refuse(f"entry has no {key!r}; expected dtype, shape and data_offsets")

    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise refuse(f"unknown dtype {_describe_value(dtype)}; expected one of {', '.join(DTYPES)}")
    shape = _validate_shape(entry["shape"], refuse)
    begin, end = _validate_offsets(entry["data_offsets"], refuse)

    # numel of at most 64 dims below 2**63 each: an exact Python int, no overflow possible.
    needed = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != needed:
        raise refuse(
            f"data_offsets [{_short(begin)}, {_short(end)}] hold {_short(end - begin)} bytes "
            f"but {_typed(dtype, shape)} needs {_short(needed)}"
        )
    if data_start + end > file_size:
        raise refuse(
            f"data_offsets [{_short(begin)}, {_short(end)}] end at byte {_short(data_start + end)} of the file "
            f"(data starts at {data_start}) but the file holds {file_size} bytes (truncated?)"
        )
    return TensorInfo(name, dtype, shape, data_start + begin, data_start + end)


def _validate_shape(shape: object, refuse) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise refuse(f"shape is a JSON {_describe(shape)}; expected a list of integers >= 0")
    if len(shape) > _MAX_NDIM:
        raise refuse(f"shape has {len(shape)} dimensions; expected at most {_MAX_NDIM}")
    for dim in shape:
        if not _is_int(dim) or dim < 0:
            raise refuse(f"shape contains {_describe_value(dim)}; expected integers >= 0")
        if dim > _MAX_DIM:
            raise refuse(f"shape dimension {_short(dim)} exceeds 2**63 - 1")
    # torch computes strides as products of the non-zero dims, so even an empty tensor cannot
    # have them multiply past int64 ([0, 2, 2**62] fails with "Stride calculation overflowed").
    if math.prod(max(d, 1) for d in shape) > _MAX_DIM:
        raise refuse(f"shape {_describe_value(shape)} spans more than 2**63 - 1 elements; torch cannot hold it")
    return tuple(shape)


def _validate_offsets(offsets: object, refuse) -> tuple[int, int]:
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise refuse(f"data_offsets is {_describe_value(offsets)}; expected [begin, end] integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise refuse(f"data_offsets [{_short(begin)}, {_short(end)}]; expected 0 <= begin <= end")
    return begin, end


def _check_no_overlap(tensors: dict[str, TensorInfo], path: str) -> None:
    # Sorted by (begin, end), each tensor must start at or after the furthest end so far.
    # Zero-byte tensors sit between neighbours ([x, x]) the way safetensors writes them.
    furthest: TensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if furthest is not None and info.begin < furthest.end:
            raise CheckpointError(
                f"bytes [{info.begin}, {info.end}) overlap tensor {_printable(furthest.name)} "
                f"at [{furthest.begin}, {furthest.end}); expected disjoint data",
                file=path,
                tensor=_printable(info.name),
            )
        if furthest is None or info.end > furthest.end:
            furthest = info


# --------------------------------------------------------------------------------------------
# Small helpers for messages


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _is_utf8(text: str) -> bool:
    # JSON "\ud800" escapes decode to lone surrogates that cannot be printed or written back.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(value: object) -> str:
    """A JSON type name; never repr() containers, they may be nested 100000 deep."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _describe_value(value: object) -> str:
    if isinstance(value, (list, dict)):
        if isinstance(value, list) and len(value) <= 4 and all(_is_int(v) for v in value):
            return "[" + ", ".join(_short(v) for v in value) + "]"
        return f"a JSON {_describe(value)}"
    return _short(value)


def _short(value: object, limit: int = 60) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a {value.bit_length()}-bit integer"
    text = _printable(value) if isinstance(value, str) else None
    text = repr(text if text is not None else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _typed(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"
