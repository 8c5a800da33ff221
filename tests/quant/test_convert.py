"""quant/convert.py and `python -m quant convert`: every guarantee of a converted file.

- bf16 SRC + an fp8 policy: each layer of OUT, loaded, is bit for bit the on-the-fly quantization
  of SRC by the loader (codes and scale), full-precision layers and other tensors as in SRC;
- fp8 SRC + auto: fp8 codes, scales, input scales and passengers byte-identical to SRC;
- ltx-core: the official keys, dtypes and shapes, no quantization metadata; `verify` against the
  original at the fp8 floor; comfy-native: `_quantization_metadata` names exactly the fp8 layers;
- the policy (rules included) decides which layers are fp8;
- OUT is complete or absent: a failure, an interrupt or a full disk mid-write leaves no OUT and no
  temporary; refusals (OUT = SRC, a file in use, a broken SRC, per-row in comfy-native).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quant import in_use
from quant.convert import NOTE_KEY, QUANT_METADATA_KEY, convert
from quant.errors import CheckpointError
from quant.layer import QuantLayer
from quant.safetensors_header import read_header
from quant.stream import load
from quant.verify import verify
from tools import ltx2_fixture as LF

REPO = Path(__file__).resolve().parents[2]
SEED = 21
PREFIX = "model.diffusion_model."
FP8_FLOOR = 0.035

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def raw_bytes(path, key: str) -> bytes:
    info = read_header(path).tensors[key]
    with open(path, "rb") as f:
        f.seek(info.begin)
        return f.read(info.end - info.begin)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    out = {enc: LF.write_checkpoint(d / f"{enc}.safetensors", LF.TINY, enc, seed=SEED) for enc in LF.ENCODINGS}
    out["transposed"] = LF.write_checkpoint(d / "t.safetensors", LF.TINY, "ltx-core", seed=SEED, transposed=True)
    out["per_row"] = LF.write_checkpoint(
        d / "pr.safetensors", LF.TINY, "comfy-legacy", seed=SEED, per_row=True, scale_2d=True, prefix=""
    )
    out["no_input_scale"] = LF.write_checkpoint(
        d / "nis.safetensors", LF.TINY, "ltx-core", seed=SEED, input_scale=None, prefix="diffusion_model."
    )
    return out


def assert_same_layer(a: QuantLayer, b: QuantLayer, name: str) -> None:
    assert a.quantized == b.quantized, name
    if a.quantized:
        assert torch.equal(a.weight.codes.view(torch.uint8), b.weight.codes.view(torch.uint8)), name
        assert a.weight.scale.dtype == b.weight.scale.dtype == torch.float32, name
        assert torch.equal(a.weight.scale, b.weight.scale), name
        assert (a.input_scale is None) == (b.input_scale is None), name
        if a.input_scale is not None:
            assert torch.equal(a.input_scale, b.input_scale), name
    else:
        assert a.weight.dtype == b.weight.dtype and torch.equal(a.weight, b.weight), name
    assert (a.bias is None) == (b.bias is None) and (a.bias is None or torch.equal(a.bias, b.bias)), name


# -- bf16 SRC: bit for bit the on-the-fly quantization --------------------------------------------------


@pytest.mark.parametrize(
    "policy, per_row",
    [
        ("fp8-cast", False),
        ("scaled-mm", False),
        ("fp8-cast; transformer_blocks.1.ff.*=bf16; proj_out=fp8-cast", False),
        ("fp8-cast", True),
        ("bf16; budget=0.9MB", False),  # the planner's weight budget picks the fp8 layers
    ],
)
def test_bf16_source_equals_on_the_fly_quantization(files, tmp_path, policy, per_row):
    src = files["bf16"].path
    out = tmp_path / "o.safetensors"
    r = convert(src, out, policy, "ltx-core", per_row=per_row)
    assert r.layers["fp8_kept"] == 0 and r.layers["fp8_quantized"] > 0
    # The loader on SRC with the policy (quantizing on the fly) vs the loader on OUT keeping its storage.
    p_src, on_the_fly, t_src = load(src, policy, per_row_quant=per_row)
    p_out, stored, t_out = load(str(out), "auto")
    assert set(stored) == set(on_the_fly)
    n_fp8 = 0
    for name, layer in on_the_fly.items():
        assert_same_layer(stored[name], layer, name)
        n_fp8 += layer.quantized
        if layer.quantized:
            assert layer.weight.per_row == per_row, name
    assert n_fp8 == r.layers["fp8_quantized"]
    assert set(t_out) == set(t_src) and all(torch.equal(t_out[k], t_src[k]) for k in t_src)
    # The policy decided: a rule's bf16 layers are full precision, a rule's non-block fp8 layer is fp8.
    if "ff.*=bf16" in policy:
        assert not stored["transformer_blocks.1.ff.net.0.proj"].quantized
        assert stored["proj_out"].quantized
    assert json.loads(read_header(out).metadata[NOTE_KEY])["policy"] == p_src.policy.to_string()
    if "budget" in policy:  # the budget is met by the file written, as by the load
        assert "budget=0.9MB" in p_src.policy.to_string() and 0 < r.layers["fp8_quantized"] < 68


def test_bf16_layers_stay_as_stored(files, tmp_path):
    """Full-precision layers are written in the file's own dtype (an fp32 file's stay fp32)."""
    src = files["fp32"]
    out = tmp_path / "o.safetensors"
    convert(src.path, out, "fp8-cast", "ltx-core")
    idx = read_header(out)
    assert idx.tensors[PREFIX + "proj_out.weight"].dtype == "F32"
    assert raw_bytes(out, PREFIX + "proj_out.weight") == raw_bytes(src.path, PREFIX + "proj_out.weight")
    assert raw_bytes(out, PREFIX + "scale_shift_table") == raw_bytes(src.path, PREFIX + "scale_shift_table")


# -- fp8 SRC + auto: byte for byte ------------------------------------------------------------------------


@pytest.mark.parametrize("enc", ["ltx-core", "comfy-native-header", "comfy-native-tensor", "comfy-legacy"])
@pytest.mark.parametrize("encoding", ["ltx-core", "comfy-native"])
def test_fp8_source_auto_is_byte_identical(files, tmp_path, enc, encoding):
    fx = files[enc]
    out = tmp_path / "o.safetensors"
    r = convert(fx.path, out, "auto", encoding)
    assert r.layers == {"fp8_kept": len(fx.quantized), "fp8_quantized": 0, "full_precision": len(fx.full_precision)}
    src_idx, out_idx = read_header(fx.path), read_header(out)
    legacy = enc == "comfy-legacy"
    for layer in fx.quantized:
        k = PREFIX + layer
        assert raw_bytes(out, k + ".weight") == raw_bytes(fx.path, k + ".weight"), layer
        scale_key = k + (".scale_weight" if legacy else ".weight_scale")
        assert raw_bytes(out, k + ".weight_scale") == raw_bytes(fx.path, scale_key), layer
        in_key = k + (".scale_input" if legacy else ".input_scale")
        assert raw_bytes(out, k + ".input_scale") == raw_bytes(fx.path, in_key), layer
        assert raw_bytes(out, k + ".bias") == raw_bytes(fx.path, k + ".bias"), layer
    for key in fx.passengers:
        assert raw_bytes(out, key) == raw_bytes(fx.path, key), key
        assert out_idx.tensors[key].dtype == src_idx.tensors[key].dtype
    for key in src_idx.tensors:  # every other transformer tensor too
        if key in out_idx.tensors:
            assert raw_bytes(out, key) == raw_bytes(fx.path, key), key
    assert out_idx.metadata["config"] == src_idx.metadata["config"]
    assert out_idx.metadata["model_version"] == src_idx.metadata["model_version"] == LF.MODEL_VERSION
    if legacy:
        assert r.dropped_markers == [PREFIX + "scaled_fp8"]
    assert PREFIX + "scaled_fp8" not in out_idx.tensors
    assert not [k for k in out_idx.tensors if k.endswith((".comfy_quant", ".scale_weight", ".scale_input"))]


def test_transposed_and_per_row_sources_keep_their_codes(files, tmp_path):
    fx = files["transposed"]
    out = tmp_path / "t.safetensors"
    convert(fx.path, out, "auto", "ltx-core")
    _, layers, _ = load(str(out), "auto")
    for layer in fx.quantized:
        # Stored [in, out] in SRC: the same codes, laid out [out, in].
        assert torch.equal(layers[layer].weight.codes.view(torch.uint8), fx.codes(layer).view(torch.uint8)), layer
        assert raw_bytes(out, PREFIX + layer + ".weight_scale") == raw_bytes(fx.path, PREFIX + layer + ".weight_scale")
    fx = files["per_row"]
    out = tmp_path / "pr.safetensors"
    convert(fx.path, out, "auto", "ltx-core")
    idx = read_header(out)
    for layer in fx.quantized:
        o, _ = fx.codes(layer).shape
        assert idx.tensors[layer + ".weight_scale"].shape == (o,), layer  # [out, 1] in SRC -> [out]
        assert raw_bytes(out, layer + ".weight_scale") == raw_bytes(fx.path, layer + ".scale_weight")
        assert raw_bytes(out, layer + ".weight") == raw_bytes(fx.path, layer + ".weight")


# -- encodings ---------------------------------------------------------------------------------------------


def test_ltx_core_has_the_official_keys_and_verifies_at_the_fp8_floor(files, tmp_path):
    src, ref = files["bf16"], files["fp32"]
    out = tmp_path / "o.safetensors"
    convert(src.path, out, "fp8-cast", "ltx-core")
    idx = read_header(out)
    assert QUANT_METADATA_KEY not in idx.metadata
    assert not [k for k in idx.tensors if k.endswith((".comfy_quant", ".scale_weight", ".scale_input"))]
    fp8_layers = [
        k[: -len(".weight")] for k, i in idx.tensors.items() if k.endswith(".weight") and i.dtype == "F8_E4M3"
    ]
    assert len(fp8_layers) == len(LF.quantized_layer_names(LF.TINY, bf16_blocks=()))  # every block linear
    for k in fp8_layers:
        w = idx.tensors[k + ".weight"]
        name = k[len(PREFIX) :]
        assert w.shape == tuple(LF.expected_linear_shapes(LF.TINY)[name]), k  # [out, in]
        s = idx.tensors[k + ".weight_scale"]
        assert (s.dtype, s.shape) == ("F32", ()), k
        assert k + ".input_scale" not in idx.tensors  # a bf16 SRC has no calibrated input scale
    result = verify(str(out), ref.path, "auto")
    fp8_rows = [r for r in result["layers"] if r["quantized"]]
    assert len(fp8_rows) == len(fp8_layers)
    worst = max(r["weight_rel_err"] for r in fp8_rows)
    assert 0.01 < worst <= FP8_FLOOR, worst  # the e4m3 floor (~0.026 on Gaussian weights), not 0
    # Full-precision layers: bf16 vs the fp32 original, one bf16 rounding.
    assert max(r["weight_rel_err"] for r in result["layers"] if not r["quantized"]) < 2**-8


def test_ltx_core_keeps_input_scales(files, tmp_path):
    fx = files["ltx-core"]
    out = tmp_path / "o.safetensors"
    convert(fx.path, out, "fp8-cast", "ltx-core")
    idx = read_header(out)
    for layer, q in fx.quantized.items():
        i = idx.tensors[PREFIX + layer + ".input_scale"]
        assert (i.dtype, i.shape) == ("F32", ())
        assert float(torch.frombuffer(bytearray(raw_bytes(out, i.name)), dtype=torch.float32)) == q.input_scale
    fx = files["no_input_scale"]
    out = tmp_path / "n.safetensors"
    convert(fx.path, out, "auto", "ltx-core")
    assert not [k for k in read_header(out).tensors if k.endswith(".input_scale")]


def test_comfy_native_names_exactly_the_fp8_layers(files, tmp_path):
    out = tmp_path / "o.safetensors"
    convert(files["bf16"].path, out, "fp8-cast; transformer_blocks.0.*=bf16", "comfy-native")
    idx = read_header(out)
    meta = json.loads(idx.metadata[QUANT_METADATA_KEY])
    fp8 = {k[: -len(".weight")] for k, i in idx.tensors.items() if i.dtype == "F8_E4M3"}
    assert meta["format_version"] == "1.0"
    assert set(meta["layers"]) == fp8 and all(v == {"format": "float8_e4m3fn"} for v in meta["layers"].values())
    assert all(k.startswith(PREFIX + "transformer_blocks.1.") for k in fp8)
    # Read back by the pack as comfy-native.
    plan, layers, _ = load(str(out), "auto")
    assert {lp.src.encoding for lp in plan.layers if lp.src.stored_fp8} == {"comfy-native"}


def test_comfy_native_refuses_per_row(files, tmp_path):
    out = tmp_path / "o.safetensors"
    with pytest.raises(CheckpointError, match="per-row scales") as e:
        convert(files["bf16"].path, out, "fp8-cast", "comfy-native", per_row=True)
    assert "transformer_blocks." in str(e.value) and "ltx-core" in str(e.value)
    with pytest.raises(CheckpointError, match="per-row"):
        convert(files["per_row"].path, out, "auto", "comfy-native")
    assert not out.exists() and leftovers(tmp_path) == []


def test_policy_bf16_dequantizes_fp8_layers(files, tmp_path):
    fx = files["ltx-core"]
    out = tmp_path / "o.safetensors"
    r = convert(fx.path, out, "bf16", "ltx-core")
    assert r.layers["fp8_kept"] == r.layers["fp8_quantized"] == 0
    _, from_src, _ = load(fx.path, "bf16")
    _, from_out, _ = load(str(out), "auto")
    for name, layer in from_src.items():
        assert_same_layer(from_out[name], layer, name)


# -- complete or absent; refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["interrupt", "enospc", "bad_tensor"])
def test_failure_mid_convert_leaves_nothing(files, tmp_path, monkeypatch, failure):
    import quant.safetensors_writer as W

    out = tmp_path / "o.safetensors"
    seen = []

    def progress(done, total, key):
        seen.append(key)
        if failure == "interrupt" and len(seen) == 50:
            raise KeyboardInterrupt

    if failure == "enospc":
        real, calls = os.pwrite, [0]

        def full(fd, data, pos):
            calls[0] += 1
            if calls[0] > 30:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data, pos)

        monkeypatch.setattr(W.os, "pwrite", full)
    if failure == "bad_tensor":  # a tensor that does not match the header (a wrong prediction)
        import quant.convert as C

        real_tensors = C.layer_tensors

        def wrong(key, weight, bias):
            out_ = real_tensors(key, weight, bias)
            return [(k, t.double()) if k.endswith(".bias") and "blocks.1" in k else (k, t) for k, t in out_]

        monkeypatch.setattr(C, "layer_tensors", wrong)
    expected = {"interrupt": KeyboardInterrupt, "enospc": CheckpointError, "bad_tensor": CheckpointError}[failure]
    with pytest.raises(expected) as e:
        convert(files["bf16"].path, out, "fp8-cast", "ltx-core", progress=progress)
    if failure == "enospc":
        assert "disk is full" in str(e.value) and str(out) in str(e.value)
    if failure == "bad_tensor":
        assert "header says BF16" in str(e.value)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_refusals_leave_out_and_src_untouched(files, tmp_path):
    fx = files["bf16"]
    before = Path(fx.path).read_bytes()
    with pytest.raises(CheckpointError, match="source file"):
        convert(fx.path, fx.path, "fp8-cast")
    assert Path(fx.path).read_bytes() == before

    used = tmp_path / "used.safetensors"
    used.write_bytes(b"a model's file")

    class Model:
        pass

    m = Model()
    in_use.register(used, m)
    with pytest.raises(CheckpointError, match="loaded model uses"):
        convert(fx.path, used, "fp8-cast")
    assert used.read_bytes() == b"a model's file"
    del m

    broken = LF.write_checkpoint(tmp_path / "broken.safetensors", LF.TINY, "ltx-core", seed=SEED, breakage="nan_scale")
    out = tmp_path / "o.safetensors"
    with pytest.raises(CheckpointError, match="not finite") as e:
        convert(broken.path, out)
    assert broken.broken.tensor in str(e.value)
    with pytest.raises(ValueError, match="encoding"):
        convert(fx.path, out, "auto", "gguf")
    assert not out.exists() and leftovers(tmp_path) == []


# -- the command line ----------------------------------------------------------------------------------------


def test_cli_convert(files, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "o.safetensors"
    cmd = [sys.executable, "-m", "quant", "convert", files["bf16"].path, str(out)]
    p = subprocess.run(
        cmd + ["--policy", "fp8-cast", "--encoding", "comfy-native"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"wrote {out} (comfy-native, policy fp8-cast)" in p.stdout and "GB/s" in p.stdout
    assert "68 quantized here" in p.stdout
    assert "convert: " in p.stderr and "(100%)" in p.stderr  # the progress line
    assert QUANT_METADATA_KEY in read_header(out).metadata
    p = subprocess.run(cmd + ["--per-row", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout)
    assert summary["per_row"] and summary["encoding"] == "ltx-core" and summary["bytes"] == out.stat().st_size
    p = subprocess.run(cmd[:-1] + [files["bf16"].path], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and "refusing to write over the source file" in p.stderr
