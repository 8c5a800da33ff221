"""The weight budget through the real host: the `weight_budget` input (appended last) of Load LTX FP8
Checkpoint and Apply Quant Policy, the badges' budget figures, the VRAM Report's budget beside the
bytes the model actually holds, impossible and contradictory budgets as node errors after which
the server keeps serving."""

from __future__ import annotations

import json

import pytest
from support import hostlib

from tools import ltx2_fixture as LF

LOADER, APPLY, REPORT = "LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport"
CFG = LF.config(LF.TINY, num_layers=3)


@pytest.fixture(scope="module")
def names(host):
    out = {}
    for enc in ("bf16", "ltx-core"):
        name = f"budget_{enc}.safetensors"
        LF.write_checkpoint(host.model_dir("checkpoints") / name, CFG, enc, seed=11)
        out[enc] = name
    return out


def run(host, nodes: dict, check=True) -> dict:
    entry = host.run_prompt(nodes, check=False)
    if check:
        assert entry["status"]["status_str"] == "success", hostlib.execution_error(entry)
    return entry


def badge(entry, node: str) -> dict:
    return json.loads(entry["outputs"][node]["ltx_fp8"][0])


def vram(entry, node: str) -> dict:
    return json.loads(entry["outputs"][node]["ltx_fp8_vram"][0])


def loader(name, tag, weight_budget="", policy="auto", rules="") -> dict:
    # `rules` carries a comment so that each prompt's loader is its own cache entry
    return {
        "class_type": LOADER,
        "inputs": {"ckpt_name": name, "policy": policy, "rules": f"{rules}\n# {tag}", "weight_budget": weight_budget},
    }


def test_weight_budget_is_the_last_input(host):
    info = host.object_info()
    for cls in (LOADER, APPLY):
        order = info[cls]["input_order"]["optional"]
        assert order[-1] == "weight_budget", order
        assert order[:-1] == ["rules", "activation_scale", "backend"], order
        spec = info[cls]["input"]["optional"]["weight_budget"]
        assert spec[0] == "STRING" and spec[1]["default"] == "" and "GiB" in spec[1]["tooltip"]


@pytest.mark.parametrize("enc", ["bf16", "ltx-core"])
def test_loader_fits_the_budget(host, names, enc):
    plain = run(
        host, {"1": loader(names[enc], f"plain {enc}"), "2": {"class_type": REPORT, "inputs": {"model": ["1", 0]}}}
    )
    unbudgeted = badge(plain, "1")["holdings"]["total_bytes"]
    assert vram(plain, "2")["models"][0]["holdings"]["total_bytes"] == unbudgeted
    target = int(unbudgeted * 0.9)
    entry = run(
        host,
        {
            "1": loader(names[enc], f"budget {enc}", weight_budget=f"{target} B"),
            "2": {"class_type": REPORT, "inputs": {"model": ["1", 0]}},
        },
    )
    b = badge(entry, "1")
    assert b["policy"] == f"auto; budget={target}B"
    assert b["budget"]["budget_bytes"] == target and b["budget"]["unbudgeted_bytes"] == unbudgeted
    assert b["budget"]["moved_layers"] > 0 and 0.005 < b["budget"]["predicted_error"]["worst"] < 0.05
    # what the model holds, counted from its live tensors, is within the budget and as planned
    model = vram(entry, "2")["models"][0]
    assert model["holdings"]["total_bytes"] == b["holdings"]["total_bytes"] == b["budget"]["total_bytes"] <= target
    assert model["budget"]["budget_bytes"] == target
    assert f"budget {target}B" in entry["outputs"]["2"]["text"][0]


def test_apply_policy_fits_the_budget(host, names):
    plain = run(
        host, {"1": loader(names["bf16"], "apply plain"), "2": {"class_type": REPORT, "inputs": {"model": ["1", 0]}}}
    )
    unbudgeted = badge(plain, "1")["holdings"]["total_bytes"]
    target = int(unbudgeted * 0.8)
    entry = run(
        host,
        {
            "1": loader(names["bf16"], "apply plain"),
            "2": {"class_type": APPLY, "inputs": {"model": ["1", 0], "policy": "auto", "weight_budget": f"{target}B"}},
            "3": {"class_type": REPORT, "inputs": {"model": ["2", 0], "model_2": ["1", 0]}},
        },
    )
    b = badge(entry, "2")
    assert b["budget"]["moved_layers"] > 0 and b["budget"]["unbudgeted_bytes"] == unbudgeted
    assert b["holdings"]["total_bytes"] == b["budget"]["total_bytes"] <= target
    assert b["changed"] == {"bf16->fp8-cast": b["budget"]["moved_layers"]}
    models = vram(entry, "3")["models"]
    assert models[0]["holdings"]["total_bytes"] <= target == models[0]["budget"]["budget_bytes"]
    assert models[1]["holdings"]["total_bytes"] == unbudgeted and models[1]["budget"] is None


@pytest.mark.parametrize(
    "inputs, words",
    [
        ({"weight_budget": "1KB"}, ["cannot be met", "smallest possible model"]),
        ({"weight_budget": "1GiB", "rules": "budget=1GB"}, ["two different weight budgets", "1GiB", "budget=1GB"]),
        ({"weight_budget": "twenty"}, ["weight_budget", "'twenty'"]),
    ],
    ids=["impossible", "contradictory", "unreadable"],
)
def test_bad_budgets_are_node_errors_and_the_server_recovers(host, names, inputs, words):
    node = loader(names["bf16"], f"bad {inputs}", inputs["weight_budget"], rules=inputs.get("rules", ""))
    entry = run(host, {"1": node, "2": {"class_type": REPORT, "inputs": {"model": ["1", 0]}}}, check=False)
    err = hostlib.execution_error(entry)
    assert entry["status"]["status_str"] == "error" and err["node_type"] == LOADER, entry["status"]
    for w in words:
        assert w in err["exception_message"], err["exception_message"]
    assert "Traceback" not in err["exception_message"]
    run(
        host,
        {"1": loader(names["bf16"], f"after {inputs}"), "2": {"class_type": REPORT, "inputs": {"model": ["1", 0]}}},
    )
