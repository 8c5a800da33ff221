"""Every file that cannot be loaded correctly is refused with a CheckpointError naming the file and
the culprit (layer / tensor), before a caller gets a model: the fixture's breakages, unexpected
keys, unsupported or inconsistent quantization metadata, bad input scales and shapes; policy
strings and backends that cannot be honoured raise their own clear errors.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quant.backends import BackendUnavailable, tensorrt_llm_available  # noqa: E402
from quant.errors import CheckpointError  # noqa: E402
from quant.fp8 import Fp8Weight, quantize  # noqa: E402
from quant.layer import QuantLayer  # noqa: E402
from quant.linear import QuantLinear  # noqa: E402
from quant.plan import plan_checkpoint  # noqa: E402
from quant.policy import PolicyError  # noqa: E402
from quant.stream import iter_load, load  # noqa: E402
from tools import ltx2_fixture as LF  # noqa: E402

SEED = 5
K = "transformer_blocks.1.attn1.to_k"  # a quantized layer of the default fp8 fixture (block 0 is bf16)
HEADER_STAGE = set(LF.BREAKAGES) - {"nan_codes"}  # found from the header and scales alone


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_all(path, policy="auto", **kw):
    """Plan and stream everything (as the host bridge does); returns the plan."""
    plan = plan_checkpoint(path, policy, **kw)
    for _ in iter_load(plan):
        pass
    return plan


def rewrite(src: str, dst: Path, *, drop=(), add=None, replace=None, metadata=None) -> str:
    """Copy a safetensors file with keys dropped / added / replaced and metadata changed."""
    with safe_open(src, "pt") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
    sd.update(add or {})
    sd.update(replace or {})
    if metadata:
        meta.update(metadata)
    save_file(sd, str(dst), metadata=meta)
    return str(dst)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One intact file per encoding (bundle prefix) for the rewrite-based cases."""
    d = tmp_path_factory.mktemp("base")
    return {enc: LF.write_checkpoint(d / f"{enc}.safetensors", LF.TINY, enc, seed=SEED) for enc in LF.ENCODINGS}


# -- the fixture's breakages ----------------------------------------------------------------------

CASES = []
for i, kind in enumerate(LF.BREAKAGES):
    encodings = LF.FP8_ENCODINGS if kind in LF.FP8_ONLY_BREAKAGES else ("ltx-core", "comfy-legacy", "bf16", "fp32")
    for j, enc in enumerate(encodings):
        prefix = ("model.diffusion_model.", "diffusion_model.", "")[(i + j) % 3]
        CASES.append((kind, enc, prefix, {}))
for kind in ("nan_scale", "zero_scale", "negative_scale", "scale_shape", "missing_scale"):
    CASES.append((kind, "ltx-core", "model.diffusion_model.", {"per_row": True}))
CASES.append(("negative_scale", "comfy-legacy", "", {"per_row": True, "scale_2d": True}))
CASES.append(("mixed_layout", "ltx-core", "model.diffusion_model.", {"transposed": True}))
CASES.append(("mixed_layout", "comfy-native-header", "", {"break_layer": "transformer_blocks.1.audio_ff.net.2"}))
CASES.append(
    ("nan_scale", "comfy-native-tensor", "", {"break_layer": "transformer_blocks.1.video_to_audio_attn.to_gate_logits"})
)
CASES.append(
    ("missing_scale", "ltx-core", "", {"break_layer": "transformer_blocks.1.ff.net.0.proj", "input_scale": None})
)


@pytest.mark.parametrize(
    "kind, encoding, prefix, kw",
    CASES,
    ids=[f"{k}-{e}-{p.split('.')[0] or 'bare'}{'-' + '-'.join(kw) if kw else ''}" for k, e, p, kw in CASES],
)
def test_breakage_is_refused_naming_the_culprit(tmp_path, kind, encoding, prefix, kw):
    fx = LF.write_checkpoint(
        tmp_path / "broken.safetensors", LF.TINY, encoding, seed=SEED, prefix=prefix, breakage=kind, **kw
    )
    b = fx.broken
    assert b is not None and b.kind == kind
    for policy in ("auto", "bf16", "scaled-mm"):
        if kind in HEADER_STAGE:
            # Refused from the header and the scales: before a single weight is read.
            with pytest.raises(CheckpointError) as ei:
                plan_checkpoint(fx.path, policy)
        else:
            plan = plan_checkpoint(fx.path, policy)
            with pytest.raises(CheckpointError) as ei:
                for _ in iter_load(plan):
                    pass
        e = ei.value
        msg = str(e)
        assert e.file == fx.path and fx.path in msg
        assert b.tensor in msg, (b, msg)  # the culprit tensor, full key
        if b.layer is not None:
            assert b.layer in msg, (b, msg)  # and the layer
        assert e.tensor is not None and e.tensor in msg
        if b.layer is not None and kind != "truncate":
            assert e.tensor.startswith(prefix + b.layer + "."), (e.tensor, b)


def test_refused_file_of_every_fixture_breakage_covers_the_list():
    assert {c[0] for c in CASES} == set(LF.BREAKAGES)


def test_scale_breakage_messages_say_what_is_wrong(tmp_path):
    want = {
        "missing_scale": "no weight_scale",
        "nan_scale": "not finite",
        "inf_scale": "not finite",
        "zero_scale": "must be > 0",
        "negative_scale": "must be > 0",
        "scale_shape": "shape [65]",
        "mixed_layout": "one layout",
        "nan_codes": "NaN",
        "truncate": "truncated",
        "unexpected_key": "unexpected",
    }
    assert set(want) == set(LF.BREAKAGES)
    for kind, text in want.items():
        fx = LF.write_checkpoint(tmp_path / f"{kind}.safetensors", LF.TINY, "ltx-core", seed=SEED, breakage=kind)
        with pytest.raises(CheckpointError, match=re.escape(text)):
            load_all(fx.path)


# -- unexpected keys --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["ltx-core", "bf16"])
@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_unexpected_key_can_be_allowed(tmp_path, encoding, prefix):
    fx = LF.write_checkpoint(
        tmp_path / "u.safetensors", LF.TINY, encoding, seed=SEED, prefix=prefix, breakage="unexpected_key"
    )
    key = fx.broken.tensor
    with pytest.raises(CheckpointError, match="allow_unexpected"):
        plan_checkpoint(fx.path)
    plan, layers, tensors = load(fx.path, "auto", allow_unexpected=True)
    assert plan.contents.unexpected == [key]
    assert any(key in w for w in plan.warnings), plan.warnings
    bare = key[len(prefix) :]
    assert bare.rsplit(".", 1)[0] not in layers and bare not in tensors
    assert len(layers) == len(fx.linear_names())


@pytest.mark.parametrize(
    "key, value",
    [
        ("transformer_blocks.1.attn1.to_zz.weight_scale", torch.tensor(0.01)),  # a scale no layer claims
        ("transformer_blocks.1.attn1.to_zz.input_scale", torch.tensor(0.01)),
        ("transformer_blocks.1.extra_norm.weight", torch.ones(64, dtype=torch.bfloat16)),
        ("transformer_blocks.1.ff.net.1.weight", torch.ones(64, 64, dtype=torch.bfloat16)),  # an extra linear
        ("transformer_blocks.1.attn1.to_k.bias_extra", torch.ones(64, dtype=torch.bfloat16)),
        ("proj_in.weight", torch.ones(64, 128, dtype=torch.bfloat16)),
        ("transformer_blocks.7.attn1.to_q.bias", torch.ones(64, dtype=torch.bfloat16)),  # a bias without weight
    ],
)
def test_keys_the_model_does_not_have_are_refused(base, tmp_path, key, value):
    fx = base["ltx-core"]
    full = fx.prefix + key
    path = rewrite(fx.path, tmp_path / "x.safetensors", add={full: value})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert full in str(ei.value) and path in str(ei.value)
    plan = plan_checkpoint(path, allow_unexpected=True)
    assert full in plan.contents.unexpected


def test_unknown_key_outside_the_transformer_is_only_reported(base, tmp_path):
    fx = base["ltx-core"]
    path = rewrite(fx.path, tmp_path / "x.safetensors", add={"text_encoder.extra": torch.ones(3)})
    plan = plan_checkpoint(path)  # a bundle may carry other models: not refused
    assert plan.contents.unexpected == ["text_encoder.extra"]
    assert any("text_encoder.extra" in w for w in plan.warnings)


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


# -- scales, dtypes and shapes -------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -0.01], ids=["nan", "inf", "zero", "negative"])
def test_bad_input_scale(base, tmp_path, value):
    fx = base["ltx-core"]
    key = fx.prefix + K + ".input_scale"
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: torch.tensor(value)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert key in str(ei.value) and K in str(ei.value) and "input scale" in str(ei.value)


def test_input_scale_that_is_not_a_number(base, tmp_path):
    fx = base["ltx-core"]
    key = fx.prefix + K + ".input_scale"
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: torch.tensor([0.01, 0.02])})
    with pytest.raises(CheckpointError, match="single number") as ei:
        plan_checkpoint(path)
    assert key in str(ei.value)


def test_weight_of_unsupported_dtype(base, tmp_path):
    fx = base["ltx-core"]
    key = fx.prefix + K + ".weight"
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: torch.zeros(64, 64, dtype=torch.int8)})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert K in str(ei.value) and "I8" in str(ei.value)


@pytest.mark.parametrize("encoding", ["ltx-core", "bf16"])
def test_weight_of_the_wrong_shape(base, tmp_path, encoding):
    fx = base[encoding]
    layer = "transformer_blocks.1.ff.net.0.proj"  # [256, 64]
    key = fx.prefix + layer + ".weight"
    t = torch.full((250, 64), 0.01, dtype=torch.bfloat16)
    if encoding == "ltx-core":
        t = quantize(t.float())[0]
    path = rewrite(fx.path, tmp_path / "x.safetensors", replace={key: t})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert layer in str(ei.value) and "[250, 64]" in str(ei.value)
    # A square weight where the model wants a non-square one.
    t = torch.full((64, 64), 0.01, dtype=torch.bfloat16)
    if encoding == "ltx-core":
        t = quantize(t.float())[0]
    path = rewrite(fx.path, tmp_path / "y.safetensors", replace={key: t})
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(path)
    assert layer in str(ei.value) and "[256, 64]" in str(ei.value)


# -- policies and backends ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy, needle",
    [
        ("fp8", "fp8"),
        ("auto; transformer_blocks.*=int4", "transformer_blocks.*=int4"),
        ("auto; transformer_blocks.*", "transformer_blocks.*"),
        ("bf16;  = fp8-cast", "= fp8-cast"),
    ],
)
def test_bad_policy_is_refused_before_reading(base, policy, needle):
    with pytest.raises(PolicyError) as ei:
        plan_checkpoint(base["ltx-core"].path, policy)
    assert needle in str(ei.value)


def test_bad_activation_and_backend_names(base):
    with pytest.raises(ValueError, match="activation"):
        plan_checkpoint(base["ltx-core"].path, "auto", activation="per-token")
    with pytest.raises(ValueError, match="backend"):
        plan_checkpoint(base["ltx-core"].path, "scaled-mm", backend="cutlass")


@pytest.mark.skipif(tensorrt_llm_available(), reason="tensorrt_llm is installed here")
def test_tensorrt_llm_asked_for_without_it(base):
    path = base["ltx-core"].path
    with pytest.raises(BackendUnavailable) as ei:
        plan_checkpoint(path, "scaled-mm", backend="tensorrt-llm")
    assert "tensorrt_llm" in str(ei.value) and "tensorrt-llm" in str(ei.value)
    # auto falls back to torch quietly; fp8-cast needs no GEMM backend at all.
    assert plan_checkpoint(path, "scaled-mm", backend="auto").backend == "torch"
    assert plan_checkpoint(path, "fp8-cast", backend="tensorrt-llm").backend == "torch"
    codes, scale = quantize(torch.randn(32, 64))
    with pytest.raises(BackendUnavailable, match="tensorrt_llm"):
        QuantLinear(QuantLayer("x", Fp8Weight(codes, scale), None, "scaled-mm"), backend="tensorrt-llm")


def test_missing_file_and_pickles(tmp_path):
    with pytest.raises((CheckpointError, OSError)):
        plan_checkpoint(str(tmp_path / "nope.safetensors"))
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(str(p))
    assert str(p) in str(ei.value)
