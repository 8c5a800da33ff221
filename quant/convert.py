"""Convert a checkpoint into an fp8 bundle, one tensor at a time: `convert(SRC, OUT, policy, encoding)`.

SRC goes through the loader's own planner and stream (`plan_checkpoint` + `iter_load`), so the
policy (preset and rules) decides each layer exactly as a load would, and a layer quantized here is
quantized by the same function as on the fly at load (bit for bit the same codes and scale). What
is written:
- an fp8 layer: `weight` F8_E4M3 `[out, in]` + `weight_scale` F32 (`[]`, or `[out]` per row) +
  `input_scale` F32 `[]` where SRC has one. e4m3 codes that come from SRC are written as they are
  (never dequantized and re-quantized): only their layout is made `[out, in]`;
- a full-precision layer: as held, in the file's full-precision dtype;
- every other transformer tensor as stored; passengers (`vae.`, `audio_vae.`, `vocoder.`,
  `text_embedding_projection.`) and any other key outside the transformer copied byte for byte;
- the header's `__metadata__` kept (`config`, `model_version`, ...), `_quantization_metadata` per
  the encoding, and a note of how the file was made (`ltx_fp8_convert`).

Encodings:
- `ltx-core`: the official LTX-2 files' conventions (no quantization metadata);
- `comfy-native`: the same tensors plus the header entry `_quantization_metadata` that ComfyUI's
  own loader reads (ComfyUI 0.30 comfy/utils.py `convert_old_quants` turns each of its layers into a
  `comfy_quant` entry, and comfy/ops.py `mixed_precision_ops` then loads `weight` with its
  `weight_scale` as a scaled fp8 tensor, and `input_scale` for the fp8 matmul). Without it the host
  drops the scales as unexpected keys (weights ~770x too large, Lightricks/LTX-2 PR #172).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, replace

import torch

from .device import device_caps
from .errors import CheckpointError
from .fp8 import Fp8Weight
from .layer import QuantLayer
from .plan import Conversion, LayerPlan, LoadPlan, identify_file, plan_checkpoint
from .policy import Policy
from .safetensors_header import DTYPES, TensorInfo, read_header
from .safetensors_writer import SafetensorsWriter, TensorSpec, st_dtype
from .stream import iter_load

ENCODINGS = ("ltx-core", "comfy-native")
NOTE_KEY = "ltx_fp8_convert"
QUANT_METADATA_KEY = "_quantization_metadata"
# The one format ComfyUI 0.30's per-tensor fp8 layout (comfy/quant_ops.py QUANT_ALGOS) reads for
# these tensors; its dequantize takes a single scale per tensor (comfy-kitchen
# dequantize_per_tensor_fp8), so per-row scales cannot be expressed in this encoding.
COMFY_FORMAT = "float8_e4m3fn"
_PARTS = ("weight", "weight_scale", "input_scale", "bias")


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")


def full_dtype(plan: LoadPlan) -> torch.dtype:
    """The file's full-precision dtype: the one most bytes of its full-precision linear weights use
    (else of its other transformer tensors; bf16 when it has none), in which full-precision layers
    are written (a bf16 file's layers stay bf16, an fp32 file's stay fp32)."""
    by: Counter = Counter()
    for lp in plan.layers:
        if not lp.src.stored_fp8:
            by[lp.src.weight.dtype] += lp.src.weight.nbytes
    if not by:
        for info in plan.contents.tensors.values():
            if info.dtype in ("BF16", "F16", "F32", "F64"):
                by[info.dtype] += info.nbytes
    return DTYPES[by.most_common(1)[0][0]][0] if by else torch.bfloat16


# -- one layer's tensors ------------------------------------------------------------------------------


def layer_specs(
    key: str, out_in: tuple[int, int], weight_dtype: str, per_row: bool, input_scale: bool, bias_dtype: str | None
) -> list[TensorSpec]:
    """The header entries of one layer (`key`: its full name, file prefix included). An fp8 layer
    (`weight_dtype` F8_E4M3) has its `weight_scale` and, if it has one, its `input_scale`."""
    out = [TensorSpec(f"{key}.weight", weight_dtype, out_in)]
    if weight_dtype == "F8_E4M3":
        out.append(TensorSpec(f"{key}.weight_scale", "F32", (out_in[0],) if per_row else ()))
        if input_scale:
            out.append(TensorSpec(f"{key}.input_scale", "F32", ()))
    if bias_dtype is not None:
        out.append(TensorSpec(f"{key}.bias", bias_dtype, (out_in[0],)))
    return out


def layer_tensors(
    key: str, weight: Fp8Weight | torch.Tensor, bias: torch.Tensor | None
) -> list[tuple[str, torch.Tensor]]:
    """The tensors of one layer as written: fp8 codes `[out, in]` with their fp32 scales, or the
    full-precision weight; the bias."""
    if isinstance(weight, Fp8Weight):
        out = [(f"{key}.weight", weight.codes), (f"{key}.weight_scale", weight.scale.to(torch.float32))]
        if weight.input_scale is not None:
            out.append((f"{key}.input_scale", weight.input_scale.to(torch.float32).reshape(())))
    else:
        out = [(f"{key}.weight", weight)]
    if bias is not None:
        out.append((f"{key}.bias", bias))
    return out


def _planned_layer_specs(plan: LoadPlan, lp: LayerPlan) -> list[TensorSpec]:
    """What `materialize` will hold for this layer, as header entries."""
    key = plan.contents.prefix + lp.name
    compute = st_dtype(plan.compute_dtype)
    bias = compute if lp.src.bias is not None else None
    if not lp.held_fp8:
        return layer_specs(key, lp.out_in, compute, False, False, bias)
    return layer_specs(key, lp.out_in, "F8_E4M3", _per_row(plan, lp), lp.input_scale is not None, bias)


def _per_row(plan: LoadPlan, lp: LayerPlan) -> bool:
    """An fp8 layer's scale is per row: SRC's own per-row scale, or per-row quantization asked for a
    layer quantized here (`materialize` re-quantizes e5m2 codes and full-precision weights)."""
    if lp.conversion in (Conversion.QUANTIZE, Conversion.E5M2_TO_E4M3):
        return plan.per_row_quant
    return lp.scale is not None and lp.scale.dim() == 1


# -- the header ----------------------------------------------------------------------------------------


def output_metadata(src_metadata: dict[str, str], encoding: str, fp8_layers: list[str], note: dict) -> dict[str, str]:
    """SRC's `__metadata__` (config, model_version, ...) with the quantization metadata of
    `encoding` (`fp8_layers`: full layer names, prefix included) and the note of how it was made."""
    meta = {k: v for k, v in src_metadata.items() if k not in (QUANT_METADATA_KEY, NOTE_KEY)}
    if encoding == "comfy-native" and fp8_layers:
        meta[QUANT_METADATA_KEY] = json.dumps(
            {"format_version": "1.0", "layers": {name: {"format": COMFY_FORMAT} for name in fp8_layers}}
        )
    meta[NOTE_KEY] = json.dumps(note, sort_keys=True)
    return meta


def refuse_per_row(encoding: str, per_row_layers: list[str], path: str) -> None:
    if encoding == "comfy-native" and per_row_layers:
        raise CheckpointError(
            f"{len(per_row_layers)} fp8 layer(s) have per-row scales, first {per_row_layers[0]}: ComfyUI's "
            f"own fp8 format ({COMFY_FORMAT}) holds one scale per tensor; write them with encoding "
            f"ltx-core (which this pack and LTX-2 read), or quantize per tensor",
            file=path,
            tensor=per_row_layers[0] + ".weight_scale",
        )


def copied_keys(plan: LoadPlan) -> list[TensorInfo]:
    """The keys outside the transformer copied byte for byte (passengers, then any other key the
    transformer does not claim), in file order. Format markers (`scaled_fp8`) are not: the output
    encoding replaces them."""
    idx = plan.index.tensors
    keys = [k for group in plan.contents.passengers.values() for k in group] + list(plan.contents.unexpected)
    return sorted((idx[k] for k in keys), key=lambda i: i.begin)


# -- convert ------------------------------------------------------------------------------------------


@dataclass
class ConvertResult:
    src: str
    out: str
    encoding: str
    policy: str
    per_row: bool
    tensors: int
    bytes: int
    seconds: float
    layers: dict  # fp8_kept (codes from SRC), fp8_quantized, full_precision
    passengers: int  # keys copied byte for byte
    dropped_markers: list[str]

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["gb_per_s"] = self.gb_per_s
        return d


def copy_unchanged(writer: SafetensorsWriter, plan: LoadPlan, infos: list[TensorInfo]) -> None:
    """Copy `infos` (passengers and other tensors written as they are) from the planned file into
    `writer`, byte for byte; refused if the file is no longer the one planned."""
    with open(plan.path, "rb", buffering=0) as f:
        if identify_file(f) != plan.file_identity:
            raise CheckpointError("the file changed on disk while it was being read", file=plan.path)
        for info in infos:
            writer.copy(info.name, f, info.begin)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    policy: Policy | str = "auto",
    encoding: str = "ltx-core",
    per_row: bool = False,
    *,
    progress=None,
) -> ConvertResult:
    """Stream SRC into OUT (see the module docstring). `policy`: which layers are fp8 (any fp8 mode)
    or full precision, as a load would decide them on this machine's CPU (fp8-cast and scaled-mm
    store the same bytes). `per_row`: layers quantized here get one scale per output row
    (ltx-core only). `progress(done_bytes, total_bytes, key)` after each tensor (may raise to cancel:
    OUT is then left untouched). Raises CheckpointError, naming the file and the tensor."""
    check_encoding(encoding)
    src, out = os.fspath(src), os.fspath(out)
    t0 = time.perf_counter()
    index = read_header(src)
    plan = plan_checkpoint(src, policy, device=device_caps("cpu"), per_row_quant=per_row, index=index)
    plan = replace(plan, compute_dtype=full_dtype(plan))

    specs: dict[str, list[TensorSpec]] = {}
    for lp in plan.layers:
        specs[lp.name] = _planned_layer_specs(plan, lp)
    for name, info in plan.contents.tensors.items():
        specs[name] = [TensorSpec(plan.contents.prefix + name, info.dtype, info.shape)]
    copied = copied_keys(plan)
    # Header order = write order: the transformer in file order (iter_load's), then the copies.
    order = sorted(
        [(lp.src.weight.begin, lp.name) for lp in plan.layers]
        + [(i.begin, n) for n, i in plan.contents.tensors.items()],
        key=lambda t: t[0],
    )
    all_specs = [s for _, n in order for s in specs[n]] + [TensorSpec(i.name, i.dtype, i.shape) for i in copied]

    fp8 = [lp for lp in plan.layers if lp.held_fp8]
    per_row_layers = [plan.contents.prefix + lp.name for lp in fp8 if _per_row(plan, lp)]
    refuse_per_row(encoding, per_row_layers, src)
    counts = {
        "fp8_kept": sum(1 for lp in fp8 if lp.conversion is None),
        "fp8_quantized": sum(1 for lp in fp8 if lp.conversion is not None),
        "full_precision": len(plan.layers) - len(fp8),
    }
    note = {
        "made_by": "comfyui-ltx-fp8 quant convert",
        "source": os.path.basename(src),
        "policy": plan.policy.to_string(),
        "encoding": encoding,
        "per_row_quantization": per_row,
        "layers": counts,
    }
    metadata = output_metadata(index.metadata, encoding, [plan.contents.prefix + lp.name for lp in fp8], note)

    with SafetensorsWriter(out, all_specs, metadata, sources=[src], progress=progress) as w:
        for name, item in iter_load(plan):
            if isinstance(item, QuantLayer):
                for key, t in layer_tensors(plan.contents.prefix + name, item.weight, item.bias):
                    w.write(key, t)
            else:
                w.write(plan.contents.prefix + name, item)
            del item
        copy_unchanged(w, plan, copied)
        total = w.total_bytes
    return ConvertResult(
        src,
        out,
        encoding,
        plan.policy.to_string(),
        per_row,
        len(all_specs),
        total,
        time.perf_counter() - t0,
        counts,
        len(copied),
        list(plan.contents.markers),
    )
