"""Plausible ranges for the scales of an fp8 layer: finite and positive is not enough.

A scale that passes quant/fp8.py's checks can still make a layer meaningless. In static
scaled-mm the activations are quantized as `clamp(x / input_scale, -448, 448)` to e4m3, whose
smallest step is 2^-9: with `input_scale = 1e30` every activation below ~2e27 rounds to zero and
the layer outputs its bias alone, silently. With a tiny one every activation saturates at 448.

What the files hold: the official LTX-2.3 fp8 files (ltx-core) and ComfyUI's converters write
`weight_scale = amax(|W|) / 448` and a calibrated `input_scale = amax(|x|) / 448` (e.g. 0.0013 and
0.0157 for `transformer_blocks.10.attn1.to_k`, Lightricks/LTX-2 PR #172). Trained transformer
linears have amax(|W|) around 1e-3 to 1e1 and activations amax(|x|) around 1e-2 to 1e4, so:

- plausible (no word): weight_scale in [1e-7, 1] (weights up to 4.5e-5 .. 448), input_scale in
  [1e-6, 1e2] (activations up to 4.5e-4 .. 4.5e4), two or more decades beyond what files write;
- implausible but possibly meant: a warning naming the layers (the load report and the log);
- meaningless: refused naming the layer and tensor. An input_scale above 1e8 zeroes every
  activation below 1e8 * 2^-10 (~1e5, beyond any activation of these models: the layer computes
  its bias only); below 1e-12 every activation above 448e-12 saturates (the layer computes noise).
  A weight_scale above 1e6 makes weights up to 4.5e8 (no trained linear holds such weights).

Per-row weight scales are judged by their largest row: converters give an all-zero row a tiny
scale (amax 0), which is harmless.
"""

from __future__ import annotations

import torch

from .errors import CheckpointError

WEIGHT_SCALE_PLAUSIBLE = (1e-7, 1.0)
INPUT_SCALE_PLAUSIBLE = (1e-6, 1e2)
WEIGHT_SCALE_MAX = 1e6
INPUT_SCALE_LIMITS = (1e-12, 1e8)


def check_weight_scale(scale: torch.Tensor, layer: str, file: str | None, key: str) -> str | None:
    """Refuse a meaningless weight scale (validated fp32 `[]` or `[out]`); return a warning for an
    implausible one, else None."""
    hi = float(scale.max())  # per-row: judged by the largest row (see the module docstring)
    if hi > WEIGHT_SCALE_MAX:
        raise CheckpointError(
            f"layer {layer}: weight scale {hi:g} makes weights up to {hi * 448:g}; no trained linear "
            f"holds such weights (plausible scales: {_range(WEIGHT_SCALE_PLAUSIBLE)}, amax/448)",
            file=file,
            tensor=key,
        )
    a, b = WEIGHT_SCALE_PLAUSIBLE
    if not a <= hi <= b:
        return f"weight scale {hi:g}"
    return None


def check_input_scale(scale: torch.Tensor, layer: str, file: str | None, key: str) -> str | None:
    """Refuse a meaningless static activation scale (validated fp32 `[]`); return a warning for an
    implausible one, else None."""
    s = float(scale)
    lo, hi = INPUT_SCALE_LIMITS
    if s > hi:
        raise CheckpointError(
            f"layer {layer}: input scale {s:g} quantizes every activation below {s * 2**-10:g} to zero "
            f"in static scaled-mm (the layer would output its bias only); plausible scales: "
            f"{_range(INPUT_SCALE_PLAUSIBLE)} (calibrated amax/448)",
            file=file,
            tensor=key,
        )
    if s < lo:
        raise CheckpointError(
            f"layer {layer}: input scale {s:g} saturates every activation above {s * 448:g} in static "
            f"scaled-mm (the layer would compute noise); plausible scales: {_range(INPUT_SCALE_PLAUSIBLE)} "
            f"(calibrated amax/448)",
            file=file,
            tensor=key,
        )
    a, b = INPUT_SCALE_PLAUSIBLE
    if not a <= s <= b:
        return f"input scale {s:g}"
    return None


def implausible_warning(found: list[tuple[str, str]]) -> str:
    """One load-report line for every implausible scale: `found` is [(layer, what)]."""
    shown = "; ".join(f"{layer}: {what}" for layer, what in found[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    return (
        f"{len(found)} layer(s) with implausible scales, loaded as written: {shown}{more}; expected weight "
        f"scales in {_range(WEIGHT_SCALE_PLAUSIBLE)} and input scales in {_range(INPUT_SCALE_PLAUSIBLE)} "
        f"(amax/448, as the official files and converters write)"
    )


def _range(r: tuple[float, float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"
