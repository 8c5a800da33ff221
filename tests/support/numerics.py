"""Independent float64 references for the numerics tests (tests/quant/test_fp8.py, test_linear.py,
test_layout.py, test_loader.py): nothing here calls the code under test.

Bounds used (round to nearest):
- e4m3 has 3 mantissa bits: a value in the normal range (|v| >= 2^-6) rounds with relative error
  <= 2^-4; below it (subnormals, spacing 2^-9) the absolute error is <= 2^-10. In units of the
  scale s: |q(w) - w| <= max(2^-4 |w|, 2^-10 s). For Gaussian weights this gives a relative
  Frobenius error of ~0.026 (the "fp8 floor").
- A compute dtype with unit roundoff u (bf16 2^-8, fp16 2^-11, fp32 2^-24) rounds the weight and
  the output once each: |y - y_ref| <= ~2u (|x| |W|^T + |b|), plus fp32 accumulation.
"""

from __future__ import annotations

import torch

# (key, [out, in]) of the TINY model: non-square both ways, square, audio-width.
LAYERS = [
    "transformer_blocks.1.ff.net.0.proj",  # [256, 64]
    "transformer_blocks.1.ff.net.2",  # [64, 256]
    "transformer_blocks.1.attn1.to_q",  # [64, 64]
    "transformer_blocks.1.audio_ff.net.0.proj",
]  # [128, 32]

U = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
E4M3_REL = 2.0**-4  # relative rounding error bound of e4m3 normals
E4M3_SUB_ABS = 2.0**-10  # absolute rounding error bound of e4m3 subnormals (in units of the scale)
DTYPES = [torch.bfloat16, torch.float32, torch.float16]
DT_IDS = ["bf16", "fp32", "fp16"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def dequant64(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.double()
    return codes.double() * (s[:, None] if s.dim() == 1 else s)


def inputs(n_in: int, dtype: torch.dtype, rows: int = 48, seed: int = 0, bound: float = 4.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n_in, generator=g).clamp_(-bound, bound).to(dtype)
