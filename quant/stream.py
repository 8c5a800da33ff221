"""Stream the tensors of a planned load one at a time.

`iter_load` yields one canonical `QuantLayer` or plain tensor at a time, in file order. A tensor
that needs no conversion stays file-backed (quant/safetensors_header.py `TensorSource`: its own
copy-on-write mapping, paged by the OS like any file cache); only tensors that must change take
private memory: fp8 codes stored `[in, out]` (transposed), fp8 dequantized for bf16 mode, full
precision quantized at load, and full precision cast to another dtype. A full-precision layer
headed for an fp8 mode is quantized right there, so no full-precision copy of the whole model ever
exists. Every tensor is validated (NaN codes, non-finite values) as it is read.

The copy mode (`LTX_FP8_WEIGHTS=ram`) reads every tensor into private memory instead, for users
who want the weights in RAM whatever happens to the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch

from .errors import CheckpointError
from .fp8 import Fp8Weight, check_codes, check_finite, dequantize, quantize, range_is_finite, range_scale, weight_range
from .layer import QuantLayer
from .plan import LayerPlan, LoadPlan, identify_file, plan_checkpoint
from .policy import Policy
from .safetensors_header import TensorInfo, TensorSource

WEIGHTS_ENV = "LTX_FP8_WEIGHTS"
WEIGHTS_SETTINGS = ("file", "ram")


def weights_in_ram(setting: str | None = None) -> bool:
    """The copy mode: `LTX_FP8_WEIGHTS=ram` (default `file`: file-backed where no conversion is
    needed). An unknown value is refused, not guessed."""
    value = (setting if setting is not None else os.environ.get(WEIGHTS_ENV, "file")).strip().lower() or "file"
    if value not in WEIGHTS_SETTINGS:
        raise ValueError(f"{WEIGHTS_ENV}={value!r}: expected one of {', '.join(WEIGHTS_SETTINGS)}")
    return value == "ram"


# ----- what takes private memory: one decision, read by materialize and by the estimates ---------


def weight_converted(lp: LayerPlan, compute_dtype: torch.dtype, mode: str | None = None) -> bool:
    """Whether a layer's weight is changed on its way to `mode` (default: its planned mode), so its
    loaded bytes are private memory whatever the file: transposed, dequantized, (re-)quantized, or
    cast to the compute dtype."""
    mode = mode or lp.mode
    if lp.transposed:
        return True
    if lp.src.stored_fp8:
        return mode == "bf16" or lp.src.weight.dtype == "F8_E5M2"
    return mode != "bf16" or lp.src.weight.torch_dtype != compute_dtype


def tensor_converted(info: TensorInfo, tensor_dtype: torch.dtype | None) -> bool:
    """Whether an other tensor (or a bias, cast to the compute dtype) is cast on its way in."""
    return tensor_dtype is not None and info.torch_dtype.is_floating_point and info.torch_dtype != tensor_dtype


def private_bytes(
    plan: LoadPlan,
    tensor_dtype: torch.dtype | None = None,
    in_ram: bool | None = None,
    mode_of: Callable[[LayerPlan], str] | None = None,
) -> int:
    """Private (anonymous) memory the loaded tensors will hold, as `iter_load(plan, tensor_dtype=)`
    loads them (`mode_of`: another mode per layer, for what-if estimates); the rest stays
    file-backed. Scales count too (tiny, read at planning)."""
    from .holdings import layer_weight_bytes

    in_ram = weights_in_ram() if in_ram is None else in_ram
    total = 0
    for lp in plan.layers:
        mode = mode_of(lp) if mode_of else lp.mode
        held = layer_weight_bytes(lp, plan.compute_dtype, mode, plan.per_row_quant)
        if in_ram or weight_converted(lp, plan.compute_dtype, mode) or not TensorSource.file_backed(lp.src.weight):
            total += held
        else:
            total += held - lp.out_in[0] * lp.out_in[1] * (1 if mode != "bf16" else plan.compute_dtype.itemsize)
        if lp.src.bias is not None:
            b = lp.src.bias
            kept = not in_ram and TensorSource.file_backed(b) and not tensor_converted(b, plan.compute_dtype)
            total += 0 if kept else b.numel * plan.compute_dtype.itemsize
    for info in plan.contents.tensors.values():
        if in_ram or not TensorSource.file_backed(info) or tensor_converted(info, tensor_dtype):
            dt = tensor_dtype if tensor_converted(info, tensor_dtype) else info.torch_dtype
            total += info.numel * dt.itemsize
    return total


# ----- loading ------------------------------------------------------------------------------------


def materialize(lp: LayerPlan, source: TensorSource, plan: LoadPlan, device="cpu") -> QuantLayer:
    """Read one layer and convert it into the canonical `[out, in]` form of its mode."""
    src, path = lp.src, plan.path
    w = source.get(src.weight)
    if lp.transposed:
        w = w.t().contiguous()
    bias = None
    if src.bias is not None:
        bias = source.get(src.bias)
        check_finite(bias, path, src.bias.name, f"layer {src.name}: bias")
        bias = bias.to(plan.compute_dtype)  # no copy when the file holds the compute dtype
    scale, input_scale = lp.scale, lp.input_scale
    if src.stored_fp8:
        check_codes(w, src.name, path, src.weight.name)
        if src.weight.dtype == "F8_E5M2" or lp.mode == "bf16":
            w = dequantize(w, scale, plan.compute_dtype if lp.mode == "bf16" else torch.float32)
            scale = None
    elif lp.mode == "bf16":  # (a weight headed for fp8 is checked by the min/max pass that scales it)
        check_finite(w, path, src.weight.name, f"layer {src.name}: weight")
    if lp.mode == "bf16":
        # Only a conversion that can overflow needs the check again (an up-cast of a finite bf16
        # weight to fp32 is finite: re-checking it was a full extra pass over every such weight).
        converted = src.stored_fp8 or torch.finfo(plan.compute_dtype).max < torch.finfo(w.dtype).max
        w, scale, input_scale = w.to(plan.compute_dtype), None, None  # no copy when already in it
        if converted:  # a dequantized or down-cast weight must still be finite in the compute dtype
            check_finite(w, path, src.weight.name, f"layer {src.name}: weight in {plan.compute_dtype}")
    elif scale is None:
        # One min/max pass both validates and scales (no full-size bool temporary: isfinite().all()
        # took longer than the quantization itself).
        lo, hi = weight_range(w, plan.per_row_quant)
        if not range_is_finite(lo, hi):
            check_finite(w, path, src.weight.name, f"layer {src.name}: weight")  # names the count
            raise CheckpointError(
                f"layer {src.name}: weight holds NaN or inf, cannot quantize", file=path, tensor=src.weight.name
            )
        w, scale = quantize(w, range_scale(lo, hi))
    weight = w if scale is None else Fp8Weight(w, scale, input_scale)
    return QuantLayer(
        src.name, weight.to(device), None if bias is None else bias.to(device), lp.mode, src.encoding, lp.transposed
    )


def load_items(plan: LoadPlan, names: set[str] | None = None) -> list[tuple[int, str, LayerPlan | TensorInfo]]:
    """What `iter_load` reads, in file order: (first byte, canonical name, layer plan or tensor)."""
    items = [(lp.src.weight.begin, lp.name, lp) for lp in plan.layers]
    items += [(info.begin, name, info) for name, info in plan.contents.tensors.items()]
    items.sort(key=lambda t: t[0])  # file order: sequential reads
    return [it for it in items if names is None or it[1] in names]


def item_bytes(item: LayerPlan | TensorInfo) -> int:
    """File bytes one item of `load_items` reads (a layer: its weight and bias)."""
    if isinstance(item, LayerPlan):
        return item.src.weight.nbytes + (item.src.bias.nbytes if item.src.bias is not None else 0)
    return item.nbytes


def iter_load(
    plan: LoadPlan,
    device="cpu",
    names: set[str] | None = None,
    tensor_dtype: torch.dtype | None = None,
    in_ram: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, QuantLayer | torch.Tensor]]:
    """Yield `(name, QuantLayer)` for every linear and `(name, tensor)` for every other transformer
    tensor, one at a time, in file order. `names` restricts to some canonical names; `in_ram`
    overrides the `LTX_FP8_WEIGHTS` setting; `progress(n)` is called with the file bytes read
    after each item."""
    in_ram = weights_in_ram() if in_ram is None else in_ram
    with open(plan.path, "rb", buffering=0) as f:
        if plan.file_identity is not None and identify_file(f) != plan.file_identity:
            raise CheckpointError(
                "the file changed on disk since its load was planned (size, mtime or inode "
                "differ); its header no longer describes its bytes, load it again",
                file=plan.path,
            )
        with TensorSource(f, plan.path, in_ram=in_ram) as source:
            for _, name, item in load_items(plan, names):
                if isinstance(item, LayerPlan):
                    out = materialize(item, source, plan, device)
                else:
                    out = source.get(item)
                    check_finite(out, plan.path, item.name)
                    if tensor_dtype is not None and out.is_floating_point():
                        out = out.to(tensor_dtype)
                    out = out.to(device)
                if progress is not None:
                    progress(item_bytes(item))
                yield name, out


def load(
    path: str, policy: Policy | str = "auto", **kw
) -> tuple[LoadPlan, dict[str, QuantLayer], dict[str, torch.Tensor]]:
    """Plan and load a whole file into memory (scripts, tests, benchmarks); refused before a byte is
    read when its private memory cannot fit the RAM available (quant/ram_guard.py)."""
    from .ram_guard import refuse_if_too_big  # (ram_guard estimates from this module's private_bytes)

    device = kw.pop("load_device", "cpu")
    in_ram = kw.pop("in_ram", None)
    plan = plan_checkpoint(path, policy, **kw)
    refuse_if_too_big(plan, os.path.basename(path), in_ram=in_ram)
    layers, tensors = {}, {}
    for name, item in iter_load(plan, device, in_ram=in_ram):
        (layers if isinstance(item, QuantLayer) else tensors)[name] = item
    return plan, layers, tensors
