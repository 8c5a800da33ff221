"""quant/stream.py: what a load holds where. Tensors that need no conversion stay file-backed (a
mapping of the checkpoint, as the kernel's /proc/self/maps shows, not as the loader says); only
converted ones are private memory, exactly the bytes `private_bytes` estimates; the copy mode puts
everything in RAM; a write to a loaded tensor never reaches the file."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from support.memory import backing

from quant.errors import CheckpointError
from quant.layer import QuantLayer
from quant.plan import plan_checkpoint
from quant.safetensors_header import MAP_MIN_BYTES, map_tensor, open_checkpoint
from quant.stream import iter_load, private_bytes, weights_in_ram
from tools.ltx2_fixture import TINY, config, write_checkpoint

# Widths where every weight is larger than a page (mapped), biases and norms smaller (read).
CFG = config(
    TINY,
    num_layers=2,
    num_attention_heads=4,
    attention_head_dim=64,
    audio_num_attention_heads=4,
    audio_attention_head_dim=32,
    cross_attention_dim=256,
    audio_cross_attention_dim=128,
    caption_channels=128,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    out = {}
    for name, enc, kw in (
        ("ltx-core", "ltx-core", {}),
        ("transposed", "ltx-core", {"transposed": True}),
        ("bf16", "bf16", {}),
    ):
        p = d / f"{name}.safetensors"
        write_checkpoint(p, CFG, enc, seed=5, **kw)
        out[name] = str(p)
    return out


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _held(item) -> dict[str, torch.Tensor]:
    if isinstance(item, QuantLayer):
        w = item.weight.codes if item.quantized else item.weight
        parts = {"weight": w, "scale": item.scale, "input_scale": item.input_scale, "bias": item.bias}
        return {k: v for k, v in parts.items() if v is not None}
    return {"tensor": item}


def _load(path, policy, tensor_dtype=None, in_ram=None, compute_dtype=torch.bfloat16):
    plan = plan_checkpoint(path, policy, device="cpu", compute_dtype=compute_dtype)
    return plan, dict(iter_load(plan, tensor_dtype=tensor_dtype, in_ram=in_ram))


@pytest.mark.parametrize(
    "name,policy,tensor_dtype",
    [
        ("ltx-core", "auto", None),
        ("ltx-core", "auto", torch.float32),
        ("ltx-core", "bf16", torch.bfloat16),
        ("ltx-core", "fp8-cast", torch.bfloat16),
        ("transposed", "auto", torch.bfloat16),
        ("bf16", "auto", torch.bfloat16),
        ("bf16", "fp8-cast", None),
    ],
)
def test_private_memory_is_exactly_the_converted_tensors(files, name, policy, tensor_dtype):
    path = files[name]
    plan, loaded = _load(path, policy, tensor_dtype)
    real = os.path.realpath(path)
    private, mapped, seen = 0, 0, set()
    for item_name, item in loaded.items():
        parts = _held(item)
        where = backing(parts)
        for part, t in parts.items():
            key = t.untyped_storage().data_ptr()
            if key in seen:
                continue
            seen.add(key)
            n = t.numel() * t.element_size()
            assert where[part] in ("", real), (item_name, part, where[part])
            if where[part]:
                mapped += n
                assert n >= MAP_MIN_BYTES
            else:
                private += n
    assert private == private_bytes(plan, tensor_dtype, in_ram=False), (private, mapped)
    fp8_kept = name == "ltx-core" and policy == "auto" and tensor_dtype != torch.float32
    if fp8_kept or (name == "bf16" and policy == "auto" and tensor_dtype == torch.bfloat16):
        assert private < 0.02 * mapped, "unconverted weights must stay file-backed"
    for item_name, item in loaded.items():
        if not isinstance(item, QuantLayer):
            continue
        lp = plan.layer(item_name)
        # Transposed, dequantized, quantized or cast at load: private by necessity; else the file.
        must_change = (
            lp.transposed
            or lp.conversion is not None
            or (lp.src.stored_fp8 and lp.mode == "bf16")
            or (not lp.src.stored_fp8 and lp.src.weight.torch_dtype != plan.compute_dtype)
        )
        small = lp.src.weight.nbytes < MAP_MIN_BYTES  # read: a mapping of less than a page saves nothing
        assert (backing({"w": _held(item)["weight"]})["w"] == "") == (must_change or small), (item_name, lp.mode)


def test_copy_mode_holds_everything_in_ram(files, monkeypatch):
    monkeypatch.setenv("LTX_FP8_WEIGHTS", "ram")
    assert weights_in_ram()
    plan, loaded = _load(files["ltx-core"], "auto")
    for item in loaded.values():
        assert set(backing(_held(item)).values()) == {""}
    assert private_bytes(plan) == sum(
        t.numel() * t.element_size() for item in loaded.values() for t in _held(item).values()
    )
    monkeypatch.setenv("LTX_FP8_WEIGHTS", "disk")
    with pytest.raises(ValueError, match="LTX_FP8_WEIGHTS='disk': expected one of file, ram"):
        weights_in_ram()
    monkeypatch.setenv("LTX_FP8_WEIGHTS", "file")
    assert not weights_in_ram()


def test_a_write_to_a_loaded_weight_never_reaches_the_file(files):
    path = files["ltx-core"]
    before = _sha(path)
    plan, loaded = _load(path, "auto")
    layer = next(
        v
        for v in loaded.values()
        if isinstance(v, QuantLayer) and v.quantized and v.weight.codes.numel() >= MAP_MIN_BYTES
    )
    codes = layer.weight.codes
    assert backing({"c": codes})["c"] == os.path.realpath(path)
    original = codes.view(torch.uint8).clone()
    codes.view(torch.uint8).fill_(0x11)  # what an in-place LoRA update does to the weight
    assert bool((codes.view(torch.uint8) == 0x11).all())
    assert _sha(path) == before, "copy-on-write: the file is never written"
    again = dict(iter_load(plan, names={layer.name}))[layer.name]
    assert torch.equal(again.weight.codes.view(torch.uint8), original), "a new load sees the file's bytes"


def test_a_tensor_past_the_end_of_a_truncated_file_is_refused_not_mapped(files, tmp_path):
    # Mapping bytes past the end of the file succeeds and the first touch kills the process
    # (SIGBUS): the size is checked when mapping, and the error names the tensor.
    p = tmp_path / "t.safetensors"
    p.write_bytes(open(files["ltx-core"], "rb").read())
    with open_checkpoint(p) as (index, f):
        info = max(index.tensors.values(), key=lambda i: i.end)
        os.truncate(p, info.begin + 1)
        with pytest.raises(CheckpointError, match="file truncated or changed") as err:
            map_tensor(f, info, index.path)
    assert err.value.tensor == info.name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("per_row", [False, True], ids=["per-tensor", "per-row"])
@pytest.mark.parametrize("policy", ["fp8-cast", "scaled-mm"])
def test_a_non_finite_full_precision_weight_quantized_at_load_is_refused_by_name(files, tmp_path, bad, per_row, policy):
    # The min/max pass that scales a weight quantized at load is also its finiteness check: one
    # value in one row is enough, and the error counts the values and names the tensor.
    p = tmp_path / "bad.safetensors"
    p.write_bytes(open(files["bf16"], "rb").read())
    with open_checkpoint(p) as (index, _):
        info = next(i for n, i in index.tensors.items() if n.endswith("transformer_blocks.1.ff.net.2.weight"))
    row, col = info.shape[0] // 2, 3
    with open(p, "r+b") as f:
        f.seek(info.begin + (row * info.shape[1] + col) * 2)
        f.write(torch.tensor([bad], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())
    plan = plan_checkpoint(str(p), policy, device="cpu", per_row_quant=per_row)
    lp = next(lp for lp in plan.layers if lp.src.weight.name == info.name)
    assert lp.mode == policy, lp.decision  # quantized at load
    with pytest.raises(CheckpointError, match=r"holds 1 NaN or inf value\(s\)") as err:
        dict(iter_load(plan))
    assert err.value.tensor == info.name and err.value.file == str(p)
