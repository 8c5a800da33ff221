"""Small (or real-width) LTX-2.3-shaped checkpoints in every fp8 encoding seen in the wild.

Tests, benchmarks and the demo build their model files here; the real 22B files cannot be
downloaded. A file has exactly the key set and shapes of the host's `LTXAVModel` for its config
(ComfyUI 0.30.0; `tests/test_ltx2_fixture.py` checks this against the host), under a file prefix,
plus bundle passengers, with `__metadata__` = {"config": JSON {"transformer": config, "vae": ...,
"audio_vae": ..., "vocoder": ...}, "model_version": "2.3.0"} (+ `_quantization_metadata` for the
native-header encoding).

Imports torch, safetensors and quant.* only (never ComfyUI).

Configs
-------
- `TINY`: LTX-2.3 flags (gated attention, cross-attention AdaLN, caption projection before the
  connector = identity, gated connectors, split RoPE), 2 blocks, video 4 x 16 = 64, audio 4 x 8 = 32.
  Unlike the LTX-2.0-style example in comfyui-host.md, the connectors are 4 x 16 / 4 x 8 wide: with
  the 2.3 flags the connector runs on the projected text context, so its width must equal
  `cross_attention_dim` / `audio_cross_attention_dim` or the host's forward fails.
- `TINY_LTX2`: the LTX-2.0 layout of comfyui-host.md (PixArt caption projections after 48-wide
  connectors, no gates, 6-coefficient AdaLN).
- `REAL`: the LTX-2.3 22B transformer config (48 blocks, video 32 x 128 = 4096, audio 32 x 64 =
  2048, FF 16384 / 8192, 8-layer 4096 / 2048 connectors).
- `config(base, **overrides) -> dict`: a copy with overrides, e.g. `config(REAL, num_layers=2)` or
  `config(REAL, num_layers=1, connector_num_layers=1)` (the connectors are ~2 G parameters at real
  width; benchmarks of blocks usually want 1).

Weights
-------
- `expected_state_shapes(config) -> {key: shape}`: every state-dict key of the host model, no prefix.
- `reference_tensor(config, key, seed, dtype=bf16)`: one deterministic full-precision tensor (a
  key of `expected_state_shapes`); each tensor has its own generator seeded from (seed, key), so a
  tensor never depends on the others. Linear weights: N(0, 1/in) times a per-row gain
  exp(0.3 N(0,1)) (per-row scales differ); biases N(0, 0.02^2); RMSNorm weights 1 + 0.05 N;
  scale-shift tables 0.05 N; connector registers U(-1, 1).
- `make_reference_state_dict(config, seed, dtype=bf16) -> {key: Tensor}` (whole model; tiny only).

Files
-----
`write_checkpoint(path, config, encoding, *, seed=0, prefix="model.diffusion_model.",
bf16_blocks=None, quantize_gate=True, passengers=True, per_row=False, scale_2d=False,
transposed=False, input_scale="auto", dtype=torch.bfloat16, breakage=None, break_layer=None)
-> Fixture`. Streams: one tensor is generated, written and dropped at a time.

Encodings (`ENCODINGS`): for each quantized linear `L` (a linear of `transformer_blocks.N.` with N
not in `bf16_blocks`; `to_gate_logits` only if `quantize_gate`):
- `ltx-core`: `L.weight` F8_E4M3 + `L.weight_scale` F32 [] (amax/448) + `L.input_scale` F32 [].
- `comfy-native-header`: the same + header `_quantization_metadata` = {"format_version": "1.0",
  "layers": {"<prefix>L": {"format": "float8_e4m3fn"}}}.
- `comfy-native-tensor`: the same + `L.comfy_quant` U8 [n] = the per-layer JSON bytes (as the
  host's `convert_old_quants` writes them).
- `comfy-legacy`: `<prefix>scaled_fp8` marker (F8_E4M3 [0]; the host reads nelement 2 as
  "full-precision matmul") + `L.weight` F8 + `L.scale_weight` F32 [] + `L.scale_input` F32 [].
- `bf16`, `fp16`, `fp32`: everything at that precision, nothing quantized.
Every other tensor (block norms and tables, block biases, non-block layers, blocks in
`bf16_blocks`) is stored at `dtype` (bf16) in the fp8 encodings.
- `bf16_blocks`: None = (0,) when the model has 2+ blocks, else () (a 1-block file is quantized).
- The codes of `L` are exactly `quant.fp8.quantize(reference_tensor(L.weight), per_row=per_row)`.
- `per_row=True`: `weight_scale` [out] (`scale_2d=True`: [out, 1]).
- `transposed=True`: fp8 weights stored [in, out] (cuBLAS layout); full-precision ones stay [out, in].
- `input_scale`: "auto" (a deterministic per-layer value in [0.010, 0.030)), a float (all layers),
  or None (not written).
- `prefix`: "model.diffusion_model." (bundle), "diffusion_model." or "".
- `passengers`: `vae.*`, `audio_vae.*`, `vocoder.*`, `text_embedding_projection.*` placeholders
  (a few small tensors, not a loadable VAE).
- `breakage` (`BREAKAGES`), on `break_layer` (default: `attn1.to_k` of the first quantized block;
  for `mixed_layout` its non-square `ff.net.0.proj`): `missing_scale`, `nan_scale`, `inf_scale`,
  `zero_scale`, `negative_scale` (per-row: one row's scale), `scale_shape` ([out + 1]),
  `mixed_layout` (that one fp8 layer in the other layout), `truncate` (the file cut inside its
  last tensor), `unexpected_key` (`transformer_blocks.N.extra_proj.weight`), `nan_codes` (a few
  codes 0x7F = NaN). `Fixture.broken` = `Broken(kind, layer, tensor)` names the culprit (`tensor`
  is the full key in the file, prefix included; `layer` has no prefix, None for unexpected_key).

`Fixture` (the truth about a written file): `path, config, encoding, prefix, seed, dtype, keys`
({full key: (dtype str, shape)}), `quantized` ({layer: `QuantInfo(scale, input_scale, per_row,
transposed)`}, before any breakage), `full_precision` (linear names stored full precision),
`passengers` (full keys), `broken`, `metadata`; methods `reference(key_or_layer)` (the original
tensor; a layer name gives its weight), `codes(layer)` (fp8 [out, in]), `true_weight(layer)`
(float32 [out, in]: codes * scale, or the full-precision weight as stored),
`reference_state_dict()`, `linear_names()`.

LoRA
----
`write_lora(path, config, layers, rank, seed, alpha=None, prefix="diffusion_model.",
dtype=bf16) -> LoraFixture`: `<prefix><layer>.lora_A.weight` [r, in], `.lora_B.weight` [out, r],
`.alpha` F32 [] when given. `LoraFixture.delta(layer)` = (alpha / r or 1) * B @ A in float32.

CLI
---
`python -m tools.ltx2_fixture OUT.safetensors --encoding ltx-core [--real] [--layers N]
[--connector-layers N] [--seed S] [--prefix P] [--bf16-blocks 0,47] [--no-gate] [--no-passengers]
[--per-row] [--scale-2d] [--transposed] [--no-input-scale] [--breakage KIND]`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quant.fp8 import FP8, quantize  # noqa: E402
from quant.ltx2_shapes import expected_linear_shapes, resolved_config  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Configs

LTX23_FLAGS = {
    "apply_gated_attention": True,
    "cross_attention_adaln": True,
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "connector_apply_gated_attention": True,
    "rope_type": "split",
    "frequencies_precision": "float64",
}

TINY: dict = {
    "num_layers": 2,
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "audio_num_attention_heads": 4,
    "audio_attention_head_dim": 8,
    "cross_attention_dim": 64,
    "audio_cross_attention_dim": 32,
    "caption_channels": 48,
    "connector_num_attention_heads": 4,
    "connector_attention_head_dim": 16,
    "audio_connector_num_attention_heads": 4,
    "audio_connector_attention_head_dim": 8,
    "connector_num_layers": 1,
    "in_channels": 128,
    "out_channels": 128,
    "audio_in_channels": 128,
    "audio_out_channels": 128,
    **LTX23_FLAGS,
}

TINY_LTX2: dict = {
    "num_layers": 2,
    "num_attention_heads": 4,
    "attention_head_dim": 16,
    "audio_num_attention_heads": 4,
    "audio_attention_head_dim": 8,
    "cross_attention_dim": 64,
    "audio_cross_attention_dim": 32,
    "caption_channels": 48,
    "connector_num_attention_heads": 4,
    "connector_attention_head_dim": 12,
    "connector_num_layers": 1,
    "in_channels": 128,
    "audio_in_channels": 128,
    "apply_gated_attention": False,
    "cross_attention_adaln": False,
    "caption_proj_before_connector": False,
}

# The LTX-2.3 22B transformer config as the official files carry it (config["transformer"]).
REAL: dict = {
    "_class_name": "AVTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 128,
    "caption_channels": 3840,
    "cross_attention_dim": 4096,
    "in_channels": 128,
    "norm_eps": 1e-06,
    "num_attention_heads": 32,
    "num_layers": 48,
    "out_channels": 128,
    "qk_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048],
    "timestep_scale_multiplier": 1000,
    "av_ca_timestep_scale_multiplier": 1000.0,
    "causal_temporal_positioning": True,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "audio_out_channels": 128,
    "audio_cross_attention_dim": 2048,
    "audio_positional_embedding_max_pos": [20],
    "use_embeddings_connector": True,
    "connector_attention_head_dim": 128,
    "connector_num_attention_heads": 32,
    "connector_num_layers": 8,
    "connector_positional_embedding_max_pos": [4096],
    "connector_num_learnable_registers": 128,
    "use_middle_indices_grid": True,
    "caption_projection_second_linear": False,
    "caption_proj_input_norm": False,
    "audio_connector_attention_head_dim": 64,
    "audio_connector_num_attention_heads": 32,
    **LTX23_FLAGS,
}


def config(base: dict = TINY, **overrides) -> dict:
    """A copy of `base` with `overrides` (e.g. `config(REAL, num_layers=1)`)."""
    out = json.loads(json.dumps(base))
    out.update(overrides)
    return out


# ----------------------------------------------------------------------------------------------
# Key set and shapes

# Embeddings1DConnector(num_learnable_registers=128): the host never passes another count.
HOST_NUM_LEARNABLE_REGISTERS = 128

_ATTN_RE = re.compile(r"^(.*)\.to_q$")


def expected_state_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key of the host LTXAVModel's state_dict (no prefix) -> shape."""
    r = resolved_config(cfg)
    v_dim = r["num_attention_heads"] * r["attention_head_dim"]
    a_dim = r["audio_num_attention_heads"] * r["audio_attention_head_dim"]
    coef = 9 if r["cross_attention_adaln"] else 6
    out: dict[str, tuple[int, ...]] = {}
    for name, (o, i) in expected_linear_shapes(cfg).items():
        m = _ATTN_RE.match(name)
        if m:  # every CrossAttention: q_norm / k_norm over its inner dim
            out[f"{m.group(1)}.q_norm.weight"] = (o,)
            out[f"{m.group(1)}.k_norm.weight"] = (o,)
        out[f"{name}.weight"] = (o, i)
        out[f"{name}.bias"] = (o,)
    for n in range(r["num_layers"]):
        p = f"transformer_blocks.{n}"
        out[f"{p}.scale_shift_table"] = (coef, v_dim)
        out[f"{p}.audio_scale_shift_table"] = (coef, a_dim)
        if r["cross_attention_adaln"]:
            out[f"{p}.prompt_scale_shift_table"] = (2, v_dim)
            out[f"{p}.audio_prompt_scale_shift_table"] = (2, a_dim)
        out[f"{p}.scale_shift_table_a2v_ca_audio"] = (5, a_dim)
        out[f"{p}.scale_shift_table_a2v_ca_video"] = (5, v_dim)
    out["scale_shift_table"] = (2, v_dim)
    out["audio_scale_shift_table"] = (2, a_dim)
    out["audio_embeddings_connector.learnable_registers"] = (
        HOST_NUM_LEARNABLE_REGISTERS,
        r["audio_connector_num_attention_heads"] * r["audio_connector_attention_head_dim"],
    )
    out["video_embeddings_connector.learnable_registers"] = (
        HOST_NUM_LEARNABLE_REGISTERS,
        r["connector_num_attention_heads"] * r["connector_attention_head_dim"],
    )
    return out


# ----------------------------------------------------------------------------------------------
# Deterministic reference tensors


def _seed_of(seed: int, key: str) -> int:
    h = hashlib.blake2b(f"{int(seed)}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _unit(seed: int, key: str) -> float:
    """A deterministic number in [0, 1) for (seed, key)."""
    return _seed_of(seed, "unit:" + key) / float(1 << 63)


def _generate(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_seed_of(seed, key))
    if key.endswith("learnable_registers"):
        return torch.rand(shape, generator=g) * 2.0 - 1.0
    if "scale_shift_table" in key.rsplit(".", 1)[-1]:
        return torch.randn(shape, generator=g) * 0.05
    if key.endswith(("q_norm.weight", "k_norm.weight")):
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    if key.endswith(".bias"):
        return torch.randn(shape, generator=g) * 0.02
    if key.endswith(".weight") and len(shape) == 2:
        out_f, in_f = shape
        w = torch.randn(shape, generator=g)
        gain = torch.exp(0.3 * torch.randn(out_f, generator=g)) / math.sqrt(in_f)
        return w.mul_(gain[:, None])
    return torch.randn(shape, generator=g) * 0.02


def reference_tensor(
    cfg: dict, key: str, seed: int, dtype: torch.dtype = torch.bfloat16, _shapes: dict | None = None
) -> torch.Tensor:
    """The deterministic full-precision tensor `key` (no prefix) of the model for `cfg`."""
    shapes = _shapes if _shapes is not None else expected_state_shapes(cfg)
    if key not in shapes:
        raise KeyError(f"{key} is not a key of the LTXAV model for this config")
    return _generate(key, tuple(shapes[key]), seed).to(dtype)


def make_reference_state_dict(cfg: dict, seed: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """The whole model, full precision, keyed without prefix (tiny configs; real width is large)."""
    shapes = expected_state_shapes(cfg)
    return {k: reference_tensor(cfg, k, seed, dtype, shapes) for k in shapes}


# ----------------------------------------------------------------------------------------------
# Writing

ENCODINGS = ("ltx-core", "comfy-native-header", "comfy-native-tensor", "comfy-legacy", "bf16", "fp16", "fp32")
FP8_ENCODINGS = ENCODINGS[:4]
FULL_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BREAKAGES = (
    "missing_scale",
    "nan_scale",
    "inf_scale",
    "zero_scale",
    "negative_scale",
    "scale_shape",
    "mixed_layout",
    "truncate",
    "unexpected_key",
    "nan_codes",
)
FP8_ONLY_BREAKAGES = set(BREAKAGES) - {"truncate", "unexpected_key"}
PASSENGER_PREFIXES = ("vae.", "audio_vae.", "vocoder.", "text_embedding_projection.")
MODEL_VERSION = "2.3.0"
COMFY_QUANT_CONF = {"format": "float8_e4m3fn"}

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}

PASSENGERS: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "vae.per_channel_statistics.mean-of-means": ((128,), torch.float32),
    "vae.per_channel_statistics.std-of-means": ((128,), torch.float32),
    "vae.decoder.conv_in.conv.weight": ((16, 128, 3, 3, 3), torch.bfloat16),
    "vae.decoder.conv_in.conv.bias": ((16,), torch.bfloat16),
    "audio_vae.per_channel_statistics.mean-of-means": ((128,), torch.float32),
    "audio_vae.decoder.conv_in.weight": ((16, 8, 3, 3), torch.bfloat16),
    "vocoder.conv_pre.weight": ((32, 64, 7), torch.bfloat16),
    "vocoder.conv_pre.bias": ((32,), torch.bfloat16),
    "text_embedding_projection.video_aggregate_embed.weight": ((64, 96), torch.bfloat16),
    "text_embedding_projection.video_aggregate_embed.bias": ((64,), torch.bfloat16),
    "text_embedding_projection.audio_aggregate_embed.weight": ((32, 96), torch.bfloat16),
    "text_embedding_projection.audio_aggregate_embed.bias": ((32,), torch.bfloat16),
}

SUBCONFIGS = {
    "vae": {"_class_name": "CausalVideoAutoencoder", "latent_channels": 128, "note": "fixture placeholder"},
    "audio_vae": {"_class_name": "AudioVAE", "latent_channels": 8, "note": "fixture placeholder"},
    "vocoder": {"_class_name": "Vocoder", "note": "fixture placeholder"},
}


@dataclass
class QuantInfo:
    """The truth about one quantized layer as generated (before any breakage)."""

    scale: torch.Tensor  # fp32 [] or [out] (the file may hold [out, 1])
    input_scale: float | None  # the fp32 value written (None: not written)
    per_row: bool
    transposed: bool  # stored [in, out]


@dataclass
class Broken:
    kind: str
    layer: str | None  # no prefix
    tensor: str  # full key in the file
    detail: str = ""


@dataclass
class Fixture:
    path: str
    config: dict
    encoding: str
    prefix: str
    seed: int
    dtype: torch.dtype
    per_row: bool
    keys: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    quantized: dict[str, QuantInfo] = field(default_factory=dict)
    full_precision: list[str] = field(default_factory=list)
    passengers: list[str] = field(default_factory=list)
    broken: Broken | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self._shapes = expected_state_shapes(self.config)
        self._linears = expected_linear_shapes(self.config)

    def linear_names(self) -> list[str]:
        return list(self._linears)

    def reference(self, name: str) -> torch.Tensor:
        """The original full-precision tensor (dtype of the file's full-precision tensors);
        a layer name gives its weight; a prefixed key is accepted."""
        key = name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name
        if key in self._linears:
            key += ".weight"
        return reference_tensor(self.config, key, self.seed, self.dtype, self._shapes)

    def reference_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: self.reference(k) for k in self._shapes}

    def codes(self, layer: str) -> torch.Tensor:
        """fp8 codes of a quantized layer, canonical [out, in] (what the file holds, untransposed)."""
        if layer not in self.quantized:
            raise KeyError(f"{layer} is not quantized in this file")
        codes, _ = quantize(self.reference(layer), per_row=self.per_row)
        return codes

    def true_weight(self, layer: str) -> torch.Tensor:
        """float32 [out, in]: codes * scale for a quantized layer, else the stored weight."""
        if layer in self.quantized:
            q = self.quantized[layer]
            s = q.scale[:, None] if q.scale.dim() == 1 else q.scale
            return self.codes(layer).float() * s
        return self.reference(layer).float()


def _st_dtype(dtype: torch.dtype) -> str:
    return _ST_DTYPES[dtype]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def _f32(x: float) -> float:
    """`x` rounded to fp32, i.e. exactly the value an F32 tensor of the file holds."""
    return float(torch.tensor(float(x), dtype=torch.float32))


def _auto_input_scale(seed: int, layer: str) -> float:
    return _f32(0.010 + 0.020 * _unit(seed, "input_scale:" + layer))


def _first_quantized_block(num_layers: int, bf16_blocks: Iterable[int]) -> int | None:
    skip = set(bf16_blocks)
    for b in range(num_layers):
        if b not in skip:
            return b
    return None


def quantized_layer_names(cfg: dict, bf16_blocks: Iterable[int] | None = None, quantize_gate: bool = True) -> list[str]:
    """The linears an fp8 encoding quantizes for these options."""
    r = resolved_config(cfg)
    blocks = _default_bf16_blocks(r["num_layers"]) if bf16_blocks is None else set(bf16_blocks)
    out = []
    for name in expected_linear_shapes(cfg):
        m = re.match(r"^transformer_blocks\.(\d+)\.", name)
        if not m or int(m.group(1)) in blocks:
            continue
        if not quantize_gate and name.endswith(".to_gate_logits"):
            continue
        out.append(name)
    return out


def _default_bf16_blocks(num_layers: int) -> set[int]:
    return {0} if num_layers >= 2 else set()


class _Entry:
    __slots__ = ("key", "dtype", "shape", "make")

    def __init__(self, key: str, dtype: torch.dtype, shape: tuple[int, ...], make: Callable[[], torch.Tensor]):
        self.key, self.dtype, self.shape, self.make = key, dtype, tuple(int(s) for s in shape), make


def write_checkpoint(
    path: str | os.PathLike,
    cfg: dict,
    encoding: str,
    *,
    seed: int = 0,
    prefix: str = "model.diffusion_model.",
    bf16_blocks: Iterable[int] | None = None,
    quantize_gate: bool = True,
    passengers: bool = True,
    per_row: bool = False,
    scale_2d: bool = False,
    transposed: bool = False,
    input_scale: float | str | None = "auto",
    dtype: torch.dtype = torch.bfloat16,
    breakage: str | None = None,
    break_layer: str | None = None,
) -> Fixture:
    """Write one LTX-2.3-shaped checkpoint; see the module docstring. Returns its `Fixture`."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; one of {ENCODINGS}")
    if breakage is not None and breakage not in BREAKAGES:
        raise ValueError(f"unknown breakage {breakage!r}; one of {BREAKAGES}")
    fp8 = encoding in FP8_ENCODINGS
    if breakage in FP8_ONLY_BREAKAGES and not fp8:
        raise ValueError(f"breakage {breakage!r} needs an fp8 encoding, not {encoding!r}")
    if isinstance(input_scale, str) and input_scale != "auto":
        raise ValueError("input_scale must be 'auto', a number or None")
    if not fp8:
        dtype = FULL_PRECISION[encoding]
    path = os.fspath(path)
    cfg = json.loads(json.dumps(cfg))
    r = resolved_config(cfg)
    num_layers = r["num_layers"]
    blocks_bf16 = _default_bf16_blocks(num_layers) if bf16_blocks is None else set(int(b) for b in bf16_blocks)
    shapes = expected_state_shapes(cfg)
    linears = expected_linear_shapes(cfg)
    quant_layers = set(quantized_layer_names(cfg, blocks_bf16, quantize_gate)) if fp8 else set()

    fx = Fixture(
        path=path, config=cfg, encoding=encoding, prefix=prefix, seed=int(seed), dtype=dtype, per_row=bool(per_row)
    )
    fx.full_precision = [n for n in linears if n not in quant_layers]

    # The culprit of a breakage.
    target: str | None = None
    if breakage in FP8_ONLY_BREAKAGES:
        if not quant_layers:
            raise ValueError(f"breakage {breakage!r}: this file has no quantized layer")
        if break_layer is None:
            b = _first_quantized_block(num_layers, blocks_bf16)
            break_layer = f"transformer_blocks.{b}." + ("ff.net.0.proj" if breakage == "mixed_layout" else "attn1.to_k")
        if break_layer not in quant_layers:
            raise ValueError(f"break_layer {break_layer!r} is not a quantized layer of this file")
        o, i = linears[break_layer]
        if breakage == "mixed_layout" and o == i:
            raise ValueError(f"mixed_layout needs a non-square layer, {break_layer} is {o}x{i}")
        target = break_layer

    legacy = encoding == "comfy-legacy"
    scale_suffix = ".scale_weight" if legacy else ".weight_scale"
    input_suffix = ".scale_input" if legacy else ".input_scale"

    # Quantize lazily: the first of a layer's tensors to be written computes (codes, scale); both
    # are dropped once written.
    memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    pending: dict[str, int] = {}
    users = {layer: (1 if breakage == "missing_scale" and layer == target else 2) for layer in quant_layers}

    def quantized(layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        if layer not in memo:
            ref = reference_tensor(cfg, layer + ".weight", seed, dtype, shapes)
            codes, scale = quantize(ref, per_row=per_row)
            memo[layer] = (codes, scale)
            pending[layer] = users[layer]
            fx.quantized[layer].scale = scale.clone()
        return memo[layer]

    def consumed(layer: str) -> None:
        pending[layer] -= 1
        if pending[layer] == 0:
            del memo[layer], pending[layer]

    entries: list[_Entry] = []

    def add(key: str, dt: torch.dtype, shape, make) -> None:
        entries.append(_Entry(prefix + key, dt, shape, make))

    def full(key: str, dt: torch.dtype = dtype):
        return lambda: reference_tensor(cfg, key, seed, dt, shapes)

    for key, shape in shapes.items():
        layer, _, leaf = key.rpartition(".")
        if layer not in quant_layers or leaf != "weight":
            add(key, dtype, shape, full(key))
            continue
        o, i = shape
        layer_t = transposed != (breakage == "mixed_layout" and layer == target)
        isc = (
            _auto_input_scale(seed, layer)
            if input_scale == "auto"
            else (None if input_scale is None else _f32(input_scale))
        )
        fx.quantized[layer] = QuantInfo(
            scale=torch.empty(0), input_scale=isc, per_row=bool(per_row), transposed=transposed
        )

        def make_weight(layer=layer, layer_t=layer_t):
            codes, _ = quantized(layer)
            consumed(layer)
            if breakage == "nan_codes" and layer == target:
                codes = codes.clone()
                bits = codes.view(torch.uint8).reshape(-1)
                n = bits.numel()
                for j in (0, n // 3, n // 2, n - 1):
                    bits[j] = 0x7F
            return codes.t().contiguous() if layer_t else codes

        add(key, FP8, (i, o) if layer_t else (o, i), make_weight)

        if not (breakage == "missing_scale" and layer == target):
            if per_row:
                sshape = (o, 1) if scale_2d else (o,)
            else:
                sshape = ()
            if breakage == "scale_shape" and layer == target:
                sshape = (o + 1,)

            def make_scale(layer=layer, sshape=sshape):
                _, scale = quantized(layer)
                consumed(layer)
                s = scale.clone()
                if layer == target and breakage in ("nan_scale", "inf_scale", "zero_scale", "negative_scale"):
                    flat = s.reshape(-1)
                    j = flat.numel() // 2
                    flat[j] = {
                        "nan_scale": float("nan"),
                        "inf_scale": float("inf"),
                        "zero_scale": 0.0,
                        "negative_scale": -float(flat[j]),
                    }[breakage]
                if breakage == "scale_shape" and layer == target:
                    return s.reshape(-1)[:1].expand(sshape).contiguous()
                return s.reshape(sshape)

            add(layer + scale_suffix, torch.float32, sshape, make_scale)
        if isc is not None:
            add(layer + input_suffix, torch.float32, (), lambda v=isc: torch.tensor(v, dtype=torch.float32))
        if encoding == "comfy-native-tensor":
            blob = json.dumps(COMFY_QUANT_CONF).encode("utf-8")
            add(
                layer + ".comfy_quant",
                torch.uint8,
                (len(blob),),
                lambda blob=blob: torch.tensor(list(blob), dtype=torch.uint8),
            )

    if legacy:
        add("scaled_fp8", FP8, (0,), lambda: torch.empty(0, dtype=FP8))

    if breakage == "unexpected_key":
        b = _first_quantized_block(num_layers, blocks_bf16) if fp8 else 0
        b = 0 if b is None else b
        key = f"transformer_blocks.{b}.extra_proj.weight"
        add(key, dtype, (8, 8), lambda: torch.full((8, 8), 0.01, dtype=dtype))
        fx.broken = Broken("unexpected_key", None, prefix + key, "a key the LTXAV model does not have")

    if passengers:
        for key, (shape, dt) in PASSENGERS.items():
            entries.append(
                _Entry(
                    key,
                    dt,
                    shape,
                    lambda key=key, shape=shape, dt=dt: _generate("passenger:" + key, shape, seed).to(dt),
                )
            )
            fx.passengers.append(key)

    # Header
    metadata = {
        "config": json.dumps({"transformer": cfg, **SUBCONFIGS}),
        "model_version": MODEL_VERSION,
    }
    if encoding == "comfy-native-header":
        metadata["_quantization_metadata"] = json.dumps(
            {
                "format_version": "1.0",
                "layers": {prefix + layer: dict(COMFY_QUANT_CONF) for layer in sorted(quant_layers)},
            }
        )
    fx.metadata = metadata

    entries.sort(key=lambda e: e.key)
    header: dict = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        nbytes = math.prod(e.shape) * torch.empty((), dtype=e.dtype).element_size()
        header[e.key] = {"dtype": _st_dtype(e.dtype), "shape": list(e.shape), "data_offsets": [offset, offset + nbytes]}
        fx.keys[e.key] = (_st_dtype(e.dtype), e.shape)
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)

    if breakage in FP8_ONLY_BREAKAGES:
        tensor = {
            "missing_scale": prefix + target + scale_suffix,
            "mixed_layout": prefix + target + ".weight",
            "nan_codes": prefix + target + ".weight",
        }.get(breakage, prefix + target + scale_suffix)
        fx.broken = Broken(breakage, target, tensor)

    last_key, last_size = None, 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for e in entries:
            t = e.make()
            if tuple(t.shape) != e.shape or t.dtype != e.dtype:
                raise AssertionError(
                    f"fixture bug: {e.key} made {t.dtype} {list(t.shape)}, header says {e.dtype} {list(e.shape)}"
                )
            f.write(_tensor_bytes(t))
            del t
            if math.prod(e.shape) > 0:
                last_key, last_size = e.key, header[e.key]["data_offsets"][1] - header[e.key]["data_offsets"][0]
    assert not memo, f"fixture bug: quantized layers never written: {sorted(memo)}"

    if breakage == "truncate":
        size = os.path.getsize(path)
        cut = max(1, last_size // 2)
        os.truncate(path, size - cut)
        layer = last_key[len(prefix) :].rpartition(".")[0] if last_key.startswith(prefix) else None
        fx.broken = Broken("truncate", layer, last_key, f"file cut {cut} bytes short, inside {last_key}")
    return fx


# ----------------------------------------------------------------------------------------------
# LoRA


@dataclass
class LoraFixture:
    path: str
    config: dict
    layers: list[str]
    rank: int
    alpha: float | None
    prefix: str
    seed: int
    dtype: torch.dtype

    def factors(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [r, in], B [out, r]) as stored."""
        o, i = expected_linear_shapes(self.config)[layer]
        ga = torch.Generator().manual_seed(_seed_of(self.seed, f"lora_A:{layer}"))
        gb = torch.Generator().manual_seed(_seed_of(self.seed, f"lora_B:{layer}"))
        a = torch.randn(self.rank, i, generator=ga) / math.sqrt(i)
        b = torch.randn(o, self.rank, generator=gb) * (0.1 / math.sqrt(self.rank))
        return a.to(self.dtype), b.to(self.dtype)

    def delta(self, layer: str) -> torch.Tensor:
        """The weight delta the LoRA adds, float32 [out, in]: (alpha / rank or 1) * B @ A."""
        a, b = self.factors(layer)
        scale = (self.alpha / self.rank) if self.alpha is not None else 1.0
        return (b.float() @ a.float()) * scale


def write_lora(
    path: str | os.PathLike,
    cfg: dict,
    layers: Iterable[str],
    rank: int,
    seed: int,
    alpha: float | None = None,
    prefix: str = "diffusion_model.",
    dtype: torch.dtype = torch.bfloat16,
) -> LoraFixture:
    """A small LTX LoRA for `layers` (names without prefix, linears of the config's model)."""
    from safetensors.torch import save_file

    layers = list(layers)
    known = expected_linear_shapes(cfg)
    for layer in layers:
        if layer not in known:
            raise ValueError(f"{layer} is not a linear of the LTXAV model for this config")
    lf = LoraFixture(
        os.fspath(path),
        json.loads(json.dumps(cfg)),
        layers,
        int(rank),
        None if alpha is None else float(alpha),
        prefix,
        int(seed),
        dtype,
    )
    sd = {}
    for layer in layers:
        a, b = lf.factors(layer)
        sd[f"{prefix}{layer}.lora_A.weight"] = a.contiguous()
        sd[f"{prefix}{layer}.lora_B.weight"] = b.contiguous()
        if alpha is not None:
            sd[f"{prefix}{layer}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    save_file(sd, lf.path, metadata={"format": "pt", "fixture": "tools.ltx2_fixture"})
    return lf


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.ltx2_fixture", description="Write an LTX-2.3-shaped test checkpoint."
    )
    ap.add_argument("out")
    ap.add_argument("--encoding", default="ltx-core", choices=ENCODINGS)
    ap.add_argument("--real", action="store_true", help="LTX-2.3 22B widths (default: tiny)")
    ap.add_argument("--layers", type=int, default=None, help="number of transformer blocks")
    ap.add_argument("--connector-layers", type=int, default=None, help="layers of each embedding connector")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix", default="model.diffusion_model.")
    ap.add_argument("--bf16-blocks", default=None, help="comma list of blocks kept bf16 ('' for none)")
    ap.add_argument("--no-gate", action="store_true", help="keep to_gate_logits bf16")
    ap.add_argument("--no-passengers", action="store_true")
    ap.add_argument("--per-row", action="store_true")
    ap.add_argument("--scale-2d", action="store_true", help="per-row scales as [out, 1]")
    ap.add_argument("--transposed", action="store_true", help="fp8 weights stored [in, out]")
    ap.add_argument("--no-input-scale", action="store_true")
    ap.add_argument("--breakage", default=None, choices=BREAKAGES)
    a = ap.parse_args(argv)

    over = {}
    if a.layers is not None:
        over["num_layers"] = a.layers
    if a.connector_layers is not None:
        over["connector_num_layers"] = a.connector_layers
    cfg = config(REAL if a.real else TINY, **over)
    bf16_blocks = None
    if a.bf16_blocks is not None:
        bf16_blocks = [int(x) for x in a.bf16_blocks.split(",") if x.strip()]
    fx = write_checkpoint(
        a.out,
        cfg,
        a.encoding,
        seed=a.seed,
        prefix=a.prefix,
        bf16_blocks=bf16_blocks,
        quantize_gate=not a.no_gate,
        passengers=not a.no_passengers,
        per_row=a.per_row,
        scale_2d=a.scale_2d,
        transposed=a.transposed,
        input_scale=None if a.no_input_scale else "auto",
        breakage=a.breakage,
    )
    print(
        json.dumps(
            {
                "path": fx.path,
                "bytes": os.path.getsize(fx.path),
                "encoding": fx.encoding,
                "num_layers": resolved_config(cfg)["num_layers"],
                "tensors": len(fx.keys),
                "quantized_layers": len(fx.quantized),
                "full_precision_linears": len(fx.full_precision),
                "passengers": len(fx.passengers),
                "broken": None if fx.broken is None else fx.broken.__dict__,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
