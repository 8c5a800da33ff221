"""Plan a load from the header alone, then stream the tensors one at a time.

`plan_checkpoint` reads the header and the (tiny) scale tensors, classifies every key, decides the
layout and each layer's mode, and validates every scale: a broken file is refused before a single
weight is read, so no caller is ever left with half a model. `iter_load` then yields one
canonical `QuantLayer` or plain tensor at a time; a full-precision layer headed for an fp8 mode is
quantized right there, so no full-precision copy of the whole model ever exists.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .device import DeviceCaps, device_caps
from .encodings import FileContents, LayerSource, classify
from .errors import CheckpointError
from .fp8 import check_codes, check_input_scale, check_scale, dequantize, quantize
from .layer import QuantLayer
from .layout import IN_OUT, LayoutDecision, decide_layout
from .linear import ACTIVATION_SCALES, kernel_accepts
from .ltx2_shapes import expected_linear_shapes, is_sensitive
from .backends import resolve_backend
from .policy import Policy
from .safetensors_header import HeaderIndex, read_header, read_tensor

log = logging.getLogger("ltx_fp8")


@dataclass
class LayerPlan:
    src: LayerSource
    mode: str                      # final mode, after fallbacks
    requested: str                 # what the policy asked for
    transposed: bool               # stored [in, out]; transposed to [out, in] at load
    scale: torch.Tensor | None     # validated fp32 scale ([] or [out]), None for full precision
    input_scale: torch.Tensor | None
    note: str = ""                 # why mode != requested, or what happens at load

    @property
    def name(self) -> str:
        return self.src.name

    @property
    def out_in(self) -> tuple[int, int]:
        a, b = self.src.weight.shape
        return (b, a) if self.transposed else (a, b)

    @property
    def held_fp8(self) -> bool:
        return self.mode != "bf16"


@dataclass
class LoadPlan:
    path: str
    index: HeaderIndex
    contents: FileContents
    layout: LayoutDecision
    layers: list[LayerPlan]
    policy: Policy
    caps: DeviceCaps
    compute_dtype: torch.dtype
    activation: str
    backend: str
    per_row_quant: bool
    warnings: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerPlan:
        return next(lp for lp in self.layers if lp.name == name)


def plan_checkpoint(path: str, policy: Policy | str = "auto", *, device=None,
                    compute_dtype: torch.dtype = torch.bfloat16, activation: str = "static",
                    backend: str = "auto", linear_shapes: dict[str, tuple[int, int]] | None = None,
                    allow_unexpected: bool = False, per_row_quant: bool = False,
                    index: HeaderIndex | None = None) -> LoadPlan:
    """Everything about a load that the header and scales decide. Raises CheckpointError."""
    policy = Policy.from_string(policy) if isinstance(policy, str) else policy
    if activation not in ACTIVATION_SCALES:
        raise ValueError(f"activation_scale must be one of {ACTIVATION_SCALES}, not {activation!r}")
    caps = device if isinstance(device, DeviceCaps) else device_caps(device)
    index = index or read_header(path)
    with open(path, "rb") as f:
        contents = classify(index, f, set(linear_shapes) if linear_shapes else None)
        _refuse_unexpected(contents, allow_unexpected)
        if linear_shapes is None and contents.config and isinstance(contents.config.get("transformer"), dict):
            linear_shapes = _config_shapes(contents)
        layout, warnings = decide_layout(contents.layers, path, linear_shapes)
        warnings = contents.warnings + warnings
        layers = [_plan_layer(src, f, index, layout, policy, caps) for src in contents.layers.values()]
    resolved_backend = "torch"
    if any(lp.mode == "scaled-mm" for lp in layers):
        resolved_backend = resolve_backend(backend)
    _note_fallbacks(layers, warnings, caps)
    return LoadPlan(path, index, contents, layout, layers, policy, caps, compute_dtype, activation,
                    resolved_backend, per_row_quant, warnings)


def _config_shapes(contents: FileContents):
    try:
        return expected_linear_shapes(contents.config["transformer"])
    except (KeyError, TypeError, ValueError) as e:
        contents.warnings.append(f"header config['transformer'] not usable for shapes ({e}); "
                                 f"layout decided from biases")
        return None


def _refuse_unexpected(contents: FileContents, allow: bool) -> None:
    inside = [k for k in contents.unexpected if contents.prefix and k.startswith(contents.prefix)
              or not contents.prefix]
    if inside and not allow:
        raise CheckpointError(f"{len(inside)} unexpected key(s) inside the transformer, first: {inside[0]} "
                              f"(a scale or tensor no layer claims; pass allow_unexpected to load anyway)",
                              file=contents.path, tensor=inside[0])
    if contents.unexpected:
        contents.warnings.append(f"{len(contents.unexpected)} unexpected key(s) ignored: "
                                 f"{', '.join(contents.unexpected[:5])}")


def _plan_layer(src: LayerSource, f, index: HeaderIndex, layout: LayoutDecision, policy: Policy,
                caps: DeviceCaps) -> LayerPlan:
    path = index.path
    transposed = (layout.fp8 if src.stored_fp8 else layout.full) == IN_OUT
    a, b = src.weight.shape
    out_f, in_f = (b, a) if transposed else (a, b)
    scale = input_scale = None
    if src.stored_fp8:
        scale = check_scale(read_tensor(f, src.scale, path), out_f, src.name, path, src.scale.name)
        if src.input_scale is not None:
            raw = read_tensor(f, src.input_scale, path)
            # Legacy scaled-fp8 files write scale_input = 1.0 to mean "no static scale".
            if not (src.encoding == "comfy-legacy" and raw.numel() == 1 and float(raw.float()) == 1.0):
                input_scale = check_input_scale(raw, src.name, path, src.input_scale.name)
    requested = policy.mode_for(src.name, src.stored_fp8 and src.weight.dtype == "F8_E4M3",
                                is_sensitive(src.name), caps.fp8_gemm_fast)
    mode, note = requested, ""
    if mode == "scaled-mm" and not kernel_accepts(out_f, in_f):
        mode, note = "fp8-cast", f"scaled-mm needs dims multiple of 16, got [{out_f}, {in_f}]"
    elif mode == "scaled-mm" and not caps.fp8_gemm:
        mode, note = "fp8-cast", f"{caps.name} has no fp8 GEMM (needs CUDA compute capability 8.9+)"
    if mode != "bf16" and not src.stored_fp8:
        note = note or "quantized at load (amax/448)"
    elif mode != "bf16" and src.weight.dtype == "F8_E5M2":
        note = note or "e5m2 codes re-quantized to e4m3 at load"
    return LayerPlan(src, mode, requested, transposed, scale, input_scale, note)


def _note_fallbacks(layers: list[LayerPlan], warnings: list[str], caps: DeviceCaps) -> None:
    device_fallback = [lp for lp in layers if lp.requested == "scaled-mm" and lp.mode == "fp8-cast"
                       and "fp8 GEMM" in lp.note]
    if device_fallback:
        # One warning, not one per layer (issue 2: "falls back to fp8-cast with one warning").
        msg = (f"scaled-mm is not available on {caps.name}: {len(device_fallback)} layers run as "
               f"fp8-cast instead (fp8 GEMM needs CUDA compute capability 8.9+)")
        warnings.append(msg)
        log.warning(msg)
    kernel = [lp.name for lp in layers if lp.requested == "scaled-mm" and "multiple of 16" in lp.note]
    if kernel:
        warnings.append(f"{len(kernel)} layers have dims not multiple of 16 and run as fp8-cast: "
                        f"{', '.join(kernel[:4])}{' ...' if len(kernel) > 4 else ''}")


# -- streaming ------------------------------------------------------------------------------------

def materialize(lp: LayerPlan, f, plan: LoadPlan, device="cpu") -> QuantLayer:
    """Read one layer and convert it into the canonical `[out, in]` form of its mode."""
    src, path = lp.src, plan.path
    w = read_tensor(f, src.weight, path)
    if lp.transposed:
        w = w.t().contiguous()
    bias = read_tensor(f, src.bias, path).to(plan.compute_dtype) if src.bias is not None else None
    scale, input_scale = lp.scale, lp.input_scale
    if src.stored_fp8:
        check_codes(w, src.name, path, src.weight.name)
        if src.weight.dtype == "F8_E5M2" or lp.mode == "bf16":
            w = dequantize(w, scale, plan.compute_dtype if lp.mode == "bf16" else torch.float32)
            scale = None
    if lp.mode == "bf16":
        w, scale, input_scale = w.to(plan.compute_dtype), None, None
    elif scale is None:
        if not torch.isfinite(w).all():
            raise CheckpointError(f"layer {src.name}: weight holds NaN or inf, cannot quantize",
                                  file=path, tensor=src.weight.name)
        w, scale = quantize(w, per_row=plan.per_row_quant)
    layer = QuantLayer(src.name, w.to(device), None if scale is None else scale.to(device),
                       None if input_scale is None else input_scale.to(device),
                       None if bias is None else bias.to(device), lp.mode, src.encoding, lp.transposed)
    return layer


def iter_load(plan: LoadPlan, device="cpu", names: set[str] | None = None,
              tensor_dtype: torch.dtype | None = None) -> Iterator[tuple[str, QuantLayer | torch.Tensor]]:
    """Yield `(name, QuantLayer)` for every linear and `(name, tensor)` for every other transformer
    tensor, one at a time, in file order. `names` restricts to some canonical names."""
    items = [(lp.src.weight.begin, lp.name, lp) for lp in plan.layers]
    items += [(info.begin, name, info) for name, info in plan.contents.tensors.items()]
    items.sort(key=lambda t: t[0])  # file order: sequential reads
    with open(plan.path, "rb") as f:
        for _, name, item in items:
            if names is not None and name not in names:
                continue
            if isinstance(item, LayerPlan):
                yield name, materialize(item, f, plan, device)
            else:
                t = read_tensor(f, item, plan.path)
                if tensor_dtype is not None and t.is_floating_point():
                    t = t.to(tensor_dtype)
                yield name, t.to(device)


def load(path: str, policy: Policy | str = "auto", **kw) -> tuple[LoadPlan, dict[str, QuantLayer], dict[str, torch.Tensor]]:
    """Plan and load a whole file into memory (CLI, tests, benchmarks)."""
    device = kw.pop("load_device", "cpu")
    plan = plan_checkpoint(path, policy, **kw)
    layers, tensors = {}, {}
    for name, item in iter_load(plan, device):
        (layers if isinstance(item, QuantLayer) else tensors)[name] = item
    return plan, layers, tensors
