"""quant/budget.py: the weight budget. Sizes, the policy's budget term, and the fit on tiny fixture
files (an fp8 bundle and a bf16 file): under and over budget, bytes <= budget exactly as the load
report counts them, maximality, least harm first, pins, impossible budgets refused before any
weight is read, kernel-dim layers, a fit again for another compute dtype, and the predicted error
against a float64 reference and against `verify`'s measurement; the sampled error against the
exact one on real-width layers.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from quant import budget as B
from quant.__main__ import main as cli
from quant.device import DeviceCaps
from quant.fp8 import E4M3_MAX, FP8
from quant.holdings import layer_weight_bytes, plan_holdings
from quant.ltx2_shapes import is_sensitive
from quant.modes import Fallback
from quant.plan import plan_checkpoint
from quant.policy import Policy, PolicyError, parse_rules
from quant.report import build_report
from quant.units import SizeError, normalize_size, parse_size
from quant.verify import verify
from tools import ltx2_fixture as LF

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CFG = LF.config(LF.TINY, num_layers=3)
FAST = DeviceCaps("test-sm90", fp8_gemm=True, fp8_gemm_fast=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    return {
        "fp8": LF.write_checkpoint(d / "fp8.safetensors", CFG, "ltx-core", seed=5),
        "bf16": LF.write_checkpoint(d / "bf16.safetensors", CFG, "bf16", seed=5),
    }


def total(plan) -> int:
    return plan_holdings(plan)["total_bytes"]


def ref_error(w: torch.Tensor, per_row: bool = False) -> float:
    """The fp8 relative error in float64, independently of quant: scale amax/448 in fp32, codes
    by torch's own e4m3 cast of the clamped float64 quotient."""
    w64 = w.double()
    amax = w64.abs().amax(dim=1, keepdim=True) if per_row else w64.abs().amax()
    s = (amax / E4M3_MAX).float().double()
    q = (w64 / s).clamp(-E4M3_MAX, E4M3_MAX).to(FP8).double() * s
    return float((q - w64).norm() / w64.norm())


# -- sizes and the policy's term --------------------------------------------------------------


@pytest.mark.parametrize(
    "text, n",
    [
        ("20GB", 20 * 10**9),
        ("20 GB", 20 * 10**9),
        (" 18.5 GiB ", int(18.5 * 2**30)),
        ("512MiB", 512 * 2**20),
        ("1KiB", 1024),
        ("1KB", 1000),
        ("1 kb", 1000),
        ("7B", 7),
        ("0.5MB", 500_000),
        ("1.5B", 1),  # rounded down: a budget is a ceiling
    ],
)
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["20", "GB", "-1GB", "20 TB", "1e3GB", "20 G B", "", "twenty GB"])
def test_bad_size_names_the_text(text):
    with pytest.raises(SizeError) as e:
        parse_size(text)
    assert repr(text) in str(e.value)


def test_policy_budget_round_trip():
    p = Policy.from_string("auto; budget=20GB; transformer_blocks.0.*=bf16")
    assert p.budget == "20GB" and p.budget_bytes == 20 * 10**9
    assert p.rules == parse_rules("transformer_blocks.0.*=bf16")
    assert p.to_string() == "auto; budget=20GB; transformer_blocks.0.*=bf16"
    assert Policy.from_string(p.to_string()) == p
    # anywhere after the preset, any spacing and case: written back canonically after the preset
    q = Policy.from_string("fp8-cast; *.ff.*=bf16;  budget = 18.5 gib ")
    assert q.to_string() == "fp8-cast; budget=18.5GiB; *.ff.*=bf16"
    assert Policy.from_string(q.to_string()) == q
    # strings without a budget read and write as before
    for s in ("auto", "fp8-cast; transformer_blocks.0.*=bf16", "bf16; *.ff.*=scaled-mm; x=auto"):
        assert Policy.from_string(s).to_string() == s
        assert Policy.from_string(s).budget is None


def test_policy_budget_errors():
    with pytest.raises(PolicyError, match="second budget"):
        Policy.from_string("auto; budget=1GB; budget=2GB")
    with pytest.raises(PolicyError, match="'twenty'"):
        Policy.from_string("auto; budget=twenty")
    with pytest.raises(PolicyError, match="is a budget, not a rule"):
        parse_rules("budget=1GB")


def test_node_budget_and_policy_budget():
    """The weight_budget input and a budget term in the rules: the same bytes are one budget, two
    different ones are refused naming both."""
    p = Policy("auto").with_rules("x.*=bf16\nbudget = 1GB").with_budget("1000 MB")
    assert p.budget == "1GB" and p.rules == parse_rules("x.*=bf16")
    assert Policy("auto").with_budget("").budget is None
    assert Policy("auto").with_budget(" 2 GiB ").to_string() == "auto; budget=2GiB"
    with pytest.raises(PolicyError) as e:
        Policy("auto").with_rules("budget=1GB").with_budget("1GiB")
    assert "1GiB" in str(e.value) and "budget=1GB" in str(e.value)
    with pytest.raises(PolicyError, match="weight_budget"):
        Policy("auto").with_budget("lots")
    assert normalize_size("20 gb") == "20GB"


# -- the choice ---------------------------------------------------------------------------------


def test_choose_least_harm_first_and_maximal():
    c = [
        B.Candidate("a", 1, 10, B.MEASURED, 0.03),
        B.Candidate("b", 1, 10, B.MEASURED, 0.01),
        B.Candidate("c", 1, 100, B.MEASURED, 0.02),
        B.Candidate("d", 1, 10, B.KEPT_BY_AUTHOR, 0.001),
        B.Candidate("e", 1, 10, B.KEPT_CODES, 0.0),
    ]
    moved, tot = B.choose(c, 1000, 1000)
    assert moved == [] and tot == 1000
    moved, tot = B.choose(c, 1000, 985)  # e then b fit: 980
    assert [m.name for m in moved] == ["e", "b"] and tot == 980
    # greedy order e, b, c (980 -> 880 fits 900); then c is kept, e and b go back? b: 890 fits, e: 900 fits
    moved, tot = B.choose(c, 1000, 900)
    assert [m.name for m in moved] == ["c"] and tot == 900
    moved, tot = B.choose(c, 1000, 870)  # all but d needed... e, b, c, a = 870
    assert sorted(m.name for m in moved) == ["a", "b", "c", "e"] and tot == 870
    assert all(tot + m.saved_bytes > 870 for m in moved)  # maximal


# -- the fit on files ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fp8", "bf16"])
def test_under_budget_moves_nothing_and_reads_nothing(files, kind, monkeypatch):
    path = str(files[kind].path)
    plain = plan_checkpoint(path, "auto")
    monkeypatch.setattr(B, "_read_into", lambda *a, **k: pytest.fail("read a weight"))
    for b in (total(plain), total(plain) + 1, 10**12):
        plan = plan_checkpoint(path, f"auto; budget={b}B")
        assert [lp.decision for lp in plan.layers] == [lp.decision for lp in plain.layers]
        assert plan.budget.moved == () and plan.budget.measured_layers == 0
        assert total(plan) == total(plain) <= b


@pytest.mark.parametrize("kind", ["fp8", "bf16"])
@pytest.mark.parametrize("frac", [0.2, 0.5, 0.8, 0.97, 1.0])
def test_over_budget_fits_exactly_and_is_maximal(files, kind, frac):
    path = str(files[kind].path)
    plain = plan_checkpoint(path, "auto")
    floor = total(plan_checkpoint(path, "fp8-cast; *=fp8-cast"))  # every linear fp8
    budget = floor + int(frac * (total(plain) - floor)) - (1 if frac == 1.0 else 0)
    plan = plan_checkpoint(path, f"auto; budget={budget}B")
    report = build_report(plan)
    assert report["total_bytes"] == total(plan) == plan.budget.total_bytes <= budget
    assert report["budget"]["fits"] and report["budget"]["budget_bytes"] == budget
    assert plan.budget.minimum_bytes == floor
    moved = {m.name: m for m in plan.budget.moved}
    assert moved, "over budget: something must move"
    for lp in plan.layers:
        base = plain.layer(lp.name)
        if lp.name in moved:
            assert base.mode == "bf16" and lp.mode == "fp8-cast" and lp.decision.by_budget
            assert "moved to fp8 by the weight budget" in lp.note
            # maximal: this layer back in full precision would not fit
            assert total(plan) + moved[lp.name].saved_bytes > budget
            saved = layer_weight_bytes(lp, plan.compute_dtype, "bf16") - layer_weight_bytes(lp, plan.compute_dtype)
            assert moved[lp.name].saved_bytes == saved
        else:
            assert lp.decision == base.decision
    rows = {r["name"]: r for r in report["layers"]}
    assert {n for n, r in rows.items() if r["by_budget"]} == set(moved)
    assert all(rows[n]["predicted_error"] == moved[n].error for n in moved)
    err = report["budget"]["predicted_error"]
    params = sum(m.params for m in moved.values())
    assert err["worst"] == max(m.error for m in moved.values())
    assert err["weighted_mean"] == pytest.approx(sum(m.error * m.params for m in moved.values()) / params)


def test_predicted_error_against_float64_and_verify(files):
    fx = files["bf16"]
    path = str(fx.path)
    budget = int(0.8 * total(plan_checkpoint(path, "auto")))
    plan = plan_checkpoint(path, f"auto; budget={budget}B")
    for m in plan.budget.moved:
        assert m.error == pytest.approx(ref_error(fx.reference(m.name).bfloat16()), rel=1e-6)
        assert 0.005 < m.error < 0.05
    result = verify(path, path, f"auto; budget={budget}B")
    rows = {r["name"]: r for r in result["layers"] if r["by_budget"]}
    assert set(rows) == {m.name for m in plan.budget.moved}
    for m in plan.budget.moved:  # the load quantizes exactly as predicted: measured == predicted
        assert rows[m.name]["weight_rel_err"] == pytest.approx(m.error, rel=1e-6)
    only = verify(path, path, f"auto; budget={budget}B", moved_only=True)
    assert [r["name"] for r in only["layers"]] == [r["name"] for r in result["layers"] if r["by_budget"]]
    assert only["budget"]["measured_weight_error"] == result["budget"]["measured_weight_error"]
    b = result["budget"]
    assert b["measured_weight_error"]["worst"] == pytest.approx(b["predicted_error"]["worst"], rel=1e-6)
    assert b["measured_weight_error"]["weighted_mean"] == pytest.approx(b["predicted_error"]["weighted_mean"], rel=1e-6)


def test_least_harm_order_bf16_file(files):
    """bf16 file: block layers by measured error, the non-block layers after them."""
    path = str(files["bf16"].path)
    plain = plan_checkpoint(path, "auto")
    blocks = [lp for lp in plain.layers if not is_sensitive(lp.name)]
    block_saving = sum(
        layer_weight_bytes(lp, plain.compute_dtype, "bf16") - layer_weight_bytes(lp, plain.compute_dtype, "fp8-cast")
        for lp in blocks
    )
    plan = plan_checkpoint(path, f"auto; budget={total(plain) - block_saving // 2}B")
    moved = {m.name for m in plan.budget.moved}
    assert moved and not any(is_sensitive(n) for n in moved)
    errors = plan.budget.errors
    kept = [lp.name for lp in blocks if lp.name not in moved]
    # greedy by error: every moved block layer has an error no larger than the kept ones, up to
    # the few the maximal pass put back (each of those saves more than the slack)
    worst_moved = max(errors[n] for n in moved)
    lower_kept = [n for n in kept if errors[n] < worst_moved]
    slack = plan.budget.budget_bytes - plan.budget.total_bytes
    for n in lower_kept:
        lp = plan.layer(n)
        assert (
            layer_weight_bytes(lp, plan.compute_dtype, "bf16") - layer_weight_bytes(lp, plan.compute_dtype, "fp8-cast")
            > slack
        )


def test_fp8_file_bf16_preset_keeps_the_files_codes_first(files, monkeypatch):
    """bf16 preset on an fp8 file: keeping the file's own codes (error 0, nothing read) comes before
    any layer the file's author kept full precision."""
    path = str(files["fp8"].path)
    plain = plan_checkpoint(path, "bf16")
    stored = [lp for lp in plain.layers if lp.stored_e4m3]
    saving = sum(
        layer_weight_bytes(lp, plain.compute_dtype, "bf16") - layer_weight_bytes(lp, plain.compute_dtype, "fp8-cast")
        for lp in stored
    )
    monkeypatch.setattr(B, "_read_into", lambda *a, **k: pytest.fail("read a weight"))
    plan = plan_checkpoint(path, f"bf16; budget={total(plain) - saving}B")
    moved = {m.name for m in plan.budget.moved}
    assert moved == {lp.name for lp in stored}
    assert all(m.error == 0.0 and m.tier == B.KEPT_CODES for m in plan.budget.moved)
    assert all(plan.layer(n).conversion is None for n in moved)  # codes kept as stored


def test_fp8_file_author_kept_layers(files):
    path = str(files["fp8"].path)
    plain = plan_checkpoint(path, "auto")
    plan = plan_checkpoint(path, f"auto; budget={total(plain) - 1}B")
    assert plan.budget.moved and all(m.tier == B.KEPT_BY_AUTHOR for m in plan.budget.moved)


def test_rules_pin(files):
    path = str(files["bf16"].path)
    policy = "auto; transformer_blocks.1.*=bf16; *.audio_ff.*=auto"
    plain = plan_checkpoint(path, policy)
    floor = total(plan_checkpoint(path, "auto; transformer_blocks.1.*=bf16; *.audio_ff.*=auto; *=fp8-cast"))
    plan = plan_checkpoint(path, f"{policy}; budget={floor}B")
    assert total(plan) == floor == plan.budget.minimum_bytes
    for lp in plan.layers:
        if lp.name.startswith("transformer_blocks.1.") or ".audio_ff." in lp.name:
            assert lp.mode == "bf16" and not lp.decision.by_budget
        else:
            assert lp.mode == "fp8-cast"
    assert total(plain) > floor


def test_impossible_budget_refused_before_reading(files, monkeypatch):
    path = str(files["bf16"].path)
    floor = total(plan_checkpoint(path, "auto; transformer_blocks.1.*=bf16; *=fp8-cast"))
    monkeypatch.setattr(B, "_read_into", lambda *a, **k: pytest.fail("read a weight"))
    with pytest.raises(B.BudgetError) as e:
        plan_checkpoint(path, f"auto; budget={floor - 1}B; transformer_blocks.1.*=bf16")
    msg = str(e.value)
    assert path in msg and f"({floor} bytes)" in msg and f"({floor - 1} bytes)" in msg
    assert "rule transformer_blocks.1.*=bf16 holds" in msg and "remove a pinning rule" in msg
    assert "other tensors" in msg
    # the CLI says it, exit code 2
    monkeypatch.undo()
    assert cli(["inspect", path, "--policy", "auto; budget=1KB"]) == 2


def test_kernel_dim_layers_run_fp8_cast(files):
    """On a device with fast fp8 GEMM the budget moves layers to scaled-mm, except those whose dims
    the kernel cannot take (the 4-head gate logits [4, 64], the 8-wide audio ...), which run as
    fp8-cast with their typed fallback."""
    path = str(files["bf16"].path)
    floor = total(plan_checkpoint(path, "fp8-cast; *=fp8-cast", device=FAST))
    plan = plan_checkpoint(path, f"auto; budget={floor}B", device=FAST)
    odd = [lp for lp in plan.layers if lp.out_in[0] % 16 or lp.out_in[1] % 16]
    assert odd
    for lp in plan.layers:
        assert lp.decision.by_budget and lp.requested == "scaled-mm"
        if lp in odd:
            assert lp.mode == "fp8-cast" and lp.fallback is Fallback.KERNEL_DIMS
        else:
            assert lp.mode == "scaled-mm" and lp.fallback is None
    assert any("dims not multiple of 16" in w for w in plan.warnings)


def test_fit_again_for_another_dtype_reuses_the_errors(files, monkeypatch):
    path = str(files["bf16"].path)
    budget = int(0.9 * total(plan_checkpoint(path, "auto")))
    plan = plan_checkpoint(path, f"auto; budget={budget}B")
    read, real = [], B._read_into

    def spy(f, info, buf, p):
        read.append(info.name)
        return real(f, info, buf, p)

    monkeypatch.setattr(B, "_read_into", spy)
    fp32 = B.fit_budget(replace(plan, compute_dtype=torch.float32))
    known = {plan.contents.prefix + n + ".weight" for n in plan.budget.errors}
    assert not known & set(read) and fp32.budget.measured_layers == len(read)
    assert total(fp32) <= budget
    assert len(fp32.budget.moved) > len(plan.budget.moved)  # 4 bytes per full-precision weight now
    assert sum(1 for w in fp32.warnings if "dims not multiple" in w) <= 1


def test_inspect_json_and_text(files, capsys):
    path = str(files["bf16"].path)
    budget = int(0.8 * total(plan_checkpoint(path, "auto")))
    assert cli(["inspect", path, "--policy", f"auto; budget={budget}B", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["policy"] == f"auto; budget={budget}B"
    assert r["total_bytes"] <= budget == r["budget"]["budget_bytes"]
    assert r["budget"]["moved_layers"] == sum(1 for x in r["layers"] if x["by_budget"]) > 0
    assert cli(["inspect", path, "--policy", f"auto; budget={budget}B"]) == 0
    text = capsys.readouterr().out
    assert f"budget {budget}B:" in text and "moved by the budget:" in text and "predicted weight error" in text


# -- the sampled error ------------------------------------------------------------------------


def test_sampled_error_matches_exact_tiny(files):
    fx = files["bf16"]
    for name in fx.linear_names()[:20]:
        w = fx.reference(name).bfloat16()
        exact = B.fp8_relative_error(w, sample=None)
        assert exact == pytest.approx(ref_error(w), rel=1e-6)
        assert B.fp8_relative_error(w, per_row=True, sample=None) == pytest.approx(ref_error(w, True), rel=1e-6)
        if w.shape[0] >= 8:
            assert B.fp8_relative_error(w, sample=w.numel() // 4) == pytest.approx(exact, rel=0.15)


@pytest.mark.parametrize(
    "key", ["transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.attn1.to_q.weight", "proj_out.weight"]
)
def test_sampled_error_matches_exact_real_width(key):
    """The default sample (SAMPLE_WEIGHTS evenly spaced rows, the whole layer's scale) against the
    exact error on LTX-2.3 22B-width layers (the widths the sample is used for)."""
    w = LF.reference_tensor(LF.REAL, key, seed=1)
    exact = ref_error(w) if w.numel() <= 1 << 24 else B.fp8_relative_error(w, sample=None)
    sampled = B.fp8_relative_error(w)
    assert sampled == pytest.approx(exact, rel=0.03)
