"""fp8 GEMM backends for scaled-mm: torch's `_scaled_mm` and, optionally, TensorRT-LLM.

Both take the weight as the cuBLAS `[in, out]` operand. We never store that layout: `codes.t()` of
the canonical `[out, in]` codes is exactly the column-major `[in, out]` view cuBLAS wants, so the
transposition is free and square layers cannot silently go wrong (Lightricks/LTX-2 issue #205).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

BACKENDS = ("auto", "torch", "tensorrt-llm")


class BackendUnavailable(RuntimeError):
    pass


@functools.cache
def tensorrt_llm_available() -> bool:
    if importlib.util.find_spec("tensorrt_llm") is None:
        return False
    try:
        import tensorrt_llm  # noqa: F401  (registers torch.ops.trtllm)

        return hasattr(torch.ops, "trtllm") and hasattr(torch.ops.trtllm, "cublas_scaled_mm")
    except Exception:  # a broken install is the same as none, for "auto"
        return False


def resolve_backend(requested: str) -> str:
    """`auto` picks TensorRT-LLM when importable, else torch; asking for it explicitly without it fails."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown scaled-mm backend {requested!r}, expected one of {BACKENDS}")
    if requested == "torch":
        return "torch"
    if tensorrt_llm_available():
        return "tensorrt-llm"
    if requested == "tensorrt-llm":
        raise BackendUnavailable(
            "backend 'tensorrt-llm' was asked for but tensorrt_llm is not importable "
            "(it installs only on CUDA machines: pip install tensorrt_llm); use backend 'torch' or 'auto'"
        )
    return "torch"


def gemm_fp8(
    xq: torch.Tensor,
    codes: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """`(xq * a_scale) @ (codes * b_scale).T + bias` for 2-D fp8 `xq [M, in]`, `codes [out, in]`."""
    if b_scale.dim() == 1:
        # Row-wise weight scales need row-wise activation scales in the same call.
        a_scale = a_scale.reshape(1, 1).expand(xq.shape[0], 1).contiguous() if a_scale.dim() == 0 else a_scale
        b_scale = b_scale.reshape(1, -1)
    # cuBLAS fuses a bias only in a 16-bit output dtype; otherwise add it after.
    fuse_bias = bias is not None and out_dtype in (torch.bfloat16, torch.float16) and bias.dtype == out_dtype
    if backend == "tensorrt-llm":
        out = torch.ops.trtllm.cublas_scaled_mm(xq, codes.t(), a_scale, b_scale, bias if fuse_bias else None, out_dtype)
    else:
        out = torch._scaled_mm(
            xq, codes.t(), scale_a=a_scale, scale_b=b_scale, bias=bias if fuse_bias else None, out_dtype=out_dtype
        )
    if bias is not None and not fuse_bias:
        out = out + bias.to(out_dtype)
    return out
