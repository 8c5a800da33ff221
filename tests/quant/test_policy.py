"""quant/policy.py: the policy string users save in workflows (preset + ordered glob rules).

Round trips, first match wins, comments and blank lines, the `auto` rule mode, sensitive layers,
and the mode each asks for (`quant.modes.decide_mode(...).requested`) on a device with fast fp8
GEMM and without.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.device import DeviceCaps
from quant.modes import decide_mode
from quant.policy import PRESETS, RULE_MODES, Policy, PolicyError, Rule, parse_rules

Q = "transformer_blocks.1.attn1.to_q"
FF = "transformer_blocks.1.ff.net.0.proj"
B0 = "transformer_blocks.0.attn1.to_q"


def mode_for(policy: Policy, name: str, stored_fp8: bool, fast: bool) -> str:
    """The mode `policy` asks for `name` (sensitive or not by its name), before any fallback."""
    caps = DeviceCaps("test", fp8_gemm=fast, fp8_gemm_fast=fast)
    return decide_mode(policy, name, (64, 64), stored_fp8, caps).requested


# -- text forms ---------------------------------------------------------------------------------

ROUND_TRIP = [
    Policy(),
    Policy("fp8-cast"),
    Policy("scaled-mm", (Rule("transformer_blocks.0.*", "bf16"),)),
    Policy(
        "bf16",
        (Rule("*.ff.*", "scaled-mm"), Rule("transformer_blocks.[0-3].*", "fp8-cast"), Rule("patchify_proj", "auto")),
    ),
    Policy("auto", (Rule("transformer_blocks.1?.attn1.to_*", "fp8-cast"), Rule("a b", "bf16"))),
]


@pytest.mark.parametrize("policy", ROUND_TRIP, ids=lambda p: p.to_string())
def test_round_trip(policy):
    text = policy.to_string()
    assert "\n" not in text
    back = Policy.from_string(text)
    assert back == policy
    assert back.to_string() == text


def test_serialised_form():
    assert Policy().to_string() == "auto"
    p = Policy("fp8-cast", (Rule("transformer_blocks.0.*", "bf16"), Rule("*.ff.*", "scaled-mm")))
    assert p.to_string() == "fp8-cast; transformer_blocks.0.*=bf16; *.ff.*=scaled-mm"
    # Spaces around `;` and `=` are not significant.
    assert Policy.from_string("  fp8-cast ;transformer_blocks.0.* =  bf16;*.ff.*=scaled-mm ; ") == p
    assert Policy.from_string("") == Policy() == Policy.from_string(None)
    assert Policy.from_string("bf16;") == Policy("bf16")


_PATTERN = st.text(alphabet="abcxyz_0123456789.*?[]-=! ", min_size=1, max_size=24).map(str.strip).filter(bool)


@settings(max_examples=150, deadline=None)
@given(preset=st.sampled_from(PRESETS), rules=st.lists(st.tuples(_PATTERN, st.sampled_from(RULE_MODES)), max_size=5))
def test_round_trip_property(preset, rules):
    p = Policy(preset, tuple(Rule(pat, mode) for pat, mode in rules))
    assert Policy.from_string(p.to_string()) == p


@pytest.mark.parametrize("pattern", ["a;b", "a#b", "a\nb", " a", "a ", ""])
def test_pattern_that_cannot_round_trip_is_refused(pattern):
    # to_string() of such a rule would read back as different rules (a saved workflow would change
    # meaning): refuse it when the Policy is built.
    with pytest.raises(PolicyError):
        Policy("auto", (Rule(pattern, "bf16"),))


def test_comments_and_blank_lines():
    text = """
# keep the first and last blocks at full precision

transformer_blocks.0.*   = bf16     # first block
   transformer_blocks.47.* =bf16

*.ff.*=scaled-mm   # ff ; a comment with a semicolon: not a rule; x=bf16
#*.attn2.*=bf16
"""
    rules = parse_rules(text)
    assert rules == (
        Rule("transformer_blocks.0.*", "bf16"),
        Rule("transformer_blocks.47.*", "bf16"),
        Rule("*.ff.*", "scaled-mm"),
    )
    assert parse_rules("") == parse_rules("\n\n# only comments\n   \n") == ()
    # `;` separates rules on one line too.
    assert parse_rules("a=bf16; b=fp8-cast") == (Rule("a", "bf16"), Rule("b", "fp8-cast"))


def test_from_string_multiline_with_comments():
    p = Policy.from_string("fp8-cast   # the preset\n# blocks 0 and 1 stay bf16\ntransformer_blocks.[01].*=bf16\n")
    assert p == Policy("fp8-cast", (Rule("transformer_blocks.[01].*", "bf16"),))
    assert Policy.from_string("auto # default") == Policy()
    assert Policy.from_string("scaled-mm; a=bf16 # b=fp8-cast; c=fp8-cast") == Policy("scaled-mm", (Rule("a", "bf16"),))


def test_with_rules_puts_node_rules_first():
    base = Policy("fp8-cast", (Rule("transformer_blocks.*", "scaled-mm"),))
    p = base.with_rules("transformer_blocks.1.*=bf16\n# comment\n")
    assert p.rules == (Rule("transformer_blocks.1.*", "bf16"), Rule("transformer_blocks.*", "scaled-mm"))
    assert mode_for(p, Q, True, True) == "bf16"
    assert mode_for(p, B0, True, True) == "scaled-mm"
    assert base.with_rules("") == base


# -- errors name the offending text ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, needle",
    [
        ("fp8_cast", "fp8_cast"),  # unknown preset
        ("int8", "int8"),
        ("fp8-cast; transformer_blocks.0.*=int8", "transformer_blocks.0.*=int8"),  # unknown mode
        ("fp8-cast; transformer_blocks.0.*", "transformer_blocks.0.*"),  # no `=`
        ("auto; =bf16", "=bf16"),  # empty pattern
        ("auto; a=bf16; b = fp4", "b = fp4"),
    ],
)
def test_bad_policy_strings(text, needle):
    with pytest.raises(PolicyError) as ei:
        Policy.from_string(text)
    assert needle in str(ei.value)


def test_bad_rule_lines_name_line_number_and_text():
    with pytest.raises(PolicyError) as ei:
        parse_rules("a=bf16\n\n  transformer_blocks.3.* = fast  # oops\n")
    msg = str(ei.value)
    assert "line 3" in msg and "transformer_blocks.3.* = fast" in msg and "'fast'" in msg
    with pytest.raises(PolicyError) as ei:
        parse_rules("a=bf16\njust some words")
    assert "line 2" in str(ei.value) and "just some words" in str(ei.value)
    with pytest.raises(PolicyError):
        Policy("turbo")
    with pytest.raises(PolicyError):
        Policy("auto", (Rule("x", "fp4"),))


# -- resolution ----------------------------------------------------------------------------------


def test_first_match_wins():
    p = Policy.from_string("fp8-cast; transformer_blocks.1.attn1.*=bf16; transformer_blocks.1.*=scaled-mm")
    assert mode_for(p, Q, True, True) == "bf16"
    assert mode_for(p, FF, True, True) == "scaled-mm"
    assert mode_for(p, B0, True, True) == "fp8-cast"  # no rule: the preset
    assert p.rule_for(Q) == Rule("transformer_blocks.1.attn1.*", "bf16")
    # The same rules in the other order: the broad one shadows the narrow one.
    r = Policy.from_string("fp8-cast; transformer_blocks.1.*=scaled-mm; transformer_blocks.1.attn1.*=bf16")
    assert mode_for(r, Q, True, True) == "scaled-mm"


def test_globs_are_case_sensitive_and_whole_name():
    p = Policy.from_string("bf16; transformer_blocks.1.attn1.to_q=fp8-cast")
    assert mode_for(p, Q, False, False) == "fp8-cast"
    assert mode_for(p, Q + "x", False, False) == "bf16"  # fnmatch: whole name
    assert mode_for(p, Q.upper(), False, False) == "bf16"


@pytest.mark.parametrize("fast", [False, True])
def test_mode_for_presets(fast):
    best = "scaled-mm" if fast else "fp8-cast"
    for stored_fp8 in (False, True):
        # auto keeps the file's storage; fp8 layers take the device's best fp8 mode.
        assert mode_for(Policy("auto"), Q, stored_fp8, fast) == (best if stored_fp8 else "bf16")
        # the other presets force their mode on block layers, whatever the storage.
        for preset in ("fp8-cast", "scaled-mm", "bf16"):
            assert mode_for(Policy(preset), Q, stored_fp8, fast) == preset


@pytest.mark.parametrize("fast", [False, True])
def test_auto_rule_mode(fast):
    best = "scaled-mm" if fast else "fp8-cast"
    p = Policy.from_string("bf16; transformer_blocks.1.*=auto")
    assert mode_for(p, Q, True, fast) == best
    assert mode_for(p, Q, False, fast) == "bf16"
    assert mode_for(p, B0, True, fast) == "bf16"


@pytest.mark.parametrize("fast", [False, True])
def test_sensitive_layers_keep_storage_unless_named(fast):
    best = "scaled-mm" if fast else "fp8-cast"
    for preset in ("fp8-cast", "scaled-mm", "auto"):
        p = Policy(preset)
        assert mode_for(p, "patchify_proj", False, fast) == "bf16"
        assert mode_for(p, "adaln_single.linear", False, fast) == "bf16"
        # A (hypothetical) sensitive layer stored fp8 stays fp8, in the device's best fp8 mode.
        assert mode_for(p, "proj_out", True, fast) == best
    assert mode_for(Policy("bf16"), "proj_out", True, fast) == "bf16"
    # A rule that names a sensitive layer is obeyed, broad globs included.
    p = Policy.from_string("bf16; patchify_proj=fp8-cast; *=scaled-mm")
    assert mode_for(p, "patchify_proj", False, fast) == "fp8-cast"
    assert mode_for(p, "proj_out", False, fast) == "scaled-mm"
    assert mode_for(p, Q, False, fast) == "scaled-mm"
