"""`config_problem`: why a file's `config["transformer"]` cannot size the model, or None.

A hostile header's sizes are never looped over or multiplied blindly: every size must be an integer
in [0, 2**20], and no count of layers may exceed the number of tensors in the file. Each case below
is one fault in an otherwise valid config (the TINY fixture's), with the exact message expected.
"""

from __future__ import annotations

import pytest

from quant.plan import config_problem
from tools import ltx2_fixture as LF

LIMIT = 2**20
ENOUGH = 10_000  # tensors: more than any count of layers here


def test_a_valid_config_has_no_problem():
    assert config_problem(LF.config(LF.TINY), 2, ENOUGH) is None
    assert config_problem({}, 0, ENOUGH) is None  # the host's defaults (48 layers) size the model
    # The limits themselves are allowed; flags are not sizes.
    assert config_problem(LF.config(LF.TINY, attention_head_dim=LIMIT, caption_channels=0), 2, ENOUGH) is None
    assert config_problem(LF.config(LF.TINY, apply_gated_attention="yes"), 2, ENOUGH) is None
    # Keys that size nothing are not looked at.
    assert config_problem(LF.config(LF.TINY, some_other_key=[1, 2]), 2, ENOUGH) is None


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("attention_head_dim", "16", "'16'"),
        ("attention_head_dim", 16.0, "16.0"),
        ("num_attention_heads", True, "True"),
        ("cross_attention_dim", None, "None"),
        ("caption_channels", -1, "-1"),
        ("caption_channels", LIMIT + 1, str(LIMIT + 1)),
        ("num_layers", 10**400, str(10**400)[:40]),
        ("audio_attention_head_dim", [8], "list"),
        ("connector_num_attention_heads", {"n": 4}, "dict"),
        ("audio_connector_attention_head_dim", "x" * 100, repr("x" * 100)[:40]),
    ],
    ids=["str", "float", "bool", "null", "negative", "over-limit", "huge", "list", "object", "long-text"],
)
def test_a_size_that_is_not_an_integer_in_range(key, value, shown):
    problem = config_problem(LF.config(LF.TINY, **{key: value}), 2, ENOUGH)
    assert problem == f"{key} = {shown}, expected an integer in [0, {LIMIT}]"


def test_a_block_index_beyond_the_file():
    # The highest block index named by a key is 8 (9 blocks), in a file of 5 tensors.
    assert config_problem(LF.config(LF.TINY), 9, 5) == (
        "a key names transformer block 8, but the file holds only 5 tensors; expected blocks numbered from 0"
    )


@pytest.mark.parametrize("key", ["num_layers", "connector_num_layers"])
def test_more_layers_than_the_file_has_tensors(key):
    assert config_problem(LF.config(LF.TINY, **{key: 48}), 2, 40) == (
        f"{key} = 48, more layers than the file has tensors (40)"
    )
    assert config_problem(LF.config(LF.TINY, **{key: 40}), 2, 40) is None
