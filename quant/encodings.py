"""Which file encoding each linear layer uses, and where every key of the file goes.

Encodings seen in the wild:
- `ltx-core`: fp8 `weight` + fp32 `weight_scale` (+ `input_scale`), no quant metadata;
- `comfy-native`: the same tensors named in the header's `_quantization_metadata` or in a per-layer
  `.comfy_quant` uint8 tensor holding the same JSON;
- `comfy-legacy`: a `scaled_fp8` marker, `.scale_weight` and `.scale_input` (1.0 means "none");
- `full-precision`: bf16/fp16/fp32 weights.
Every key ends up in exactly one bucket: a layer's part, another transformer tensor, a passenger,
a marker, or unexpected. Nothing is dropped silently: a `strict=False` load that drops the scales
runs fp8 codes ~770x too large (Lightricks/LTX-2 PR #172).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import CheckpointError
from .ltx2_shapes import is_model_tensor
from .safetensors_header import HeaderIndex, TensorInfo

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
PASSENGER_GROUPS = ("vae.", "audio_vae.", "vocoder.", "text_embedding_projection.")
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
FULL_DTYPES = ("BF16", "F16", "F32", "F64")
# Sibling keys of a linear layer, by the role they play.
SCALE_SUFFIXES = {
    "weight_scale": "scale",
    "scale_weight": "scale",
    "input_scale": "input_scale",
    "scale_input": "input_scale",
}
_LINEAR_PARTS = ("weight", "bias", "comfy_quant") + tuple(SCALE_SUFFIXES)
SUPPORTED_COMFY_FORMATS = ("float8_e4m3fn",)


@dataclass
class LayerSource:
    """Where one linear layer lives in the file (keys are full file keys, prefix included)."""

    name: str
    weight: TensorInfo
    encoding: str
    bias: TensorInfo | None = None
    scale: TensorInfo | None = None
    input_scale: TensorInfo | None = None
    consumed: list[str] = field(default_factory=list)  # every key this layer accounts for

    @property
    def stored_fp8(self) -> bool:
        return self.weight.dtype in FP8_DTYPES


@dataclass
class FileContents:
    path: str
    prefix: str
    layers: dict[str, LayerSource]
    tensors: dict[str, TensorInfo]  # other transformer tensors, by canonical name
    passengers: dict[str, list[str]]  # group ("vae", ...) -> keys
    markers: list[str]  # consumed format markers (scaled_fp8)
    unexpected: list[str]  # keys nobody claims
    warnings: list[str]
    config: dict | None


def detect_prefix(keys) -> str:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return prefix
    return ""


def _quant_metadata(index: HeaderIndex) -> dict[str, dict]:
    meta = index.json_metadata("_quantization_metadata")
    if meta is None:
        return {}
    layers = meta.get("layers") if isinstance(meta, dict) else None
    if not isinstance(layers, dict):
        raise CheckpointError("header _quantization_metadata has no 'layers' object", file=index.path)
    return layers


def _comfy_quant_entry(index: HeaderIndex, f, key: str) -> dict:
    """The JSON held in a per-layer `.comfy_quant` uint8 tensor."""
    from .safetensors_header import read_tensor

    raw = read_tensor(f, index.tensors[key], index.path)
    try:
        entry = json.loads(bytes(raw.flatten().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"comfy_quant entry is not UTF-8 JSON ({e})", file=index.path, tensor=key) from None
    if not isinstance(entry, dict):
        raise CheckpointError("comfy_quant entry is not a JSON object", file=index.path, tensor=key)
    return entry


def classify(index: HeaderIndex, f, linear_names: set[str] | None = None) -> FileContents:
    """Sort every key of the file. `f` is the open file (comfy_quant tensors are tiny and read here).

    `linear_names` (canonical names of the target model's linears) overrides the 2-D `.weight`
    heuristic when the caller knows the model.
    """
    path = index.path
    keys = list(index.tensors)
    prefix = detect_prefix(keys)
    warnings: list[str] = []
    passengers: dict[str, list[str]] = {}
    markers: list[str] = []
    unexpected: list[str] = []
    inner: dict[str, TensorInfo] = {}  # canonical name -> info, transformer keys only

    for key in keys:
        info = index.tensors[key]
        if key in ("scaled_fp8", prefix + "scaled_fp8"):
            markers.append(key)
        elif prefix and key.startswith(prefix):
            inner[key[len(prefix) :]] = info
        elif not prefix and not key.startswith(PASSENGER_GROUPS):
            inner[key] = info
        elif key.startswith(PASSENGER_GROUPS):
            passengers.setdefault(key.split(".", 1)[0], []).append(key)
        else:
            unexpected.append(key)

    model_known = linear_names is not None
    if linear_names is None:
        linear_names = {k[: -len(".weight")] for k, i in inner.items() if k.endswith(".weight") and len(i.shape) == 2}
    qmeta = _quant_metadata(index)

    layers: dict[str, LayerSource] = {}
    claimed: set[str] = set()
    for name in sorted(linear_names):
        w = inner.get(name + ".weight")
        if w is None:
            continue  # missing layers are the caller's to report (it knows what the model needs)
        parts = {p: inner.get(f"{name}.{p}") for p in _LINEAR_PARTS}
        consumed = [prefix + name + "." + p for p, i in parts.items() if i is not None]
        claimed.update(f"{name}.{p}" for p, i in parts.items() if i is not None)
        layers[name] = _layer_source(path, prefix, name, parts, qmeta, index, f, consumed)

    for qname in qmeta:
        cname = qname[len(prefix) :] if prefix and qname.startswith(prefix) else qname
        if cname not in layers:
            warnings.append(f"_quantization_metadata names layer {qname}, which the file does not hold")

    tensors = {}
    for name, info in inner.items():
        if name in claimed:
            continue
        role = name.rsplit(".", 1)[-1]
        if role in SCALE_SUFFIXES or role == "comfy_quant":
            # A scale with no layer beside it: a layer we did not recognise or a mangled name.
            unexpected.append(prefix + name)
        elif model_known and not is_model_tensor(name, linear_names):
            # The model is known (config or caller): a key it does not have, e.g. an extra linear.
            unexpected.append(prefix + name)
        else:
            tensors[name] = info
    return FileContents(path, prefix, layers, tensors, passengers, markers, unexpected, warnings, _config(index))


def _layer_source(path, prefix, name, parts, qmeta, index, f, consumed) -> LayerSource:
    w = parts["weight"]
    full = prefix + name
    if len(w.shape) != 2:
        raise CheckpointError(
            f"layer {name}: weight has shape {list(w.shape)}; a linear weight is 2-D ([out, in] or [in, out])",
            file=path,
            tensor=full + ".weight",
        )
    scale = parts["weight_scale"] or parts["scale_weight"]
    input_scale = parts["input_scale"] or parts["scale_input"]
    comfy_entry = qmeta.get(full) or qmeta.get(name)
    if parts["comfy_quant"] is not None:
        comfy_entry = _comfy_quant_entry(index, f, full + ".comfy_quant")

    if w.dtype in FP8_DTYPES:
        if comfy_entry is not None:
            fmt = comfy_entry.get("format")
            if fmt not in SUPPORTED_COMFY_FORMATS:
                raise CheckpointError(
                    f"layer {name}: quantization format {fmt!r} is not supported "
                    f"(supported: {', '.join(SUPPORTED_COMFY_FORMATS)})",
                    file=path,
                    tensor=full + ".weight",
                )
            encoding = "comfy-native"
        elif parts["scale_weight"] is not None:
            encoding = "comfy-legacy"
        else:
            encoding = "ltx-core"
        if scale is None:
            raise CheckpointError(
                f"layer {name}: fp8 weight has no weight_scale (expected {full}.weight_scale or "
                f"{full}.scale_weight); loading it unscaled would make it ~770x too large",
                file=path,
                tensor=full + ".weight",
            )
    elif w.dtype in FULL_DTYPES:
        if comfy_entry is not None:
            raise CheckpointError(
                f"layer {name}: quantization metadata says {comfy_entry.get('format')!r} but the weight is {w.dtype}",
                file=path,
                tensor=full + ".weight",
            )
        if scale is not None:
            raise CheckpointError(
                f"layer {name}: a weight scale sits beside a {w.dtype} weight; expected an fp8 weight",
                file=path,
                tensor=full + ".weight_scale",
            )
        encoding = "full-precision"
    else:
        raise CheckpointError(
            f"layer {name}: weight dtype {w.dtype} is not a float type this "
            f"loader supports ({', '.join(FP8_DTYPES + FULL_DTYPES)})",
            file=path,
            tensor=full + ".weight",
        )
    return LayerSource(name, w, encoding, bias=parts["bias"], scale=scale, input_scale=input_scale, consumed=consumed)


def _config(index: HeaderIndex) -> dict | None:
    cfg = index.json_metadata("config")
    return cfg if isinstance(cfg, dict) else None
