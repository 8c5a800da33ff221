"""quant/loader.py refuses every file that cannot be loaded correctly with a CheckpointError naming
the file and the culprit (layer / tensor), before a caller gets a model: the fixture's breakages,
unexpected keys, bad input scales, missing files and pickles; policy strings and options that
cannot be honoured raise their own clear errors, before anything is read.

The refusals decided by one module are tested beside it: quantization metadata, scales beside full
precision weights and weight dtypes in test_encodings.py, weight shapes in test_layout.py, GEMM
backends in test_backends.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from support.files import base_files, rewrite

from quant.errors import CheckpointError
from quant.plan import plan_checkpoint
from quant.policy import PolicyError
from quant.stream import iter_load, load
from tools import ltx2_fixture as LF

SEED = 5
K = "transformer_blocks.1.attn1.to_k"  # a quantized layer of the default fp8 fixture (block 0 is bf16)
HEADER_STAGE = set(LF.BREAKAGES) - {"nan_codes"}  # found from the header and scales alone


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return base_files(tmp_path_factory.mktemp("base"), SEED)


def load_all(path, policy="auto", **kw):
    """Plan and stream everything (as the host bridge does); returns the plan."""
    plan = plan_checkpoint(path, policy, **kw)
    for _ in iter_load(plan):
        pass
    return plan


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


# -- input scales --------------------------------------------------------------------------------------


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


# -- policies, options and files ---------------------------------------------------------------------------


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


def test_missing_file_and_pickles(tmp_path):
    with pytest.raises((CheckpointError, OSError)):
        plan_checkpoint(str(tmp_path / "nope.safetensors"))
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError) as ei:
        plan_checkpoint(str(p))
    assert str(p) in str(ei.value)
