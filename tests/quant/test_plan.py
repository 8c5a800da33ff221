"""quant.stream.load on every fixture encoding x prefix x policy preset, plus per-row, [out, 1]
scales, transposed storage, gates kept full precision, other bf16 block sets, rules and options.

For every layer of every load: the mode is what the policy says (expectations derived here from
the fixture's truth, not from quant.policy), and the effective weight against the float64 reference
weight (tools.ltx2_fixture.reference_tensor, as generated) is at the fp8 floor (0.005 < err < 0.05)
where the layer is quantized (in the file or at load) and < 0.01 (bf16 storage rounding) where it is
kept full precision. Every key of the file is accounted for.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from support.numerics import rel_err

from quant.device import DeviceCaps
from quant.fp8 import FP8
from quant.layer import QuantLayer
from quant.plan import plan_checkpoint
from quant.report import build_report
from quant.stream import iter_load, load
from tools import ltx2_fixture as LF

SEED = 3
PRESETS = ("auto", "fp8-cast", "scaled-mm", "bf16")
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
PREFIX_IDS = {"model.diffusion_model.": "bundle", "diffusion_model.": "dm", "": "bare"}
BLOCK = re.compile(r"^transformer_blocks\.\d+\.")
FP8_FLOOR = (0.005, 0.05)
FULL_MAX = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Files:
    """Fixture files of this module, written once each (lazily)."""

    def __init__(self, root: Path):
        self.root, self.cache = root, {}
        self.refs: dict = {}
        self.shapes: dict = {}

    def get(self, encoding: str, cfg: dict = LF.TINY, **kw) -> LF.Fixture:
        key = (encoding, repr(sorted(kw.items())), repr(sorted(cfg.items())))
        if key not in self.cache:
            path = self.root / f"f{len(self.cache)}.safetensors"
            self.cache[key] = LF.write_checkpoint(path, cfg, encoding, seed=SEED, **kw)
        return self.cache[key]

    def ref(self, cfg: dict, key: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The tensor as generated (float64: before the file's storage rounding), or in `dtype`."""
        ck = repr(sorted(cfg.items()))
        if ck not in self.shapes:
            self.shapes[ck] = LF.expected_state_shapes(cfg)
        k = (ck, key, dtype)
        if k not in self.refs:
            t = LF.reference_tensor(cfg, key, SEED, torch.float32, self.shapes[ck])
            self.refs[k] = t.to(dtype) if dtype != torch.float64 else t.double()
        return self.refs[k]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp("load"))


def expected_mode(name: str, stored_fp8: bool, preset: str, out_in) -> str:
    """The mode on this CPU (fp8 GEMM runs, but not fast): the policy's rules, written out here."""
    in_block = bool(BLOCK.match(name))
    if preset == "bf16":
        return "bf16"
    if preset == "auto" or not in_block:  # sensitive layers keep the file's storage
        return "fp8-cast" if stored_fp8 else "bf16"
    if preset == "scaled-mm" and (out_in[0] % 16 or out_in[1] % 16):
        return "fp8-cast"  # the kernel cannot take it
    return preset


def check_load(files: Files, fx: LF.Fixture, policy: str, expect=None, **load_kw):
    """Load `fx` under `policy` and check every layer, tensor and key. Returns (plan, layers)."""
    plan, layers, tensors = load(fx.path, policy, **load_kw)
    linears = LF.expected_linear_shapes(fx.config)
    assert set(layers) == set(linears), "every linear of the model is loaded, nothing else"
    compute = load_kw.get("compute_dtype", torch.bfloat16)
    rep = build_report(plan)
    rows = {r["name"]: r for r in rep["layers"]}
    for name, lay in layers.items():
        assert isinstance(lay, QuantLayer)
        stored_fp8 = name in fx.quantized
        want = (expect or expected_mode)(name, stored_fp8, policy, linears[name])
        assert lay.mode == want, (name, lay.mode, want)
        assert rows[name]["mode"] == want
        assert rows[name]["storage"] == ("float8_e4m3fn" if stored_fp8 else str(fx.dtype).replace("torch.", ""))
        assert tuple(lay.weight.shape) == linears[name]
        if lay.mode == "bf16":
            assert lay.weight.dtype == compute and lay.scale is None and lay.input_scale is None
        else:
            assert lay.weight.dtype == FP8 and lay.scale.dtype == torch.float32
            assert bool((lay.scale > 0).all()) and bool(torch.isfinite(lay.scale).all())
        if stored_fp8 and lay.mode != "bf16":
            # The file's scale and input scale, kept bit for bit (per-row: [out], from [out] or [out, 1]).
            q = fx.quantized[name]
            assert torch.equal(lay.scale, q.scale.reshape(lay.scale.shape))
            assert lay.scale.dim() == (1 if q.per_row else 0)
            assert q.input_scale is not None and float(lay.input_scale) == q.input_scale
        elif lay.mode != "bf16":
            assert lay.input_scale is None  # quantized at load: no calibrated activation scale
            assert plan.layer(name).note  # ... and the report says why it is fp8

        err = rel_err(lay.effective_weight(torch.float64), files.ref(fx.config, name + ".weight"))
        if stored_fp8 or lay.mode != "bf16":
            assert FP8_FLOOR[0] < err < FP8_FLOOR[1], (name, lay.mode, err)
        else:
            assert err < FULL_MAX, (name, lay.mode, err)
        assert lay.bias is not None and lay.bias.dtype == compute
        assert rel_err(lay.bias, files.ref(fx.config, name + ".bias")) < FULL_MAX

    # Other transformer tensors: exactly the file's (full precision, as stored).
    shapes = LF.expected_state_shapes(fx.config)
    linear_keys = {f"{n}.{p}" for n in linears for p in ("weight", "bias")}
    assert set(tensors) == set(shapes) - linear_keys
    for name, t in tensors.items():
        assert t.dtype == fx.dtype
        assert torch.equal(t, files.ref(fx.config, name, fx.dtype))

    # Every key of the file is accounted for, exactly once.
    c = plan.contents
    consumed = [k for lp in plan.layers for k in lp.src.consumed]
    groups = [k for keys in c.passengers.values() for k in keys]
    accounted = consumed + [c.prefix + n for n in c.tensors] + groups + c.markers
    assert len(accounted) == len(set(accounted))
    assert c.unexpected == []
    assert set(accounted) == set(fx.keys)
    assert c.prefix == fx.prefix
    # Passengers, reported with their groups.
    want_groups = defaultdict(list)
    for k in fx.passengers:
        want_groups[k.split(".", 1)[0]].append(k)
    assert {g: sorted(v) for g, v in c.passengers.items()} == {g: sorted(v) for g, v in want_groups.items()}
    assert {g: v["keys"] for g, v in rep["passengers"].items()} == {g: len(v) for g, v in want_groups.items()}
    if fx.encoding == "comfy-legacy":
        assert c.markers == [fx.prefix + "scaled_fp8"]
    else:
        assert c.markers == []
    return plan, layers


# -- the matrix --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("prefix", PREFIXES, ids=PREFIX_IDS.get)
@pytest.mark.parametrize("encoding", LF.ENCODINGS)
def test_every_encoding_prefix_and_preset(files, encoding, prefix, preset):
    fx = files.get(encoding, prefix=prefix)
    plan, layers = check_load(files, fx, preset)
    n_fp8 = sum(1 for lay in layers.values() if lay.mode != "bf16")
    if encoding in LF.FP8_ENCODINGS:
        assert len(fx.quantized) == 34  # block 1; block 0 is bf16 in the file
        assert {lp.src.encoding for lp in plan.layers if lp.name in fx.quantized} == {
            "ltx-core": {"ltx-core"},
            "comfy-native-header": {"comfy-native"},
            "comfy-native-tensor": {"comfy-native"},
            "comfy-legacy": {"comfy-legacy"},
        }[encoding]
    else:
        assert not fx.quantized
    assert n_fp8 == {"auto": len(fx.quantized), "bf16": 0, "fp8-cast": 68, "scaled-mm": 68}[preset]


VARIANTS = {
    "per_row": dict(per_row=True),
    "per_row_2d": dict(per_row=True, scale_2d=True),
    "transposed": dict(transposed=True),
    "transposed_per_row": dict(transposed=True, per_row=True),
}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("encoding", LF.FP8_ENCODINGS)
def test_scale_and_layout_variants(files, encoding, variant, preset):
    kw = VARIANTS[variant]
    fx = files.get(encoding, **kw)
    key = fx.prefix + "transformer_blocks.1.attn1.to_k.weight_scale"
    if encoding == "comfy-legacy":
        key = key.replace("weight_scale", "scale_weight")
    assert fx.keys[key][1] == ({"per_row": (64,), "per_row_2d": (64, 1), "transposed_per_row": (64,)}.get(variant, ()))
    plan, layers = check_load(files, fx, preset)
    transposed = kw.get("transposed", False)
    assert plan.layout.fp8 == ("[in, out]" if transposed else "[out, in]")
    assert plan.layout.full == "[out, in]"
    for name in fx.quantized:
        assert plan.layer(name).transposed == transposed


def test_legacy_unit_input_scale_means_none(files, tmp_path):
    # comfy-legacy writes scale_input = 1.0 for "no static scale".
    fx = LF.write_checkpoint(tmp_path / "l.safetensors", LF.TINY, "comfy-legacy", seed=SEED, input_scale=1.0)
    plan, layers, _ = load(fx.path, "auto")
    assert all(layers[n].input_scale is None for n in fx.quantized)
    fx = LF.write_checkpoint(tmp_path / "n.safetensors", LF.TINY, "ltx-core", seed=SEED, input_scale=None)
    plan, layers, _ = load(fx.path, "scaled-mm")
    assert all(layers[n].input_scale is None for n in fx.quantized)
    assert {r["activation_scale"] for r in build_report(plan)["layers"] if r["mode"] == "scaled-mm"} == {"dynamic"}


# -- gates, bf16 block sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("quantize_gate", [True, False])
def test_gate_quantized_or_not(files, quantize_gate, preset):
    fx = files.get("ltx-core", quantize_gate=quantize_gate)
    gates = [n for n in fx.linear_names() if n.startswith("transformer_blocks.1.") and n.endswith("to_gate_logits")]
    assert len(gates) == 6
    assert all((g in fx.quantized) == quantize_gate for g in gates)
    plan, layers = check_load(files, fx, preset)
    for g in gates:
        assert plan.layer(g).src.stored_fp8 == quantize_gate


BLOCK_SETS = [
    (LF.TINY, ()),  # every block quantized
    (LF.TINY, (1,)),
    (LF.TINY, (0, 1)),  # nothing quantized, fp8 encoding all the same
    (LF.config(LF.TINY, num_layers=4), (0, 3)),  # as the dev file: first and last blocks bf16
    (LF.config(LF.TINY, num_layers=4), (0, 1, 3)),
]


@pytest.mark.parametrize("preset", ["auto", "fp8-cast"])
@pytest.mark.parametrize("cfg, bf16_blocks", BLOCK_SETS, ids=lambda v: str(v) if isinstance(v, tuple) else None)
def test_bf16_block_sets(files, cfg, bf16_blocks, preset):
    fx = files.get("ltx-core", cfg, bf16_blocks=bf16_blocks)
    n_blocks = cfg["num_layers"]
    stored = {int(BLOCK.match(n).group(0).split(".")[1]) for n in fx.quantized}
    assert stored == set(range(n_blocks)) - set(bf16_blocks)
    plan, layers = check_load(files, fx, preset)
    for name, _lay in layers.items():
        if BLOCK.match(name):
            b = int(name.split(".")[1])
            assert plan.layer(name).src.stored_fp8 == (b not in bf16_blocks)


# -- rules, options --------------------------------------------------------------------------------


def test_rules_first_match_wins(files):
    fx = files.get("ltx-core")
    policy = (
        "fp8-cast; transformer_blocks.1.attn1.*=bf16; transformer_blocks.1.*=scaled-mm; "
        "transformer_blocks.*.ff.*=bf16; patchify_proj=fp8-cast; proj_out=auto"
    )

    def expect(name, stored_fp8, preset, out_in):
        if name.startswith("transformer_blocks.1.attn1."):
            return "bf16"
        if name.startswith("transformer_blocks.1."):
            return "fp8-cast" if out_in[0] % 16 else "scaled-mm"  # ff of block 1 too: rule 2 first
        if re.match(r"transformer_blocks\.\d+\.ff\.", name):
            return "bf16"
        if name == "patchify_proj":
            return "fp8-cast"  # a sensitive layer a rule names
        if BLOCK.match(name):
            return "fp8-cast"  # the preset, quantized at load
        return "bf16"  # sensitive, full precision; proj_out=auto

    plan, layers = check_load(files, fx, policy, expect=expect)
    assert layers["transformer_blocks.1.ff.net.0.proj"].mode == "scaled-mm"
    assert layers["transformer_blocks.0.ff.net.0.proj"].mode == "bf16"
    assert plan.policy.to_string() == policy


def test_rule_quantizes_sensitive_layers_only_when_named(files):
    fx = files.get("bf16")
    plan, layers = check_load(
        files,
        fx,
        "scaled-mm; *embeddings_connector.*=fp8-cast",
        expect=lambda n, s, p, oi: "fp8-cast" if "embeddings_connector." in n else expected_mode(n, s, "scaled-mm", oi),
    )
    assert sum(1 for n in layers if "embeddings_connector." in n) == 14


def test_device_without_fp8_gemm_falls_back_with_one_warning(files):
    # CUDA below compute capability 8.9: scaled-mm runs as fp8-cast, with one warning for the load.
    fx = files.get("ltx-core")
    caps = DeviceCaps("cuda:0 (test, sm_86)", fp8_gemm=False, fp8_gemm_fast=False)
    plan, layers = check_load(
        files, fx, "scaled-mm", device=caps, expect=lambda n, s, p, oi: expected_mode(n, s, "fp8-cast", oi)
    )
    fell_back = [lp for lp in plan.layers if lp.requested == "scaled-mm"]
    assert len(fell_back) == 68 and all(lp.mode == "fp8-cast" for lp in fell_back)
    device_warnings = [w for w in plan.warnings if "sm_86" in w]
    assert len(device_warnings) == 1 and "56 layers" in device_warnings[0], plan.warnings
    assert plan.backend == "torch"


def test_auto_on_a_device_with_fast_fp8_gemm(files):
    # sm_89+: auto runs the file's fp8 layers as scaled-mm (gates: fp8-cast), the rest as stored.
    fx = files.get("ltx-core")
    caps = DeviceCaps("cuda:0 (test, sm_90)", fp8_gemm=True, fp8_gemm_fast=True)

    def expect(name, stored_fp8, preset, out_in):
        if not stored_fp8:
            return "bf16"
        return "fp8-cast" if out_in[0] % 16 or out_in[1] % 16 else "scaled-mm"

    plan, layers = check_load(files, fx, "auto", device=caps, expect=expect)
    assert sum(lay.mode == "scaled-mm" for lay in layers.values()) == 34 - 6


def test_per_row_quantization_at_load(files):
    fx = files.get("bf16")
    plan, layers = check_load(files, fx, "fp8-cast", per_row_quant=True)
    for name, lay in layers.items():
        if lay.mode == "fp8-cast":
            assert lay.scale.shape == (lay.out_features,)
            w = files.ref(fx.config, name + ".weight")
            # Each row's amax maps to 448 (the stored bf16 rounding aside).
            assert torch.allclose(lay.weight.codes.float().abs().amax(dim=1), torch.full((lay.out_features,), 448.0))
            assert rel_err(lay.effective_weight(torch.float64), w) < 0.05


@pytest.mark.parametrize("compute", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_compute_dtype(files, compute):
    fx = files.get("fp32")
    check_load(files, fx, "auto", compute_dtype=compute)
    plan, layers = check_load(files, files.get("ltx-core"), "bf16", compute_dtype=compute)
    assert all(lay.weight.dtype == compute for lay in layers.values())


def test_iter_load_streams_in_file_order_and_filters(files):
    fx = files.get("ltx-core")
    plan = plan_checkpoint(fx.path, "auto")
    begins = {lp.name: lp.src.weight.begin for lp in plan.layers}
    begins.update({n: i.begin for n, i in plan.contents.tensors.items()})
    names = [n for n, _ in iter_load(plan)]
    assert names == sorted(begins, key=begins.get)
    assert len(names) == len(set(names)) == len(plan.layers) + len(plan.contents.tensors)
    some = {"transformer_blocks.1.attn1.to_q", "scale_shift_table"}
    got = dict(iter_load(plan, names=some))
    assert set(got) == some and isinstance(got["transformer_blocks.1.attn1.to_q"], QuantLayer)
    got = dict(iter_load(plan, names={"scale_shift_table"}, tensor_dtype=torch.float32))
    assert got["scale_shift_table"].dtype == torch.float32
