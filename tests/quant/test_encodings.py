"""quant/encodings.py: which encoding each layer uses and where every key of a file goes.

`classify` on hand-built headers (every key in exactly one bucket, each encoding detected), and the
refusals it raises through `plan_checkpoint`: unsupported or inconsistent quantization metadata, a
scale beside a full-precision weight, a weight dtype the loader does not take.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from support.files import base_files, rewrite

from quant.encodings import classify
from quant.errors import CheckpointError
from quant.plan import plan_checkpoint
from quant.safetensors_header import open_checkpoint

SEED = 5
K = "transformer_blocks.1.attn1.to_k"  # a quantized layer of the default fp8 fixture (block 0 is bf16)


# -- classify on hand-built files ------------------------------------------------------------------

P = "model.diffusion_model."
FP8_FORMAT = json.dumps({"format": "float8_e4m3fn"})


def fp8(*shape):
    return torch.full(shape, 0.5).to(torch.float8_e4m3fn)


def bf16(*shape):
    return torch.full(shape, 0.5, dtype=torch.bfloat16)


def scalar(v=0.01):
    return torch.tensor(v, dtype=torch.float32)


def comfy_quant(entry: str = FP8_FORMAT) -> torch.Tensor:
    return torch.tensor(list(entry.encode()), dtype=torch.uint8)


def classified(tmp_path, tensors: dict, metadata: dict | None = None, linear_names=None):
    path = tmp_path / "hand-built.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with open_checkpoint(path) as (index, f):
        return classify(index, f, linear_names)


def test_every_key_lands_in_exactly_one_bucket(tmp_path):
    tensors = {
        # ltx-core: fp8 weight + weight_scale + input_scale (+ bias)
        P + "blocks.0.q.weight": fp8(32, 16),
        P + "blocks.0.q.weight_scale": scalar(),
        P + "blocks.0.q.input_scale": scalar(),
        P + "blocks.0.q.bias": bf16(32),
        # comfy-legacy: scale_weight / scale_input and the scaled_fp8 marker
        P + "blocks.0.k.weight": fp8(32, 16),
        P + "blocks.0.k.scale_weight": scalar(),
        P + "blocks.0.k.scale_input": scalar(1.0),
        P + "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn),
        # full precision
        P + "proj_out.weight": bf16(16, 32),
        P + "proj_out.bias": bf16(16),
        # another transformer tensor, passengers, a key outside every group, an orphan scale
        P + "scale_shift_table": bf16(2, 16),
        "vae.decoder.conv.weight": bf16(4, 4, 3, 3),
        "audio_vae.enc.weight": bf16(4),
        "vocoder.ups.0.weight": bf16(4),
        "text_embedding_projection.linear.weight": bf16(8, 8),
        "text_encoder.extra": bf16(3),
        P + "blocks.0.gone.weight_scale": scalar(),
    }
    c = classified(tmp_path, tensors)
    assert c.prefix == P
    assert {n: s.encoding for n, s in c.layers.items()} == {
        "blocks.0.q": "ltx-core",
        "blocks.0.k": "comfy-legacy",
        "proj_out": "full-precision",
    }
    assert sorted(c.layers["blocks.0.q"].consumed) == sorted(
        P + "blocks.0.q." + p for p in ("weight", "bias", "weight_scale", "input_scale")
    )
    assert sorted(c.layers["blocks.0.k"].consumed) == sorted(
        P + "blocks.0.k." + p for p in ("weight", "scale_weight", "scale_input")
    )
    assert sorted(c.layers["proj_out"].consumed) == [P + "proj_out.bias", P + "proj_out.weight"]
    assert c.layers["blocks.0.k"].scale.name == P + "blocks.0.k.scale_weight"
    assert c.layers["blocks.0.k"].input_scale.name == P + "blocks.0.k.scale_input"
    assert list(c.tensors) == ["scale_shift_table"]
    assert c.passengers == {
        "vae": ["vae.decoder.conv.weight"],
        "audio_vae": ["audio_vae.enc.weight"],
        "vocoder": ["vocoder.ups.0.weight"],
        "text_embedding_projection": ["text_embedding_projection.linear.weight"],
    }
    assert c.markers == [P + "scaled_fp8"]
    assert sorted(c.unexpected) == [P + "blocks.0.gone.weight_scale", "text_encoder.extra"]
    # Exactly one bucket each: the buckets are disjoint and cover every key of the file.
    buckets = [k for s in c.layers.values() for k in s.consumed]
    buckets += [c.prefix + n for n in c.tensors] + [k for ks in c.passengers.values() for k in ks]
    buckets += c.markers + c.unexpected
    assert len(buckets) == len(set(buckets)) and set(buckets) == set(tensors)
    assert c.warnings == []


@pytest.mark.parametrize(
    "parts, metadata, encoding",
    [
        ({"weight_scale": scalar()}, None, "ltx-core"),
        ({"scale_weight": scalar()}, None, "comfy-legacy"),
        (
            {"weight_scale": scalar()},
            {"_quantization_metadata": json.dumps({"layers": {P + "a.q": {"format": "float8_e4m3fn"}}})},
            "comfy-native",
        ),
        ({"weight_scale": scalar(), "comfy_quant": comfy_quant()}, None, "comfy-native"),
        ({}, None, "full-precision"),
    ],
    ids=["ltx-core", "comfy-legacy", "comfy-native-header", "comfy-native-tensor", "full-precision"],
)
def test_each_encoding_is_detected(tmp_path, parts, metadata, encoding):
    weight = bf16(32, 16) if encoding == "full-precision" else fp8(32, 16)
    tensors = {P + "a.q.weight": weight, **{P + "a.q." + k: v for k, v in parts.items()}}
    c = classified(tmp_path, tensors, metadata)
    assert list(c.layers) == ["a.q"]
    src = c.layers["a.q"]
    assert src.encoding == encoding
    assert src.stored_fp8 == (encoding != "full-precision")
    assert sorted(src.consumed) == sorted(tensors)
    assert (c.tensors, c.passengers, c.markers, c.unexpected, c.warnings) == ({}, {}, [], [], [])


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model.", ""])
def test_prefix_detected_and_stripped(tmp_path, prefix):
    tensors = {prefix + "a.q.weight": bf16(8, 4), prefix + "scale_shift_table": bf16(2, 4), "vae.w": bf16(2)}
    c = classified(tmp_path, tensors)
    assert c.prefix == prefix
    assert list(c.layers) == ["a.q"] and c.layers["a.q"].weight.name == prefix + "a.q.weight"
    assert list(c.tensors) == ["scale_shift_table"]
    assert c.passengers == {"vae": ["vae.w"]} and c.unexpected == []


def test_a_known_model_claims_only_its_linears_and_tensors(tmp_path):
    # With the model's linears given, a 2-D weight it does not have is unexpected, not a layer;
    # its q_norm beside a known attention is a model tensor.
    tensors = {
        P + "blocks.0.attn1.to_q.weight": bf16(8, 8),
        P + "blocks.0.attn1.q_norm.weight": bf16(8),
        P + "blocks.0.extra.weight": bf16(8, 8),
    }
    c = classified(tmp_path, tensors, linear_names={"blocks.0.attn1.to_q"})
    assert list(c.layers) == ["blocks.0.attn1.to_q"]
    assert list(c.tensors) == ["blocks.0.attn1.q_norm.weight"]
    assert c.unexpected == [P + "blocks.0.extra.weight"]
    # Without it, every 2-D `.weight` is taken for a linear.
    c = classified(tmp_path, tensors)
    assert sorted(c.layers) == ["blocks.0.attn1.to_q", "blocks.0.extra"]
    assert list(c.tensors) == ["blocks.0.attn1.q_norm.weight"] and c.unexpected == []


def test_metadata_naming_a_layer_the_file_lacks_is_a_warning(tmp_path):
    meta = {"_quantization_metadata": json.dumps({"layers": {P + "a.q": {"format": "float8_e4m3fn"}, P + "b.q": {}}})}
    c = classified(tmp_path, {P + "a.q.weight": fp8(32, 16), P + "a.q.weight_scale": scalar()}, meta)
    assert c.layers["a.q"].encoding == "comfy-native"
    assert c.warnings == [f"_quantization_metadata names layer {P}b.q, which the file does not hold"]


# -- refusals, through plan_checkpoint ---------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_files(tmp_path_factory.mktemp("base"), SEED)


# -- quantization metadata -----------------------------------------------------------------------


def test_header_metadata_with_unsupported_format(base, tmp_path):
    fx = base["comfy-native-header"]
    meta = json.loads(fx.metadata["_quantization_metadata"])
    meta["layers"][fx.prefix + K] = {"format": "nvfp4"}
    path = rewrite(fx.path, tmp_path / "x.safetensors", metadata={"_quantization_metadata": json.dumps(meta)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    msg = str(ei.value)
    assert K in msg and "nvfp4" in msg and path in msg and "not supported" in msg


def test_comfy_quant_tensor_with_unsupported_format(base, tmp_path):
    fx = base["comfy-native-tensor"]
    blob = json.dumps({"format": "nvfp4"}).encode()
    key = fx.prefix + K + ".comfy_quant"
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: torch.tensor(list(blob), dtype=torch.uint8)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert K in str(ei.value) and "nvfp4" in str(ei.value) and path in str(ei.value)


def test_comfy_quant_tensor_that_is_not_json(base, tmp_path):
    fx = base["comfy-native-tensor"]
    key = fx.prefix + K + ".comfy_quant"
    path = rewrite(
        fx.path, tmp_path / "x.safetensors", replace={key: torch.tensor([0xFF, 0x00, 0x7B], dtype=torch.uint8)}
    )
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert key in str(ei.value)


def test_metadata_naming_a_full_precision_weight(base, tmp_path):
    fx = base["comfy-native-header"]
    meta = json.loads(fx.metadata["_quantization_metadata"])
    b0 = "transformer_blocks.0.attn1.to_q"  # bf16 in the file
    meta["layers"][fx.prefix + b0] = {"format": "float8_e4m3fn"}
    path = rewrite(fx.path, tmp_path / "x.safetensors", metadata={"_quantization_metadata": json.dumps(meta)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert b0 in str(ei.value) and "BF16" in str(ei.value)


def test_metadata_without_layers(base, tmp_path):
    fx = base["comfy-native-header"]
    path = rewrite(
        fx.path, tmp_path / "x.safetensors", metadata={"_quantization_metadata": json.dumps({"format_version": "1.0"})}
    )
    with pytest.raises(CheckpointError, match="layers") as ei:
        plan_checkpoint(path)
    assert path in str(ei.value)


@pytest.mark.parametrize("encoding", ["bf16", "fp32"])
def test_full_precision_weight_with_a_scale_beside_it(base, tmp_path, encoding):
    fx = base[encoding]
    for suffix in (".weight_scale", ".scale_weight"):
        path = rewrite(fx.path, tmp_path / "x.safetensors", add={fx.prefix + K + suffix: torch.tensor(0.001)})
        with pytest.raises(CheckpointError) as ei:
            plan_checkpoint(path)
        msg = str(ei.value)
        assert K in msg and path in msg and ("BF16" in msg or "F32" in msg)


def test_weight_of_unsupported_dtype(base, tmp_path):
    fx = base["ltx-core"]
    key = fx.prefix + K + ".weight"
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: torch.zeros(64, 64, dtype=torch.int8)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert K in str(ei.value) and "I8" in str(ei.value)
