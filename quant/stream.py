"""Stream the tensors of a planned load one at a time.

`iter_load` yields one canonical `QuantLayer` or plain tensor at a time; a full-precision layer
headed for an fp8 mode is quantized right there, so no full-precision copy of the whole model ever
exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .errors import CheckpointError
from .fp8 import Fp8Weight, check_codes, check_finite, dequantize, quantize
from .layer import QuantLayer
from .plan import LayerPlan, LoadPlan, identify_file, plan_checkpoint
from .policy import Policy
from .safetensors_header import read_tensor


def materialize(lp: LayerPlan, f, plan: LoadPlan, device="cpu") -> QuantLayer:
    """Read one layer and convert it into the canonical `[out, in]` form of its mode."""
    src, path = lp.src, plan.path
    w = read_tensor(f, src.weight, path)
    if lp.transposed:
        w = w.t().contiguous()
    bias = None
    if src.bias is not None:
        bias = read_tensor(f, src.bias, path)
        check_finite(bias, path, src.bias.name, f"layer {src.name}: bias")
        bias = bias.to(plan.compute_dtype)
    scale, input_scale = lp.scale, lp.input_scale
    if src.stored_fp8:
        check_codes(w, src.name, path, src.weight.name)
        if src.weight.dtype == "F8_E5M2" or lp.mode == "bf16":
            w = dequantize(w, scale, plan.compute_dtype if lp.mode == "bf16" else torch.float32)
            scale = None
    else:
        check_finite(w, path, src.weight.name, f"layer {src.name}: weight")
    if lp.mode == "bf16":
        # Only a conversion that can overflow needs the check again (an up-cast of a finite bf16
        # weight to fp32 is finite: re-checking it was a full extra pass over every such weight).
        converted = src.stored_fp8 or torch.finfo(plan.compute_dtype).max < torch.finfo(w.dtype).max
        w, scale, input_scale = w.to(plan.compute_dtype), None, None
        if converted:  # a dequantized or down-cast weight must still be finite in the compute dtype
            check_finite(w, path, src.weight.name, f"layer {src.name}: weight in {plan.compute_dtype}")
    elif scale is None:
        # Two reductions, no full-size bool temporary (isfinite().all() took longer than the
        # quantization itself): NaN propagates to both ends, an inf shows in one.
        lo, hi = torch.aminmax(w)
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise CheckpointError(
                f"layer {src.name}: weight holds NaN or inf, cannot quantize", file=path, tensor=src.weight.name
            )
        w, scale = quantize(w, per_row=plan.per_row_quant)
    weight = w if scale is None else Fp8Weight(w, scale, input_scale)
    return QuantLayer(
        src.name, weight.to(device), None if bias is None else bias.to(device), lp.mode, src.encoding, lp.transposed
    )


def iter_load(
    plan: LoadPlan, device="cpu", names: set[str] | None = None, tensor_dtype: torch.dtype | None = None
) -> Iterator[tuple[str, QuantLayer | torch.Tensor]]:
    """Yield `(name, QuantLayer)` for every linear and `(name, tensor)` for every other transformer
    tensor, one at a time, in file order. `names` restricts to some canonical names."""
    items = [(lp.src.weight.begin, lp.name, lp) for lp in plan.layers]
    items += [(info.begin, name, info) for name, info in plan.contents.tensors.items()]
    items.sort(key=lambda t: t[0])  # file order: sequential reads
    with open(plan.path, "rb") as f:
        if plan.file_identity is not None and identify_file(f) != plan.file_identity:
            raise CheckpointError(
                "the file changed on disk since its load was planned (size, mtime or inode "
                "differ); its header no longer describes its bytes, load it again",
                file=plan.path,
            )
        for _, name, item in items:
            if names is not None and name not in names:
                continue
            if isinstance(item, LayerPlan):
                yield name, materialize(item, f, plan, device)
            else:
                t = read_tensor(f, item, plan.path)
                check_finite(t, plan.path, item.name)
                if tensor_dtype is not None and t.is_floating_point():
                    t = t.to(tensor_dtype)
                yield name, t.to(device)


def load(
    path: str, policy: Policy | str = "auto", **kw
) -> tuple[LoadPlan, dict[str, QuantLayer], dict[str, torch.Tensor]]:
    """Plan and load a whole file into memory (CLI, tests, benchmarks)."""
    device = kw.pop("load_device", "cpu")
    plan = plan_checkpoint(path, policy, **kw)
    layers, tensors = {}, {}
    for name, item in iter_load(plan, device):
        (layers if isinstance(item, QuantLayer) else tensors)[name] = item
    return plan, layers, tensors
