"""Expected `[out, in]` of every linear of an LTX-2 / LTX-2.3 (LTXAV: video + audio) transformer.

Derived from the header's `config["transformer"]` exactly as the host builds the model
(ComfyUI 0.30.0: `comfy/ldm/lightricks/av_model.py: LTXAVModel`, `model.py: LTXBaseModel`,
`embeddings_connector.py: Embeddings1DConnector`); a key absent from the config takes the host's
constructor default (`LTXAVModel.__init__` / the `kwargs.get(...)` defaults). Keys the host does
not read (`out_channels`, `audio_out_channels`, `connector_num_learnable_registers`, ...) are
ignored here too: the host sizes `proj_out` from `in_channels`, always.

Names have no file prefix: `transformer_blocks.3.attn1.to_q`, `patchify_proj`,
`video_embeddings_connector.transformer_1d_blocks.0.ff.net.2`, ...

Pure Python (no torch): the layout decision and the CLI use it on the header alone.
"""

from __future__ import annotations

import re

# LTXAVModel.__init__ defaults (ComfyUI 0.30.0), plus the **kwargs lookups of LTXBaseModel and
# LTXAVModel._init_model_components.
HOST_DEFAULTS: dict = {
    "in_channels": 128,
    "audio_in_channels": 128,
    "cross_attention_dim": 4096,
    "audio_cross_attention_dim": 2048,
    "attention_head_dim": 128,
    "audio_attention_head_dim": 64,
    "num_attention_heads": 32,
    "audio_num_attention_heads": 32,
    "caption_channels": 3840,
    "num_layers": 48,
    "apply_gated_attention": False,
    "caption_proj_before_connector": False,
    "cross_attention_adaln": False,
    "caption_projection_first_linear": True,
    "connector_apply_gated_attention": False,
    "connector_attention_head_dim": 128,
    "connector_num_attention_heads": 30,
    "connector_num_layers": 2,
    # audio_connector_attention_head_dim / audio_connector_num_attention_heads default to the
    # (video) connector's values.
}

# The host's timestep embedder: Timesteps(num_channels=256) -> TimestepEmbedding(256, dim).
TIMESTEP_PROJ_CHANNELS = 256
# AdaLN coefficient counts (model.py: ADALN_BASE_PARAMS_COUNT / ADALN_CROSS_ATTN_PARAMS_COUNT).
ADALN_BASE = 6
ADALN_CROSS_ATTN = 9
# FeedForward(dim, mult=4): net.0.proj [4*dim, dim], net.2 [dim, 4*dim].
FF_MULT = 4

_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
# Inside a block only these are linears; norms and scale-shift tables are not.
_BLOCK_NON_LINEAR = re.compile(r"(^|\.)(q_norm|k_norm|[a-z0-9_]*scale_shift_table[a-z0-9_]*)(\.|$)")


def resolved_config(transformer_config: dict | None, num_layers: int | None = None) -> dict:
    """The config with the host's defaults filled in (only the keys that size linears)."""
    cfg = dict(HOST_DEFAULTS)
    for k, v in (transformer_config or {}).items():
        if k in HOST_DEFAULTS or k.startswith("audio_connector_"):
            cfg[k] = v
    if num_layers is not None:
        cfg["num_layers"] = int(num_layers)
    cfg.setdefault("audio_connector_attention_head_dim", cfg["connector_attention_head_dim"])
    cfg.setdefault("audio_connector_num_attention_heads", cfg["connector_num_attention_heads"])
    return cfg


def _attention(out: dict, name: str, query_dim: int, context_dim: int, heads: int, dim_head: int, gated: bool) -> None:
    """model.py CrossAttention: to_q/k/v [inner, query|context], to_gate_logits [heads, query],
    to_out.0 [query, inner]."""
    inner = heads * dim_head
    out[f"{name}.to_q"] = (inner, query_dim)
    out[f"{name}.to_k"] = (inner, context_dim)
    out[f"{name}.to_v"] = (inner, context_dim)
    if gated:
        out[f"{name}.to_gate_logits"] = (heads, query_dim)
    out[f"{name}.to_out.0"] = (query_dim, inner)


def _ff(out: dict, name: str, dim: int) -> None:
    out[f"{name}.net.0.proj"] = (FF_MULT * dim, dim)
    out[f"{name}.net.2"] = (dim, FF_MULT * dim)


def _adaln(out: dict, name: str, dim: int, coefficient: int) -> None:
    """model.py AdaLayerNormSingle: emb.timestep_embedder.linear_1/2, linear [coef*dim, dim]."""
    out[f"{name}.emb.timestep_embedder.linear_1"] = (dim, TIMESTEP_PROJ_CHANNELS)
    out[f"{name}.emb.timestep_embedder.linear_2"] = (dim, dim)
    out[f"{name}.linear"] = (coefficient * dim, dim)


def _caption_projection(out: dict, name: str, cfg: dict, hidden: int) -> None:
    if cfg["caption_proj_before_connector"]:
        if cfg["caption_projection_first_linear"]:
            # NormSingleLinearTextProjection
            out[f"{name}.linear_1"] = (hidden, cfg["caption_channels"])
        # else: identity, no parameters (LTX-2.3)
    else:
        # PixArtAlphaTextProjection
        out[f"{name}.linear_1"] = (hidden, cfg["caption_channels"])
        out[f"{name}.linear_2"] = (hidden, hidden)


def _connector(out: dict, name: str, heads: int, dim_head: int, layers: int, gated: bool) -> None:
    inner = heads * dim_head
    for i in range(layers):
        blk = f"{name}.transformer_1d_blocks.{i}"
        _attention(out, f"{blk}.attn1", inner, inner, heads, dim_head, gated)
        _ff(out, f"{blk}.ff", inner)


def _block(out: dict, cfg: dict, i: int) -> None:
    v_heads, vd_head = cfg["num_attention_heads"], cfg["attention_head_dim"]
    a_heads, ad_head = cfg["audio_num_attention_heads"], cfg["audio_attention_head_dim"]
    v_dim, a_dim = v_heads * vd_head, a_heads * ad_head
    gated = bool(cfg["apply_gated_attention"])
    p = f"transformer_blocks.{i}"
    _attention(out, f"{p}.attn1", v_dim, v_dim, v_heads, vd_head, gated)
    _attention(out, f"{p}.audio_attn1", a_dim, a_dim, a_heads, ad_head, gated)
    _attention(out, f"{p}.attn2", v_dim, cfg["cross_attention_dim"], v_heads, vd_head, gated)
    _attention(out, f"{p}.audio_attn2", a_dim, cfg["audio_cross_attention_dim"], a_heads, ad_head, gated)
    # Q video, K/V audio; Q audio, K/V video: both with the audio heads.
    _attention(out, f"{p}.audio_to_video_attn", v_dim, a_dim, a_heads, ad_head, gated)
    _attention(out, f"{p}.video_to_audio_attn", a_dim, v_dim, a_heads, ad_head, gated)
    _ff(out, f"{p}.ff", v_dim)
    _ff(out, f"{p}.audio_ff", a_dim)


def expected_linear_shapes(
    transformer_config: dict | None, num_layers: int | None = None
) -> dict[str, tuple[int, int]]:
    """Every nn.Linear of the host's LTXAVModel for this config -> its weight shape `(out, in)`.

    `num_layers` overrides `config["num_layers"]` (files count their blocks from keys, as the host's
    detection does).
    """
    cfg = resolved_config(transformer_config, num_layers)
    v_dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    a_dim = cfg["audio_num_attention_heads"] * cfg["audio_attention_head_dim"]
    coef = ADALN_CROSS_ATTN if cfg["cross_attention_adaln"] else ADALN_BASE
    out: dict[str, tuple[int, int]] = {}

    # LTXBaseModel._init_common_components
    out["patchify_proj"] = (v_dim, cfg["in_channels"])
    _adaln(out, "adaln_single", v_dim, coef)
    if cfg["cross_attention_adaln"]:
        _adaln(out, "prompt_adaln_single", v_dim, 2)
    _caption_projection(out, "caption_projection", cfg, v_dim)

    # LTXAVModel._init_model_components
    out["audio_patchify_proj"] = (a_dim, cfg["audio_in_channels"])
    _adaln(out, "audio_adaln_single", a_dim, coef)
    if cfg["cross_attention_adaln"]:
        _adaln(out, "audio_prompt_adaln_single", a_dim, 2)
    _adaln(out, "av_ca_video_scale_shift_adaln_single", v_dim, 4)
    _adaln(out, "av_ca_a2v_gate_adaln_single", v_dim, 1)
    _adaln(out, "av_ca_audio_scale_shift_adaln_single", a_dim, 4)
    _adaln(out, "av_ca_v2a_gate_adaln_single", a_dim, 1)
    _caption_projection(out, "audio_caption_projection", cfg, a_dim)
    gated_c = bool(cfg["connector_apply_gated_attention"])
    _connector(
        out,
        "audio_embeddings_connector",
        cfg["audio_connector_num_attention_heads"],
        cfg["audio_connector_attention_head_dim"],
        cfg["connector_num_layers"],
        gated_c,
    )
    _connector(
        out,
        "video_embeddings_connector",
        cfg["connector_num_attention_heads"],
        cfg["connector_attention_head_dim"],
        cfg["connector_num_layers"],
        gated_c,
    )

    # LTXAVModel._init_transformer_blocks
    for i in range(cfg["num_layers"]):
        _block(out, cfg, i)

    # LTXAVModel._init_output_components (proj_out sized by in_channels: out_channels = in_channels)
    out["proj_out"] = (cfg["in_channels"], v_dim)
    out["audio_proj_out"] = (cfg["audio_in_channels"], a_dim)
    return out


def strip_prefix(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p) :]
    return name


def block_index(name: str) -> int | None:
    """N for a name inside `transformer_blocks.N.`, else None (file prefixes are ignored)."""
    m = _BLOCK_RE.match(strip_prefix(name))
    return int(m.group(1)) if m else None


def is_sensitive(name: str) -> bool:
    """True for everything that is not a linear inside `transformer_blocks.N.`.

    That is every top-level layer (patchify / proj_out, adaln_single and its twins, caption
    projections, the embedding connectors) and, inside a block, the norms and scale-shift tables.
    The official fp8 files never quantize these, and the default policy keeps them at full
    precision. A trailing `.weight` / `.bias` and a file prefix are accepted.
    """
    m = _BLOCK_RE.match(strip_prefix(name))
    if not m:
        return True
    return bool(_BLOCK_NON_LINEAR.search(m.group(2)))


_NORM_RE = re.compile(r"^(.+)\.(q_norm|k_norm)\.weight$")
_TABLE_RE = re.compile(r"^(transformer_blocks\.\d+\.)?[a-z0-9_]*scale_shift_table[a-z0-9_]*$")
_REGISTERS_RE = re.compile(r"^[a-z0-9_]+_embeddings_connector\.learnable_registers$")


def is_model_tensor(name: str, linear_names) -> bool:
    """True when `name` (no prefix) is a non-linear parameter of the LTXAV model whose linears are
    `linear_names`: an attention's q_norm / k_norm weight, a scale-shift table (top level or of a
    block), or an embedding connector's learnable registers. Anything else that is not part of a
    linear is a key the model does not have."""
    m = _NORM_RE.match(name)
    if m:
        return f"{m.group(1)}.to_q" in linear_names
    return bool(_TABLE_RE.match(name) or _REGISTERS_RE.match(name))


def count_blocks(names) -> int:
    """1 + the largest N of `transformer_blocks.N.` among `names` (no prefix); 0 when none."""
    n = -1
    for name in names:
        m = _BLOCK_RE.match(name)
        if m:
            n = max(n, int(m.group(1)))
    return n + 1
