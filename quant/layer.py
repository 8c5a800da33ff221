"""The canonical layer every file encoding converts into and every mode works from."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .fp8 import Fp8Weight, is_fp8

MODES = ("bf16", "fp8-cast", "scaled-mm")


@dataclass
class QuantLayer:
    """One linear layer, held as `[out, in]`.

    `weight` is an `Fp8Weight` (e4m3 codes with their scale and the file's static activation
    scale), or a full-precision tensor. `mode` is how the layer computes: `bf16` (full precision in
    the compute dtype), `fp8-cast` (fp8 storage, dequantized at forward) or `scaled-mm` (fp8 GEMM).
    """

    name: str
    weight: Fp8Weight | torch.Tensor
    bias: torch.Tensor | None = None
    mode: str = "bf16"
    source: str = "full-precision"  # the file encoding it came from (report only)
    transposed: bool = False  # the file stored it [in, out] (report only)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"layer {self.name}: unknown mode {self.mode!r}, expected one of {MODES}")
        if self.mode != "bf16" and not self.quantized:
            raise ValueError(f"layer {self.name}: mode {self.mode} needs fp8 codes with a scale")
        if not self.quantized and is_fp8(self.weight.dtype):
            # fp8 codes without their scale are ~770x too large (Lightricks/LTX-2 PR #172).
            raise ValueError(f"layer {self.name}: fp8 weight without a scale")

    @property
    def quantized(self) -> bool:
        return isinstance(self.weight, Fp8Weight)

    @property
    def scale(self) -> torch.Tensor | None:
        return self.weight.scale if self.quantized else None

    @property
    def input_scale(self) -> torch.Tensor | None:
        return self.weight.input_scale if self.quantized else None

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def effective_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this layer computes with, `[out, in]`, in `dtype`."""
        return self.weight.dequantize(dtype) if self.quantized else self.weight.to(dtype)

    def weight_bytes(self) -> int:
        """Bytes held for the weight and its scales (bias excluded: it is never quantized)."""
        return self.weight.nbytes  # an Fp8Weight counts its scales

    def with_mode(self, mode: str) -> QuantLayer:
        """The same storage computing in another fp8 mode: shares every tensor, allocates nothing."""
        return replace(self, mode=mode)
