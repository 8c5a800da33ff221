"""Save LTX FP8 Checkpoint and the converter, through the real host.

- The comfy-native files (the converter's, the node's) load in the host's own
  `comfy.sd.load_diffusion_model`, in a separate process, with every scale applied: each fp8 layer
  is the host's scaled fp8 tensor, within the fp8 floor of the original weight.
- A LoRA baked through the node (the host's LoraLoaderModelOnly on the pack's model, over HTTP),
  then loaded without the LoRA, equals the LoRA-patched model layer for layer (codes, fresh scale,
  input scale, full-precision layers, every other tensor), and the VAEs and config of the source
  bundle are in the file byte for byte.
- The output stays inside the host's output folder; a mismatched source bundle is refused by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import reliability as R

from quant.convert import NOTE_KEY, QUANT_METADATA_KEY, convert
from quant.safetensors_header import read_header
from tools import ltx2_fixture as LF
from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON

pytestmark = [pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON), pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
SEED = 31
PREFIX = "model.diffusion_model."
# Layers of the LoRA: two fp8 layers (block 1) and a bf16-block layer (block 0 stays bf16 in the fixture).
LORA_LAYERS = [
    "transformer_blocks.1.attn1.to_q",
    "transformer_blocks.1.ff.net.0.proj",
    "transformer_blocks.0.attn2.to_v",
]
FP8_FLOOR = 0.035

# Run in a fresh interpreter: the host's own loader, nothing of the pack imported.
HOST_LOAD = r"""
import json, sys
from tools.host_inprocess import import_host
import_host()
import comfy.sd, torch
from tools import ltx2_fixture as LF
out = {}
for path, seed, prefix in json.loads(sys.argv[1]):
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        keys = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    fp8 = [k[len(prefix):-len(".weight")] for k, d in keys.items() if k.endswith(".weight") and d == "F8_E4M3"]
    dm = comfy.sd.load_diffusion_model(path).model.diffusion_model
    rows = {}
    for layer in fp8:
        w = dm.get_submodule(layer).weight
        ref = LF.reference_tensor(LF.TINY, layer + ".weight", seed, torch.float64)
        scaled = hasattr(w, "dequantize")
        eff = (w.dequantize() if scaled else w).double()
        rows[layer] = {"host_fp8": scaled, "rel": float((eff - ref).norm() / ref.norm())}
    out[path] = rows
print("@@" + json.dumps(out))
"""


def host_loads(files: list[tuple[str, int, str]]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-c", HOST_LOAD, json.dumps(files)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("@@"))[2:])


def raw_bytes(path, key: str) -> bytes:
    info = read_header(path).tensors[key]
    with open(path, "rb") as f:
        f.seek(info.begin)
        return f.read(info.end - info.begin)


@pytest.fixture(scope="module")
def setup(host):
    core = R.write(host, "save_src_core.safetensors", seed=SEED)
    lora = LF.write_lora(host.model_dir("loras") / "save_lora.safetensors", LF.TINY, LORA_LAYERS, rank=4, seed=9)
    return core, lora


def save_prompt(ckpt: str, prefix: str, lora: str | None = None, encoding: str = "comfy-native", policy="auto"):
    p = {"1": R.loader(ckpt, policy)}
    model = ["1", 0]
    if lora:
        p["2"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0},
        }
        model = ["2", 0]
    p["3"] = {
        "class_type": "LTXFP8SaveCheckpoint",
        "inputs": {"model": model, "ckpt_name": ckpt, "filename_prefix": prefix, "encoding": encoding},
    }
    return p


def test_node_schema(host):
    info = host.object_info("LTXFP8SaveCheckpoint")["LTXFP8SaveCheckpoint"]
    assert info["display_name"] == "Save LTX FP8 Checkpoint" and info["output_node"] is True
    assert list(info["input"]["required"]) == ["model", "ckpt_name", "filename_prefix", "encoding"]
    assert info["input"]["required"]["encoding"][1]["options"] == ["comfy-native", "ltx-core"]


def test_comfy_native_files_load_in_the_hosts_own_loader(host, setup, tmp_path):
    core, _ = setup
    # The converter: a bf16 file quantized on the way; the node: the pack's model of an fp8 bundle.
    bf16 = LF.write_checkpoint(tmp_path / "bf16.safetensors", LF.TINY, "bf16", seed=SEED)
    converted = tmp_path / "converted.safetensors"
    convert(bf16.path, converted, "fp8-cast", "comfy-native")
    entry = host.run_prompt(save_prompt("save_src_core.safetensors", "save_test/native"), timeout=600)
    saved = host.base_dir / "output" / "save_test" / "native_00001_.safetensors"
    assert saved.is_file(), entry["outputs"]
    assert "wrote save_test/native_00001_.safetensors (comfy-native)" in entry["outputs"]["3"]["text"][0]
    assert QUANT_METADATA_KEY in read_header(saved).metadata

    result = host_loads([(str(converted), SEED, PREFIX), (str(saved), SEED, PREFIX)])
    for path, n in ((str(converted), 68), (str(saved), len(core.quantized))):
        rows = result[path]
        assert len(rows) == n, path
        assert all(r["host_fp8"] for r in rows.values()), "the host loaded an fp8 layer without its scale"
        worst = max(r["rel"] for r in rows.values())
        assert worst <= FP8_FLOOR, (path, worst)


def test_lora_baked_through_the_node_equals_the_patched_model(host, setup):
    core, lora = setup
    entry = host.run_prompt(save_prompt("save_src_core.safetensors", "save_test/baked", "save_lora.safetensors"), 600)
    saved = host.base_dir / "output" / "save_test" / "baked_00001_.safetensors"
    assert saved.is_file(), entry["outputs"]
    assert "3 LoRA-patched weights baked in" in entry["outputs"]["3"]["text"][0]
    meta = read_header(saved).metadata
    note = json.loads(meta[NOTE_KEY])
    assert note["lora_patched_weights"] == 3 and "[auto]" in note["model"]
    assert meta["config"] == core.metadata["config"] and meta["model_version"] == core.metadata["model_version"]
    for key in core.passengers:
        assert raw_bytes(saved, key) == raw_bytes(core.path, key), key

    # In this process: the pack's model with the same LoRA, patched by the host's own ModelPatcher.
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import comfy.sd
    import comfy.utils

    cpu = torch.device("cpu")

    def pack_load(path, policy):
        plan = pack.quant.plan.plan_checkpoint(str(path), policy, device="cpu")
        return pack.bridge.host_model.build_model_patcher(plan, load_device=cpu, offload_device=cpu)

    patched, _ = comfy.sd.load_lora_for_models(
        pack_load(core.path, "auto"), None, comfy.utils.load_torch_file(lora.path, safe_load=True), 1.0, 0.0
    )
    patched.patch_model(device_to=cpu)
    baked = pack_load(saved, "auto")  # the file alone, no LoRA
    a_dm, b_dm = patched.model.diffusion_model, baked.model.diffusion_model
    lin = pack.bridge.host_linear.QuantHostLinear
    n_fp8 = n_full = 0
    for name, a in a_dm.named_modules():
        if not isinstance(a, lin):
            continue
        b = b_dm.get_submodule(name)
        fa, fb = a.fp8(), b.fp8()
        assert (fa is None) == (fb is None), name
        if fa is not None:
            n_fp8 += 1
            assert torch.equal(fa.codes.view(torch.uint8), fb.codes.view(torch.uint8)), name
            assert torch.equal(fa.scale, fb.scale), name
            assert (fa.input_scale is None) == (fb.input_scale is None), name
            assert fa.input_scale is None or torch.equal(fa.input_scale, fb.input_scale), name
        else:
            n_full += 1
            assert a.weight.dtype == b.weight.dtype and torch.equal(a.weight, b.weight), name
        assert torch.equal(a.bias, b.bias), name
    assert n_fp8 == len(core.quantized) and n_full == len(core.full_precision)
    # Every other tensor (a linear's buffers hold the file's scale: the one in force is fp8()'s, above).
    linears = {n for n, m in a_dm.named_modules() if isinstance(m, lin)}
    a_sd, b_sd = a_dm.state_dict(), b_dm.state_dict()
    others = [k for k in a_sd if k.rsplit(".", 1)[0] not in linears]
    assert len(others) > 20
    for k in others:
        assert torch.equal(a_sd[k], b_sd[k]), k
    # The LoRA is in the file: its fp8 layers hold new codes with a fresh scale, its bf16 layer new values.
    source = pack_load(core.path, "auto").model.diffusion_model
    for name in LORA_LAYERS:
        b, s = b_dm.get_submodule(name), source.get_submodule(name)
        if s.fp8() is not None:
            assert not torch.equal(b.fp8().scale, s.fp8().scale), name
        else:
            assert not torch.equal(b.weight, s.weight), name
    patched.unpatch_model(device_to=cpu)


def test_ltx_core_encoding_and_the_output_folder(host, setup):
    entry = host.run_prompt(save_prompt("save_src_core.safetensors", "save_test/core", encoding="ltx-core"), 600)
    saved = host.base_dir / "output" / "save_test" / "core_00001_.safetensors"
    assert saved.is_file(), entry["outputs"]
    idx = read_header(saved)
    assert QUANT_METADATA_KEY not in idx.metadata
    core, _ = setup
    for layer in core.quantized:  # no LoRA: the file's own codes and scales, byte for byte
        for part in ("weight", "weight_scale", "input_scale", "bias"):
            key = f"{PREFIX}{layer}.{part}"
            assert raw_bytes(saved, key) == raw_bytes(core.path, key), key
    # A second save to the same prefix counts up; it never writes over the first. (The same prompt
    # again is served from the host's cache, as its own CheckpointSave is: another encoding here.)
    host.run_prompt(save_prompt("save_src_core.safetensors", "save_test/core", encoding="comfy-native"), 600)
    assert (host.base_dir / "output" / "save_test" / "core_00002_.safetensors").is_file()
    assert not [p for p in (host.base_dir / "output").rglob("*.partial")]


def test_refusals_keep_the_host_serving(host, setup):
    # Outside the output folder: refused by the host's own confinement; nothing written.
    entry = host.run_prompt(save_prompt("save_src_core.safetensors", "../escaped"), 600, check=False)
    err = R.error(entry)
    assert err is not None and "outside the output folder" in err["exception_message"], err
    assert not list(host.base_dir.glob("escaped*"))
    # A source bundle of another model: refused, naming the file.
    R.write(host, "save_other.safetensors", cfg=LF.config(LF.TINY, num_layers=3), seed=SEED)
    p = save_prompt("save_src_core.safetensors", "save_test/other")
    p["3"]["inputs"]["ckpt_name"] = "save_other.safetensors"
    err = R.error(host.run_prompt(p, 600, check=False))
    assert err is not None and "save_other.safetensors" in err["exception_message"], err
    assert "do not match" in err["exception_message"]
    assert host.alive()
    assert not list((host.base_dir / "output" / "save_test").glob("other*"))


def test_a_model_from_the_hosts_own_loader_saves_its_codes_as_they_are(host):
    """The host's UNETLoader on a ComfyUI-native file holds fp8 layers as its own scaled fp8 tensor
    (comfy-kitchen QuantizedTensor): the node writes their codes, scales and input scales as they
    are, and the full-precision tensors back in the file's dtype (the CPU host holds them in fp32)."""
    src = R.write(
        host, "save_host_native.safetensors", folder="diffusion_models", encoding="comfy-native-header", seed=SEED
    )
    p = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "save_host_native.safetensors", "weight_dtype": "default"},
        },
        "3": {
            "class_type": "LTXFP8SaveCheckpoint",
            "inputs": {
                "model": ["1", 0],
                "ckpt_name": "save_host_native.safetensors",
                "filename_prefix": "save_test/host_native",
                "encoding": "comfy-native",
            },
        },
    }
    entry = host.run_prompt(p, 600)
    saved = host.base_dir / "output" / "save_test" / "host_native_00001_.safetensors"
    assert saved.is_file(), entry["outputs"]
    src_idx, out_idx = read_header(src.path), read_header(saved)
    assert set(out_idx.tensors) == set(src_idx.tensors)
    for key in src_idx.tensors:
        assert out_idx.tensors[key].dtype == src_idx.tensors[key].dtype, key
        assert raw_bytes(saved, key) == raw_bytes(src.path, key), key
    assert json.loads(out_idx.metadata[QUANT_METADATA_KEY]) == json.loads(src_idx.metadata[QUANT_METADATA_KEY])


def test_the_file_of_a_loaded_model_is_never_written_over(setup, tmp_path):
    """The bridge registers the file of each model it builds (quant/in_use.py): neither the converter
    nor the node's writer replaces it while the model lives; the node never writes over its source."""
    from tools.host_inprocess import import_pack

    pack = import_pack()
    core, _ = setup
    cpu = torch.device("cpu")
    plan = pack.quant.plan.plan_checkpoint(core.path, "auto", device="cpu")
    patcher = pack.bridge.host_model.build_model_patcher(plan, load_device=cpu, offload_device=cpu)
    before = Path(core.path).read_bytes()
    other = LF.write_checkpoint(tmp_path / "other.safetensors", LF.TINY, "bf16", seed=1)
    with pytest.raises(pack.quant.errors.CheckpointError, match="loaded model uses"):
        convert(other.path, core.path, "fp8-cast")
    with pytest.raises(pack.quant.errors.CheckpointError, match="source file"):
        pack.bridge.save_model.save_model(patcher, core.path, core.path)
    assert Path(core.path).read_bytes() == before
    out = tmp_path / "saved.safetensors"
    pack.bridge.save_model.save_model(patcher, core.path, str(out), "ltx-core")
    assert read_header(out).metadata["config"] == core.metadata["config"]


def test_a_cancel_mid_save_leaves_nothing(setup, tmp_path):
    """The node checks the host's interrupt flag between tensors (its progress callback): a Cancel
    in the middle of a write raises the host's own exception and leaves no file and no temporary."""
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import comfy.model_management as mm

    core, _ = setup
    cpu = torch.device("cpu")
    plan = pack.quant.plan.plan_checkpoint(core.path, "auto", device="cpu")
    patcher = pack.bridge.host_model.build_model_patcher(plan, load_device=cpu, offload_device=cpu)
    out = tmp_path / "cancelled.safetensors"
    written = []

    def progress(done, total, key):  # as the node's: the host's check, then the bar
        written.append(key)
        if len(written) == 40:
            mm.interrupt_current_processing(True)
        mm.throw_exception_if_processing_interrupted()

    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack.bridge.save_model.save_model(patcher, core.path, str(out), "comfy-native", progress=progress)
    finally:
        mm.interrupt_current_processing(False)
    assert len(written) == 40
    assert not out.exists() and sorted(os.listdir(tmp_path)) == []
