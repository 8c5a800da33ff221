"""fp8 e4m3 numerics: quantize, dequantize, and the checks a scale must pass.

The true weight of an fp8 layer is `codes.float() * scale` (per-row: one scale per output row).
Dropping the scale gives weights ~770x too large (Lightricks/LTX-2 PR #172); folding it in and
re-casting to fp8 without a scale doubles the error (upstream's later fp8-cast fix). So codes and
scale always travel together, as one `Fp8Weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import CheckpointError

FP8 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(FP8).max)  # 448
F32_MAX = float(torch.finfo(torch.float32).max)
# Smallest scale we hand out: an all-zero weight still gets a valid (positive, finite) scale.
_MIN_SCALE = 1e-12


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def weight_range(weight: torch.Tensor, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(min, max)` of the weight, whole or per row: one pass in the weight's own dtype (exact: no
    rounding in min/max). NaN propagates to both ends and an inf shows in one, so the same pass
    decides whether a weight can be quantized (`range_is_finite`) and its scale (`range_scale`)."""
    return torch.aminmax(weight, dim=1) if per_row else torch.aminmax(weight)


def range_is_finite(lo: torch.Tensor, hi: torch.Tensor) -> bool:
    return bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())


def range_scale(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """fp32 scale mapping max |w| = max(max w, -min w) to the e4m3 max: `[]`, or `[out]` per row."""
    amax = torch.maximum(hi, lo.neg())
    return (amax.float() / E4M3_MAX).clamp_min(_MIN_SCALE).to(torch.float32)


def amax_scale(weight: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """fp32 scale mapping the weight's amax to the e4m3 max: `[]`, or `[out]` per row (one min/max
    pass in the weight's dtype, not full-size float32 and abs() copies of a weight of GBs)."""
    return range_scale(*weight_range(weight, per_row))


def _rows(scale: torch.Tensor) -> torch.Tensor:
    """The scale shaped to broadcast over `[out, in]`: a per-row `[out]` scale becomes `[out, 1]`."""
    return scale[:, None] if scale.dim() == 1 else scale


# Elements of one fp32 slab of `quantize` on CPU: small enough to stay in the core's cache through
# the convert, divide, clamp and fp8 cast. A whole-weight fp32 temporary is first faulted in, then
# written to RAM and read back three times: 2.3x slower on a 4096x16384 bf16 weight (465 vs 1084 M
# elements/s, this repo's 2-core CI machine).
_QUANTIZE_SLAB = 1 << 18


def quantize(weight: torch.Tensor, scale: torch.Tensor | None = None, per_row: bool = False):
    """Return `(codes, scale)`: fp8 codes of `weight / scale`, clamped to the e4m3 range.

    The clamp matters: values past 448 cast to NaN in e4m3fn, not to the max. On CPU a 2-D weight
    is converted a slab of rows at a time, bit-identical to the whole-tensor arithmetic (every
    element goes through the same fp32 divide, clamp and cast).
    """
    if scale is None:
        scale = amax_scale(weight, per_row)
    div = _rows(scale)
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.numel() <= _QUANTIZE_SLAB:
        w = weight.to(torch.float32, copy=True).div_(div)  # one fp32 copy, not two
        return w.clamp_(-E4M3_MAX, E4M3_MAX).to(FP8), scale
    codes = torch.empty(weight.shape, dtype=FP8)
    rows = max(1, _QUANTIZE_SLAB // weight.shape[1])
    slab = torch.empty((rows, weight.shape[1]), dtype=torch.float32)
    for start in range(0, weight.shape[0], rows):
        end = min(start + rows, weight.shape[0])
        part = slab[: end - start].copy_(weight[start:end])
        part.div_(div[start:end] if div.dim() else div).clamp_(-E4M3_MAX, E4M3_MAX)
        codes[start:end].copy_(part)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`codes * scale` in `dtype`. The product is formed in fp32 before the final cast, so a bf16
    compute dtype rounds once, not twice."""
    return codes.to(torch.float32, copy=True).mul_(_rows(scale.float())).to(dtype)


@dataclass(frozen=True)
class Fp8Weight:
    """An fp8 weight as one value: e4m3 codes `[out, in]`, their fp32 scale (`[]` per tensor or
    `[out]` per row) and the file's optional static activation scale (`input_scale`, scaled-mm)."""

    codes: torch.Tensor
    scale: torch.Tensor
    input_scale: torch.Tensor | None = None

    def __post_init__(self):
        if self.codes.dtype != FP8 or self.codes.dim() != 2:
            raise ValueError(f"fp8 codes must be {FP8} [out, in], not {self.codes.dtype}{list(self.codes.shape)}")
        if not (self.scale.dim() == 0 or tuple(self.scale.shape) == (self.codes.shape[0],)):
            raise ValueError(
                f"fp8 scale must be [] or [{self.codes.shape[0]}], not {list(self.scale.shape)} "
                f"(codes {list(self.codes.shape)})"
            )

    @classmethod
    def quantize(cls, weight: torch.Tensor, per_row: bool = False, input_scale=None) -> Fp8Weight:
        """`weight` as e4m3 codes with a fresh amax scale (per tensor, or one per row)."""
        return cls(*quantize(weight, per_row=per_row), input_scale)

    @property
    def per_row(self) -> bool:
        return self.scale.dim() == 1

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.codes.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and both scales."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.input_scale) if t is not None)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The true weight in `dtype` (the product formed in fp32: one rounding into `dtype`)."""
        return dequantize(self.codes, self.scale, dtype)

    def scale_like(self, t: torch.Tensor) -> torch.Tensor:
        """The scale in `t`'s dtype and device, shaped to multiply a `[out, in]` tensor."""
        return _rows(self.scale.to(device=t.device, dtype=t.dtype))

    def requantize(self, weight: torch.Tensor) -> Fp8Weight:
        """A new full-precision `weight` (e.g. a LoRA merged in) as fp8 with a fresh amax scale of
        this weight's granularity; the static activation scale is kept (the inputs did not change)."""
        return Fp8Weight.quantize(weight, self.per_row, self.input_scale)

    def to(self, device, non_blocking: bool = False) -> Fp8Weight:
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Fp8Weight(move(self.codes), move(self.scale), move(self.input_scale))


def check_scale(scale: torch.Tensor, rows: int, layer: str, file: str | None, key: str) -> torch.Tensor:
    """Validate a weight scale and return it as fp32 `[]` or `[rows]`.

    Accepts `[]`, `[1]`, `[rows]` and `[rows, 1]` (per-row converters write either). NaN, inf, zero
    and negative scales are refused: each would silently zero or poison the layer.
    """
    _check_float(scale, layer, file, key, "weight scale")
    s = scale
    if s.dim() == 1 and s.numel() == 1 and rows != 1:
        s = s.reshape(())
    elif s.dim() == 2 and s.shape[1] == 1:
        s = s.reshape(-1)
    if not (s.dim() == 0 or (s.dim() == 1 and s.shape[0] == rows)):
        raise CheckpointError(
            f"layer {layer}: weight scale has shape {list(scale.shape)}, expected [] (per-tensor) "
            f"or [{rows}] / [{rows}, 1] (per-row)",
            file=file,
            tensor=key,
        )
    s = s.to(torch.float32)
    _check_values(s, layer, file, key, "weight scale")
    if float(s.max()) * E4M3_MAX > F32_MAX:
        # codes * scale would overflow to inf: the layer's weights cannot be represented.
        raise CheckpointError(
            f"layer {layer}: weight scale {float(s.max()):g} makes weights up to "
            f"{float(s.max()) * E4M3_MAX:g}, beyond the float32 range",
            file=file,
            tensor=key,
        )
    return s


def check_input_scale(scale: torch.Tensor, layer: str, file: str | None, key: str) -> torch.Tensor:
    """Validate a static activation scale: a single positive finite fp32 number."""
    _check_float(scale, layer, file, key, "input scale")
    if scale.numel() != 1:
        raise CheckpointError(
            f"layer {layer}: input scale has shape {list(scale.shape)}, expected a single number", file=file, tensor=key
        )
    s = scale.reshape(()).to(torch.float32)
    _check_values(s, layer, file, key, "input scale")
    return s


def _check_float(s: torch.Tensor, layer: str, file: str | None, key: str, what: str) -> None:
    # An integer or bool tensor converted to fp32 would pass every value check with a made-up scale.
    if not s.is_floating_point():
        raise CheckpointError(
            f"layer {layer}: {what} is stored as {str(s.dtype).replace('torch.', '')}; expected a float tensor",
            file=file,
            tensor=key,
        )


def check_finite(t: torch.Tensor, file: str | None, key: str, what: str = "tensor") -> None:
    """A full-precision tensor holding NaN or inf would poison every output that uses it."""
    if t.numel() == 0 or not t.is_floating_point() or is_fp8(t.dtype):
        return
    lo, hi = torch.aminmax(t)  # NaN propagates to both; an inf shows in one (no full-size temporaries)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        n = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{what} holds {n} NaN or inf value(s)", file=file, tensor=key)


def _check_values(s: torch.Tensor, layer: str, file: str | None, key: str, what: str) -> None:
    if not torch.isfinite(s).all():
        raise CheckpointError(f"layer {layer}: {what} is not finite (NaN or inf)", file=file, tensor=key)
    if not (s > 0).all():
        raise CheckpointError(f"layer {layer}: {what} must be > 0, found {s.min().item():g}", file=file, tensor=key)


def check_codes(codes: torch.Tensor, layer: str, file: str | None, key: str) -> None:
    """fp8 codes that decode to NaN (0x7F/0xFF in e4m3fn) would poison every output of the layer."""
    if codes.dtype == FP8:
        # The NaN codes are 0xFF (the uint8 maximum) and 0x7F (the int8 maximum): two reductions
        # decide, without full-size temporaries (this check ran ~4x longer than reading the codes).
        if codes.numel() == 0 or (
            int(codes.view(torch.uint8).max()) < 0xFF and int(codes.view(torch.int8).max()) < 0x7F
        ):
            return
        bits = codes.view(torch.uint8)
        nan = (bits & 0x7F) == 0x7F
        if bool(nan.any()):
            n = int(nan.sum())
            raise CheckpointError(f"layer {layer}: {n} fp8 weight codes decode to NaN", file=file, tensor=key)
