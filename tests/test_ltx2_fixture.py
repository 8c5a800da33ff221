"""The checkpoint generator (tools/ltx2_fixture.py) and the expected shapes (quant/ltx2_shapes.py).

(a) Against the real host (ComfyUI 0.30.0, `.host/ComfyUI`): the generator's key set and shapes are
    exactly the host LTXAVModel's state dict, `expected_linear_shapes` is exactly its nn.Linear
    shapes (tiny LTX-2.3, tiny LTX-2.0 layout, and the real 22B config on the meta device), and the
    host's own loader reads the files (bf16 strictly; the ComfyUI encodings as fp8 equal to
    codes * scale, which shows they are written the way the host means them).
(b) Every encoding: fp8 codes are exactly quantize(reference), codes * scale is within the e4m3
    bound of the reference, full-precision tensors are the reference bit for bit; per-row,
    [out, 1] scales, transposed storage, prefixes, bf16 block sets, breakages, LoRA, CLI, streaming.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from quant.fp8 import E4M3_MAX, FP8, amax_scale, quantize
from quant.ltx2_shapes import block_index, expected_linear_shapes, is_sensitive
from tools import ltx2_fixture as F
from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON, import_host

REPO = Path(__file__).resolve().parent.parent

needs_host = pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON)
REL_BOUND = 0.07  # e4m3 relative error bound per tensor (typically ~0.027)
LTX23_REAL_1 = F.config(F.REAL, num_layers=1)
# caption projection before the connector *with* its linear (NormSingleLinearTextProjection).
TINY_FIRST_LINEAR = F.config(F.TINY, caption_projection_first_linear=True, caption_channels=40)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# (a) against the host


def host_model(cfg: dict, device=None, dtype=torch.bfloat16):
    import_host()
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel

    return LTXAVModel(**cfg, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)


def host_linear_shapes(model) -> dict[str, tuple[int, int]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@needs_host
@pytest.mark.parametrize(
    "cfg",
    [F.TINY, F.TINY_LTX2, TINY_FIRST_LINEAR, LTX23_REAL_1],
    ids=["tiny-2.3", "tiny-2.0", "tiny-caption-first-linear", "real-2.3-1block"],
)
def test_key_set_and_shapes_equal_host_model(cfg):
    device = torch.device("meta") if cfg is LTX23_REAL_1 else None
    model = host_model(cfg, device=device)
    host = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mine = F.expected_state_shapes(cfg)
    assert set(mine) - set(host) == set(), "keys the host model does not have"
    assert set(host) - set(mine) == set(), "host keys the generator misses"
    assert {k: host[k] for k in mine} == mine
    assert expected_linear_shapes(cfg) == host_linear_shapes(model)


def test_real_config_shapes_match_reference_table():
    """The 22B widths of ltx2-checkpoints.md: 34 linears per block, ~387M parameters."""
    shapes = expected_linear_shapes(F.REAL)
    b = {k[len("transformer_blocks.10.") :]: v for k, v in shapes.items() if k.startswith("transformer_blocks.10.")}
    assert len(b) == 34
    assert b["attn1.to_q"] == (4096, 4096) and b["attn2.to_gate_logits"] == (32, 4096)
    assert b["ff.net.0.proj"] == (16384, 4096) and b["ff.net.2"] == (4096, 16384)
    assert b["audio_ff.net.0.proj"] == (8192, 2048) and b["audio_attn1.to_gate_logits"] == (32, 2048)
    assert [b[f"audio_to_video_attn.{n}"] for n in ("to_q", "to_k", "to_v", "to_out.0", "to_gate_logits")] == [
        (2048, 4096),
        (2048, 2048),
        (2048, 2048),
        (4096, 2048),
        (32, 4096),
    ]
    assert [b[f"video_to_audio_attn.{n}"] for n in ("to_q", "to_k", "to_v", "to_out.0", "to_gate_logits")] == [
        (2048, 2048),
        (2048, 4096),
        (2048, 4096),
        (2048, 2048),
        (32, 2048),
    ]
    params = sum(o * i + o for o, i in b.values())
    assert 380e6 < params < 395e6
    assert sum(1 for k in shapes if block_index(k) is not None) == 48 * 34


@needs_host
@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_host_loader_reads_bf16_file_strictly(tmp_path, caplog, prefix):
    """The host detects LTXAV from the header config, builds it, and every key loads (no missing,
    no unexpected), with the reference values; the tiny model runs forward to finite outputs."""
    import_host()
    import comfy.sd

    fx = F.write_checkpoint(tmp_path / "m.safetensors", F.TINY, "bf16", seed=3, prefix=prefix, passengers=bool(prefix))
    with caplog.at_level(logging.WARNING):
        patcher = comfy.sd.load_diffusion_model(fx.path)
    assert not [r for r in caplog.records if "unet missing" in r.message or "unet unexpected" in r.message]
    dm = patcher.model.diffusion_model
    assert type(dm).__name__ == "LTXAVModel"
    sd = dm.state_dict()
    ref = fx.reference_state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k].to(v.dtype), v), k
    with torch.no_grad():
        vx, ax = torch.randn(1, 128, 2, 4, 4), torch.randn(1, 8, 5, 16)
        ctx = torch.randn(1, 7, F.TINY["cross_attention_dim"] + F.TINY["audio_cross_attention_dim"])
        out = dm(
            [vx.to(sd["patchify_proj.weight"].dtype), ax.to(sd["patchify_proj.weight"].dtype)],
            torch.tensor([0.5]),
            ctx.to(sd["patchify_proj.weight"].dtype),
            frame_rate=25,
        )
    assert [tuple(o.shape) for o in out] == [tuple(vx.shape), tuple(ax.shape)]
    assert all(torch.isfinite(o).all() for o in out)


@needs_host
@pytest.mark.parametrize("encoding", ["comfy-native-header", "comfy-native-tensor", "comfy-legacy"])
def test_host_reads_comfy_encodings_as_codes_times_scale(tmp_path, encoding):
    """The host's own fp8 path loads the ComfyUI encodings to exactly codes * scale: the files are
    written the way the host means them. (Diffusion-model files, no prefix.)"""
    import_host()
    import comfy.sd

    fx = F.write_checkpoint(tmp_path / "m.safetensors", F.TINY, encoding, seed=4, prefix="", passengers=False)
    dm = comfy.sd.load_diffusion_model(fx.path).model.diffusion_model
    for layer in fx.quantized:
        w = dm.get_submodule(layer).weight
        assert hasattr(w, "dequantize"), f"{layer} not loaded as fp8 by the host"
        assert torch.equal(w.dequantize().float(), fx.true_weight(layer)), layer


@needs_host
def test_host_drops_ltx_core_scales_characterization(tmp_path, caplog):
    """Dropped scales (the bug of Lightricks/LTX-2 PR #172), reproduced by the ltx-core fixture on the
    pinned host: scales are 'unexpected' keys and the fp8 codes are used unscaled (weights hundreds of
    times too large)."""
    import_host()
    import comfy.sd

    fx = F.write_checkpoint(tmp_path / "m.safetensors", F.TINY, "ltx-core", seed=5)
    with caplog.at_level(logging.WARNING):
        dm = comfy.sd.load_diffusion_model(fx.path).model.diffusion_model
    assert any("unet unexpected" in r.message and "weight_scale" in r.message for r in caplog.records)
    layer = next(iter(fx.quantized))
    assert rel_err(dm.get_submodule(layer).weight.float(), fx.reference(layer).float()) > 10


# ---------------------------------------------------------------------------------------------
# quant/ltx2_shapes.py without the host


def test_shapes_defaults_and_num_layers_override():
    assert len([k for k in expected_linear_shapes(F.TINY) if block_index(k) is not None]) == 2 * 34
    assert len([k for k in expected_linear_shapes(F.TINY, num_layers=5) if block_index(k) is not None]) == 5 * 34
    # Empty config: the host's defaults (48 blocks, 4096 / 2048, no gates, 30 x 128 connectors).
    d = expected_linear_shapes({})
    assert d["transformer_blocks.47.attn1.to_q"] == (4096, 4096)
    assert "transformer_blocks.0.attn1.to_gate_logits" not in d
    assert d["adaln_single.linear"] == (6 * 4096, 4096)
    assert d["caption_projection.linear_1"] == (4096, 3840) and d["caption_projection.linear_2"] == (4096, 4096)
    assert d["video_embeddings_connector.transformer_1d_blocks.1.attn1.to_q"] == (3840, 3840)
    # LTX-2.3: caption projection is the identity (no linear), connectors 4096 / 2048 and gated.
    r = expected_linear_shapes(F.REAL)
    assert not any(k.startswith(("caption_projection", "audio_caption_projection")) for k in r)
    assert r["video_embeddings_connector.transformer_1d_blocks.7.attn1.to_gate_logits"] == (32, 4096)
    assert r["audio_embeddings_connector.transformer_1d_blocks.0.ff.net.0.proj"] == (8192, 2048)
    assert r["adaln_single.linear"] == (9 * 4096, 4096) and r["proj_out"] == (128, 4096)


@pytest.mark.parametrize(
    "name,sensitive",
    [
        ("transformer_blocks.3.attn1.to_q", False),
        ("transformer_blocks.47.ff.net.2", False),
        ("model.diffusion_model.transformer_blocks.0.audio_to_video_attn.to_gate_logits.weight", False),
        ("transformer_blocks.3.attn1.q_norm", True),
        ("transformer_blocks.3.scale_shift_table", True),
        ("transformer_blocks.3.scale_shift_table_a2v_ca_audio", True),
        ("patchify_proj", True),
        ("audio_patchify_proj", True),
        ("proj_out", True),
        ("audio_proj_out", True),
        ("adaln_single.linear", True),
        ("av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1", True),
        ("caption_projection.linear_1", True),
        ("video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q", True),
        ("diffusion_model.audio_embeddings_connector.transformer_1d_blocks.0.ff.net.2", True),
    ],
)
def test_is_sensitive(name, sensitive):
    assert is_sensitive(name) is sensitive


def test_every_non_block_linear_is_sensitive():
    for name in expected_linear_shapes(F.TINY):
        assert is_sensitive(name) is (block_index(name) is None), name


# ---------------------------------------------------------------------------------------------
# (b) the files


def scale_key(fx, layer):
    return fx.prefix + layer + (".scale_weight" if fx.encoding == "comfy-legacy" else ".weight_scale")


def input_key(fx, layer):
    return fx.prefix + layer + (".scale_input" if fx.encoding == "comfy-legacy" else ".input_scale")


def check_file(fx, *, scale_2d=False):
    """Every tensor of the file against the truth the fixture reports."""
    linears = expected_linear_shapes(fx.config)
    expected_keys = set(fx.keys)
    with safe_open(fx.path, "pt") as f:
        assert set(f.keys()) == expected_keys
        assert json.loads(f.metadata()["config"])["transformer"] == fx.config
        assert f.metadata()["model_version"] == "2.3.0"
        worst = 0.0
        for layer, q in fx.quantized.items():
            o, i = linears[layer]
            stored = f.get_tensor(fx.prefix + layer + ".weight")
            assert stored.dtype == FP8
            assert tuple(stored.shape) == ((i, o) if q.transposed else (o, i)), layer
            codes = stored.t() if q.transposed else stored
            ref = fx.reference(layer)
            want_codes, want_scale = quantize(ref, per_row=q.per_row)
            assert torch.equal(codes.view(torch.uint8), want_codes.view(torch.uint8)), layer
            scale = f.get_tensor(scale_key(fx, layer))
            assert scale.dtype == torch.float32
            if q.per_row:
                assert tuple(scale.shape) == ((o, 1) if scale_2d else (o,))
                scale = scale.reshape(o)
                assert torch.equal(scale, amax_scale(ref, per_row=True))
            else:
                assert tuple(scale.shape) == ()
                assert torch.equal(scale, ref.float().abs().amax() / E4M3_MAX)
            assert torch.equal(scale, want_scale) and torch.equal(scale, q.scale)
            w = codes.float() * (scale[:, None] if scale.dim() == 1 else scale)
            assert torch.equal(w, fx.true_weight(layer))
            e = rel_err(w, ref.float())
            assert e < REL_BOUND, (layer, e)
            worst = max(worst, e)
            if q.input_scale is not None:
                isc = f.get_tensor(input_key(fx, layer))
                assert isc.dtype == torch.float32 and isc.shape == () and isc.item() == q.input_scale
                assert 0 < isc.item() < 1
        for key in expected_keys:
            if key in fx.passengers or key.endswith(
                (".weight_scale", ".input_scale", ".scale_weight", ".scale_input", ".comfy_quant", "scaled_fp8")
            ):
                continue
            name = key[len(fx.prefix) :]
            layer = name.rpartition(".")[0]
            if layer in fx.quantized and name.endswith(".weight"):
                continue
            t = f.get_tensor(key)
            assert t.dtype == fx.dtype, key
            assert torch.equal(t, fx.reference(name)), key
    return worst


@pytest.mark.parametrize("encoding", F.ENCODINGS)
def test_every_encoding_matches_reference(tmp_path, encoding):
    fx = F.write_checkpoint(tmp_path / f"{encoding}.safetensors", F.TINY, encoding, seed=11)
    worst = check_file(fx)
    lin = expected_linear_shapes(F.TINY)
    if encoding in F.FP8_ENCODINGS:
        # Default: block 0 bf16, block 1 quantized including its gates.
        assert set(fx.quantized) == {n for n in lin if n.startswith("transformer_blocks.1.")}
        assert len(fx.quantized) == 34 and 0.01 < worst < REL_BOUND
        assert set(fx.full_precision) == set(lin) - set(fx.quantized)
    else:
        assert fx.quantized == {} and set(fx.full_precision) == set(lin)
        assert all(
            dt == {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}[encoding]
            for k, (dt, _) in fx.keys.items()
            if k not in fx.passengers
        )
    with safe_open(fx.path, "pt") as f:
        keys = set(f.keys())
        md = f.metadata()
    assert {k for k in keys if k.startswith(F.PASSENGER_PREFIXES)} == set(fx.passengers)
    assert {p for p in F.PASSENGER_PREFIXES if any(k.startswith(p) for k in keys)} == set(F.PASSENGER_PREFIXES)
    cfg = json.loads(md["config"])
    assert {"transformer", "vae", "audio_vae", "vocoder"} <= set(cfg)
    if encoding == "comfy-native-header":
        qm = json.loads(md["_quantization_metadata"])
        assert qm["format_version"] == "1.0"
        assert qm["layers"] == {fx.prefix + n: {"format": "float8_e4m3fn"} for n in fx.quantized}
    else:
        assert "_quantization_metadata" not in md
    comfy_quant = {k for k in keys if k.endswith(".comfy_quant")}
    if encoding == "comfy-native-tensor":
        assert comfy_quant == {fx.prefix + n + ".comfy_quant" for n in fx.quantized}
        with safe_open(fx.path, "pt") as f:
            t = f.get_tensor(next(iter(comfy_quant)))
        assert t.dtype == torch.uint8 and json.loads(bytes(t.tolist())) == {"format": "float8_e4m3fn"}
    else:
        assert not comfy_quant
    if encoding == "comfy-legacy":
        with safe_open(fx.path, "pt") as f:
            marker = f.get_tensor("model.diffusion_model.scaled_fp8")
        assert marker.dtype == FP8 and marker.numel() == 0
        assert not any(k.endswith((".weight_scale", ".input_scale")) for k in keys)
    else:
        assert not any(k.endswith(("scaled_fp8", ".scale_weight", ".scale_input")) for k in keys)


@pytest.mark.parametrize("encoding", F.FP8_ENCODINGS)
@pytest.mark.parametrize(
    "per_row,scale_2d,transposed",
    [(True, False, False), (True, True, False), (False, False, True), (True, False, True)],
    ids=["per-row", "per-row-2d", "transposed", "per-row-transposed"],
)
def test_per_row_and_transposed_variants(tmp_path, encoding, per_row, scale_2d, transposed):
    fx = F.write_checkpoint(
        tmp_path / "v.safetensors", F.TINY, encoding, seed=12, per_row=per_row, scale_2d=scale_2d, transposed=transposed
    )
    worst = check_file(fx, scale_2d=scale_2d)
    assert worst < REL_BOUND
    assert all(q.per_row is per_row and q.transposed is transposed for q in fx.quantized.values())
    if transposed:  # full-precision linears stay [out, in]
        lin = expected_linear_shapes(F.TINY)
        for n in fx.full_precision:
            assert fx.keys[fx.prefix + n + ".weight"][1] == lin[n]


def test_per_row_scales_differ_between_rows(tmp_path):
    fx = F.write_checkpoint(tmp_path / "r.safetensors", F.TINY, "ltx-core", seed=13, per_row=True)
    s = fx.quantized["transformer_blocks.1.ff.net.0.proj"].scale
    assert s.shape == (256,) and float(s.max() / s.min()) > 1.5


@pytest.mark.parametrize("prefix", ["", "diffusion_model."])
def test_prefixes(tmp_path, prefix):
    fx = F.write_checkpoint(
        tmp_path / "p.safetensors", F.TINY, "comfy-native-header", seed=14, prefix=prefix, passengers=False
    )
    check_file(fx)
    assert all(k.startswith(prefix) for k in fx.keys)
    assert "patchify_proj.weight" in {k[len(prefix) :] for k in fx.keys}
    md = json.loads(fx.metadata["_quantization_metadata"])
    assert all(name.startswith(prefix + "transformer_blocks.") for name in md["layers"])


def test_bf16_blocks_gate_and_input_scale_options(tmp_path):
    cfg = F.config(F.TINY, num_layers=4)
    fx = F.write_checkpoint(
        tmp_path / "b.safetensors", cfg, "ltx-core", seed=15, bf16_blocks=(0, 3), quantize_gate=False, input_scale=None
    )
    check_file(fx)
    assert {block_index(n) for n in fx.quantized} == {1, 2}
    assert not any(n.endswith("to_gate_logits") for n in fx.quantized)
    assert len(fx.quantized) == 2 * (34 - 6)
    assert not any(k.endswith(".input_scale") for k in fx.keys)
    assert fx.keys["model.diffusion_model.transformer_blocks.1.attn1.to_gate_logits.weight"][0] == "BF16"
    # A single-block file is quantized by default; a fixed input scale goes to every layer.
    one = F.write_checkpoint(
        tmp_path / "one.safetensors", F.config(F.TINY, num_layers=1), "ltx-core", seed=15, input_scale=0.02
    )
    assert len(one.quantized) == 34
    assert {q.input_scale for q in one.quantized.values()} == {float(torch.tensor(0.02))}
    check_file(one)
    # "auto": deterministic per-layer values.
    auto = F.write_checkpoint(tmp_path / "auto.safetensors", F.TINY, "ltx-core", seed=15)
    vals = [q.input_scale for q in auto.quantized.values()]
    assert len(set(vals)) == len(vals) and all(0.01 <= v < 0.03 for v in vals)


def test_deterministic_and_seeded(tmp_path):
    a = F.write_checkpoint(tmp_path / "a.safetensors", F.TINY, "ltx-core", seed=7)
    b = F.write_checkpoint(tmp_path / "b.safetensors", F.TINY, "ltx-core", seed=7)
    c = F.write_checkpoint(tmp_path / "c.safetensors", F.TINY, "ltx-core", seed=8)
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    assert Path(a.path).read_bytes() != Path(c.path).read_bytes()
    sd = F.make_reference_state_dict(F.TINY, seed=7)
    assert set(sd) == set(F.expected_state_shapes(F.TINY))
    assert all(torch.equal(sd[k], a.reference(k)) for k in sd)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())


def test_reference_magnitudes():
    sd = F.make_reference_state_dict(F.TINY, seed=1, dtype=torch.float32)
    w = sd["transformer_blocks.0.ff.net.2.weight"]
    assert 0.5 < float(w.std() * 256**0.5) < 2.0
    assert float(sd["transformer_blocks.0.attn1.to_q.bias"].abs().max()) < 0.2
    assert abs(float(sd["transformer_blocks.0.attn1.q_norm.weight"].mean()) - 1) < 0.05
    assert float(sd["transformer_blocks.0.scale_shift_table"].abs().max()) < 0.5
    r = sd["video_embeddings_connector.learnable_registers"]
    assert float(r.min()) >= -1 and float(r.max()) <= 1


# ---------------------------------------------------------------------------------------------
# Breakages


def _read_all(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("encoding", ["ltx-core", "comfy-legacy"])
@pytest.mark.parametrize(
    "kind", ["missing_scale", "nan_scale", "inf_scale", "zero_scale", "negative_scale", "scale_shape", "nan_codes"]
)
def test_scale_and_code_breakages(tmp_path, encoding, kind):
    fx = F.write_checkpoint(tmp_path / "x.safetensors", F.TINY, encoding, seed=21, breakage=kind)
    br = fx.broken
    assert br.kind == kind and br.layer == "transformer_blocks.1.attn1.to_k"
    sd = _read_all(fx.path)
    sk = scale_key(fx, br.layer)
    if kind == "missing_scale":
        assert br.tensor == sk and sk not in sd and fx.prefix + br.layer + ".weight" in sd
        return
    if kind == "nan_codes":
        assert br.tensor == fx.prefix + br.layer + ".weight"
        bits = sd[br.tensor].view(torch.uint8)
        assert int(((bits & 0x7F) == 0x7F).sum()) >= 1
        return
    assert br.tensor == sk
    s = sd[sk]
    if kind == "scale_shape":
        assert tuple(s.shape) == (65,)
    else:
        check = {
            "nan_scale": torch.isnan,
            "inf_scale": torch.isinf,
            "zero_scale": lambda t: t == 0,
            "negative_scale": lambda t: t < 0,
        }[kind]
        assert bool(check(s).any())
    # Everything else is intact.
    other = "transformer_blocks.1.attn1.to_q"
    assert torch.equal(sd[scale_key(fx, other)], fx.quantized[other].scale)


def test_per_row_scale_breakage_hits_one_row(tmp_path):
    fx = F.write_checkpoint(
        tmp_path / "x.safetensors",
        F.TINY,
        "ltx-core",
        seed=22,
        per_row=True,
        breakage="nan_scale",
        break_layer="transformer_blocks.1.ff.net.2",
    )
    s = _read_all(fx.path)[fx.broken.tensor]
    assert s.shape == (64,) and int(torch.isnan(s).sum()) == 1
    assert fx.broken.layer == "transformer_blocks.1.ff.net.2"


@pytest.mark.parametrize("transposed", [False, True])
def test_mixed_layout(tmp_path, transposed):
    fx = F.write_checkpoint(
        tmp_path / "x.safetensors", F.TINY, "ltx-core", seed=23, transposed=transposed, breakage="mixed_layout"
    )
    br = fx.broken
    assert br.layer == "transformer_blocks.1.ff.net.0.proj" and br.tensor == fx.prefix + br.layer + ".weight"
    lin = expected_linear_shapes(F.TINY)
    for layer in fx.quantized:
        o, i = lin[layer]
        stored = fx.keys[fx.prefix + layer + ".weight"][1]
        flipped = transposed != (layer == br.layer)
        assert stored == ((i, o) if flipped else (o, i)), layer


def test_unexpected_key(tmp_path):
    fx = F.write_checkpoint(tmp_path / "x.safetensors", F.TINY, "bf16", seed=24, breakage="unexpected_key")
    assert fx.broken.tensor == "model.diffusion_model.transformer_blocks.0.extra_proj.weight"
    assert fx.broken.tensor in _read_all(fx.path)
    fx8 = F.write_checkpoint(tmp_path / "y.safetensors", F.TINY, "ltx-core", seed=24, breakage="unexpected_key")
    assert fx8.broken.tensor == "model.diffusion_model.transformer_blocks.1.extra_proj.weight"


@pytest.mark.parametrize("encoding", ["ltx-core", "bf16"])
def test_truncate(tmp_path, encoding):
    fx = F.write_checkpoint(tmp_path / "x.safetensors", F.TINY, encoding, seed=25, breakage="truncate")
    last = max(fx.keys)  # tensors are written in key order; passengers sort last ("vocoder.")
    assert fx.broken.tensor == last
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own (private) error type
        _read_all(fx.path)


def test_breakage_argument_errors(tmp_path):
    with pytest.raises(ValueError):
        F.write_checkpoint(tmp_path / "x.safetensors", F.TINY, "bf16", breakage="nan_scale")
    with pytest.raises(ValueError):
        F.write_checkpoint(
            tmp_path / "x.safetensors",
            F.TINY,
            "ltx-core",
            breakage="nan_scale",
            break_layer="transformer_blocks.0.attn1.to_k",
        )  # block 0 is bf16
    with pytest.raises(ValueError):
        F.write_checkpoint(
            tmp_path / "x.safetensors",
            F.TINY,
            "ltx-core",
            breakage="mixed_layout",
            break_layer="transformer_blocks.1.attn1.to_q",
        )  # square
    with pytest.raises(ValueError):
        F.write_checkpoint(tmp_path / "x.safetensors", F.TINY, "nope")


# ---------------------------------------------------------------------------------------------
# LoRA, CLI, streaming


@pytest.mark.parametrize("alpha", [None, 8.0])
def test_write_lora(tmp_path, alpha):
    layers = ["transformer_blocks.1.attn1.to_q", "transformer_blocks.1.ff.net.0.proj", "patchify_proj"]
    lf = F.write_lora(tmp_path / "l.safetensors", F.TINY, layers, rank=4, seed=3, alpha=alpha)
    sd = _read_all(lf.path)
    lin = expected_linear_shapes(F.TINY)
    want = set()
    for layer in layers:
        o, i = lin[layer]
        a, b = sd[f"diffusion_model.{layer}.lora_A.weight"], sd[f"diffusion_model.{layer}.lora_B.weight"]
        assert a.shape == (4, i) and b.shape == (o, 4)
        want |= {f"diffusion_model.{layer}.lora_A.weight", f"diffusion_model.{layer}.lora_B.weight"}
        if alpha is not None:
            assert sd[f"diffusion_model.{layer}.alpha"].item() == alpha
            want.add(f"diffusion_model.{layer}.alpha")
        d = lf.delta(layer)
        scale = alpha / 4 if alpha else 1.0
        assert torch.allclose(d, b.float() @ a.float() * scale)
        ratio = float(d.std() / F.reference_tensor(F.TINY, layer + ".weight", 0).float().std())
        assert 0.01 < ratio < 1.0
    assert set(sd) == want
    with pytest.raises(ValueError):
        F.write_lora(tmp_path / "bad.safetensors", F.TINY, ["transformer_blocks.9.attn1.to_q"], rank=4, seed=1)


def test_cli(tmp_path):
    out = tmp_path / "cli.safetensors"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.ltx2_fixture",
            str(out),
            "--encoding",
            "comfy-legacy",
            "--layers",
            "3",
            "--bf16-blocks",
            "0,2",
            "--per-row",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["num_layers"] == 3 and info["quantized_layers"] == 34 and info["encoding"] == "comfy-legacy"
    fx = F.write_checkpoint(
        tmp_path / "same.safetensors", F.config(F.TINY, num_layers=3), "comfy-legacy", bf16_blocks=(0, 2), per_row=True
    )
    assert out.read_bytes() == Path(fx.path).read_bytes()


def test_streaming_write_memory(tmp_path):
    """Peak memory while writing grows with the largest tensor, not with the model: 6 blocks at a
    quarter of the real width (~150M parameters, ~300 MB in bf16) add far less than that."""
    cfg = F.config(
        F.REAL,
        num_layers=6,
        num_attention_heads=8,
        audio_num_attention_heads=8,
        cross_attention_dim=1024,
        audio_cross_attention_dim=512,
        connector_num_layers=0,
    )
    model_bf16 = sum(2 * torch.Size(s).numel() for s in F.expected_state_shapes(cfg).values())
    assert model_bf16 > 250e6
    code = (
        "import json, resource, sys; from tools import ltx2_fixture as F\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"cfg = json.loads({json.dumps(json.dumps(cfg))})\n"
        f"fx = F.write_checkpoint({str(tmp_path / 's.safetensors')!r}, cfg, 'ltx-core', bf16_blocks=())\n"
        "print(json.dumps({'base_kb': base, 'peak_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
        " 'quantized': len(fx.quantized)}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    grown = (info["peak_kb"] - info["base_kb"]) * 1024
    assert info["quantized"] == 6 * 34
    assert os.path.getsize(tmp_path / "s.safetensors") > 0.5 * model_bf16  # mostly fp8
    print(f"streaming write: model {model_bf16 / 2**20:.0f} MiB in bf16, process grew {grown / 2**20:.0f} MiB")
    assert grown < 0.4 * model_bf16, f"writing grew the process by {grown / 2**20:.0f} MiB"
