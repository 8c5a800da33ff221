"""End to end against the real host: the example workflows run, the modes agree with bf16, the VRAM
report matches the file, LoRA on fp8, broken files, and Apply Quant Policy's isolation.

The host is the session one (conftest `host`, with this pack and tests/nodepack). The demo files
(tools/demo.py `ensure_assets`: the tiny LTX-2.3 bundle in the ltx-core encoding, its bf16
original, a rank-4 LoRA) are written into its model folders under the names the example workflows
use, and the API-format test graphs (tests/workflows/api/*.json) are queued unchanged. The shipped
templates (example_workflows/) have their own suite: tests/test_templates.py.

Agreement is measured on the sampled latents (96x64x9 video + 9 audio latents, 4 euler steps,
cfg 3, seed 42) as the relative error ||x - ref|| / ||ref||, video and audio separately. The
reference is the bf16 original loaded with policy bf16. Measured on CPU (ComfyUI 0.30.0, torch
2.13.0 CPU, float32 compute), identical across runs:

    mode                      reference        video     audio
    auto (fp8-cast on CPU)    bf16           8.3e-03   1.2e-02   (block 0 stays bf16)
    fp8-cast                  bf16           1.4e-02   1.5e-02   (both blocks fp8)
    scaled-mm                 bf16           2.3e-02   2.7e-02   (+ activations in fp8)
    fp8-cast + LoRA           bf16 + LoRA    2.1e-02   2.7e-02
    (bf16 + LoRA              bf16           2.4e-01   3.0e-01)  the LoRA's own effect

The tolerances below are 2.2-2.7x those numbers. The LoRA row is held to the fp8 floor of the same
run: 3x the fp8-cast error without the LoRA (measured 1.4x video, 1.8x audio: the merged weights
are re-quantized with a fresh, larger amax scale, so their floor sits a little higher), and that
tolerance must itself be >= 4x below the LoRA's own effect (measured 5.5x / 6.5x), so a LoRA
dropped or mis-scaled on the fp8 layers fails it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from support import hostlib

from tools import demo, workflow_ui
from tools.ltx2_fixture import TINY, write_checkpoint

PACK_NODES = ("LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport")
TOL = {"auto": 3e-2, "fp8-cast": 4e-2, "scaled-mm": 6e-2}
LORA_FLOOR_FACTOR = 3.0  # fp8-cast + LoRA vs bf16 + LoRA <= this x (fp8-cast vs bf16)
LORA_EFFECT_MARGIN = 4.0  # the LoRA's own effect >= this x the tolerance the LoRA row is held to
FP8_MODES = ("fp8-cast", "scaled-mm")


@pytest.fixture(scope="module")
def assets(host):
    return demo.ensure_assets(host.models_dir, log=lambda *a: None)


@pytest.fixture(scope="module")
def runs(host, assets):
    """Both example workflows (unchanged) and the LoRA references, queued once for the module."""
    return demo.run_examples(host, log=lambda *a: None)


def _single_prompt(policy="auto", rules="", tag="x"):
    return demo.single_prompt(tag, policy=policy, rules=rules)


def _latents(host, prompt, entry):
    return demo.latents_by_tag(prompt, host.base_dir / "output", entry)


# ----------------------------------------------------------------------------------------------
# Registration and the template browser


def test_object_info_lists_the_three_nodes(host):
    info = host.object_info()
    for cls in PACK_NODES:
        assert cls in info, f"{cls} missing from /object_info"
    loader = info["LTXFP8CheckpointLoader"]["input"]
    assert set(loader["required"]) == {"ckpt_name", "policy"}
    assert {"rules", "activation_scale", "backend"} <= set(loader["optional"])
    assert loader["required"]["policy"][1]["options"] == ["auto", "fp8-cast", "scaled-mm", "bf16"]
    apply = info["LTXFP8ApplyQuantPolicy"]["input"]
    assert {"model", "policy"} <= set(apply["required"])
    assert {"rules", "activation_scale", "backend"} <= set(apply["optional"])
    report = info["LTXFP8VRAMReport"]
    assert "model" in report["input"]["required"]
    assert {"model_2", "passthrough"} <= set(report["input"]["optional"])
    assert report["output_node"] is True
    for cls in ("LTXFP8TestConditioning", "LTXFP8TestEmptyAudioLatent"):
        assert cls in info, f"test node pack not loaded: {cls}"


def test_template_browser_lists_only_the_shipped_templates(host):
    listed = host.get("/workflow_templates")
    shipped = {p.stem for p in workflow_ui.WORKFLOWS.glob("*.json")}
    assert shipped == {"ltx23_t2v_audio", "ltx23_two_stage_mix"}
    # Only the UI files: the API copies live one folder down, which the template route never globs;
    # the test graphs (tests/workflows/, they need tests/nodepack) are not listed.
    assert set(listed.get(hostlib.PACK_NAME, [])) == shipped, listed
    for name in shipped:
        served = host.get(f"/api/workflow_templates/{hostlib.PACK_NAME}/{name}.json")
        if isinstance(served, str):
            served = json.loads(served)
        assert served == json.loads((workflow_ui.WORKFLOWS / f"{name}.json").read_text())


def test_ui_workflows_are_generated_from_the_api_ones(host):
    """DIR/*.json == tools/workflow_ui.py applied to DIR/api/*.json, for example_workflows/ and
    tests/workflows/."""
    names = [n for d in workflow_ui.DIRS for n in workflow_ui.api_names(d)]
    texts = workflow_ui.render(names, host.object_info())
    assert {"ltx_fp8_mix", "ltx_fp8_single", "ltx23_t2v_audio", "ltx23_two_stage_mix"} <= set(texts)
    for name, text in texts.items():
        path = workflow_ui.folder_of(name) / f"{name}.json"
        assert path.read_text() == text, f"{path} is out of date: run .venv/bin/python tools/workflow_ui.py"
        ui = json.loads(text)
        api = json.loads((path.parent / "api" / f"{name}.json").read_text())
        assert {n["id"] for n in ui["nodes"] if n["type"] != "Note"} == {int(k) for k in api}


# ----------------------------------------------------------------------------------------------
# The example workflows


def test_example_workflows_run_to_success(runs):
    for name, entry in runs["entries"].items():
        assert entry["status"]["status_str"] == "success", (name, hostlib.execution_error(entry))
    assert set(runs["latents"]) >= {
        "single_auto",
        "mix_scaled_mm",
        "mix_fp8_cast_lora",
        "mix_bf16",
        "ref_fp8_cast",
        "ref_bf16_lora",
    }
    for tag, lat in runs["latents"].items():
        assert lat["video"].shape == (1, 128, 2, 2, 3), tag
        assert lat["audio"].shape == (1, 8, 9, 16), tag
        assert all(torch.isfinite(t).all() for t in lat.values()), tag


def test_fp8_modes_agree_with_bf16_and_are_not_identical(runs):
    lat = runs["latents"]
    ref = lat["mix_bf16"]
    for tag, mode in (("single_auto", "auto"), ("ref_fp8_cast", "fp8-cast"), ("mix_scaled_mm", "scaled-mm")):
        err = demo.av_rel_err(lat[tag], ref)
        for kind, e in err.items():
            assert e <= TOL[mode], f"{mode} {kind}: relative error {e:.3e} > {TOL[mode]:.0e}"
            # fp8 really was used: identical would mean the layers ran at full precision.
            assert e > 1e-4, f"{mode} {kind}: relative error {e:.3e}, indistinguishable from bf16"
    # scaled-mm quantizes the activations too: not the same numbers as fp8-cast.
    assert not torch.equal(lat["mix_scaled_mm"]["video"], lat["ref_fp8_cast"]["video"])


def test_vram_report_fp8_bytes_match_the_file(runs, assets):
    (rep,) = [v for k, v in runs["reports"].items() if k.startswith("ltx_fp8_single")]
    (m,) = rep["models"]
    file = demo.fp8_file_bytes(assets["fp8"])
    assert file["layers"] > 0 and file["weight_scales"] > 0
    fp8_bytes = sum(v for k, v in m["weight_bytes_by_mode"].items() if k in FP8_MODES)
    assert fp8_bytes == file["total"], (m["weight_bytes_by_mode"], file)
    assert m["weight_bytes_by_dtype"].get("float8_e4m3fn") == file["fp8_weights"], m["weight_bytes_by_dtype"]
    assert sum(v for k, v in m["layers_by_mode"].items() if k in FP8_MODES) == file["layers"]
    assert rep["device"]["total_bytes"] > 0
    # The mix report covers all three models; the bf16 original holds no fp8.
    (mix,) = [v for k, v in runs["reports"].items() if k.startswith("ltx_fp8_mix")]
    assert [x["input"] for x in mix["models"]] == ["model", "model_2", "model_3"]
    assert "float8_e4m3fn" not in mix["models"][2]["weight_bytes_by_dtype"]
    assert set(mix["models"][2]["layers_by_mode"]) == {"bf16"}
    assert mix["models"][0]["layers_by_mode"].get("scaled-mm", 0) > 0


def test_lora_on_fp8_cast_matches_lora_on_bf16(runs):
    """Sampled latents (4 steps): fp8-cast + LoRA vs bf16 + LoRA within the fp8 floor."""
    lat = runs["latents"]
    floor = demo.av_rel_err(lat["ref_fp8_cast"], lat["mix_bf16"])
    lora = demo.av_rel_err(lat["mix_fp8_cast_lora"], lat["ref_bf16_lora"])
    effect = demo.av_rel_err(lat["ref_bf16_lora"], lat["mix_bf16"])
    for kind in ("video", "audio"):
        tol = LORA_FLOOR_FACTOR * floor[kind]
        assert lora[kind] <= tol, (
            f"{kind}: LoRA on fp8-cast off by {lora[kind]:.3e} > {tol:.3e} (floor {floor[kind]:.3e})"
        )
        assert effect[kind] >= LORA_EFFECT_MARGIN * tol, (
            f"{kind}: the LoRA changes the result by only {effect[kind]:.3e}: the test cannot tell it from fp8 noise"
        )


# ----------------------------------------------------------------------------------------------
# Broken files


@pytest.mark.parametrize(
    "kind,passengers",
    [("missing_scale", True), ("truncate", True), ("truncate", False)],
    ids=["missing_scale", "truncate_in_passenger", "truncate_in_transformer"],
)
def test_broken_file_gives_node_error_and_the_server_recovers(host, assets, kind, passengers):
    name = f"ltx23_e2e_broken_{kind}{'' if passengers else '_nopass'}.safetensors"
    fx = write_checkpoint(host.model_dir("checkpoints") / name, TINY, "ltx-core", breakage=kind, passengers=passengers)
    prompt = {
        "1": {"class_type": "LTXFP8CheckpointLoader", "inputs": {"ckpt_name": name, "policy": "auto"}},
        "2": {"class_type": "LTXFP8VRAMReport", "inputs": {"model": ["1", 0]}},
    }
    entry = host.run_prompt(prompt, check=False)
    assert entry["status"]["status_str"] == "error", entry["status"]
    err = hostlib.execution_error(entry)
    assert err and err["node_type"] == "LTXFP8CheckpointLoader", err
    msg = err["exception_message"]
    assert name in msg, msg
    named = [fx.broken.tensor] + ([fx.broken.layer] if fx.broken.layer else [])
    assert any(t in msg for t in named), f"neither {named} in: {msg}"
    assert "Traceback" not in msg
    # The next prompt on the same server runs (a fresh load and sampling, not served from cache).
    p = _single_prompt(rules=f"# after {name}", tag=f"after_{kind}{int(passengers)}")
    ok = host.run_prompt(p, timeout=300, check=False)
    assert ok["status"]["status_str"] == "success", hostlib.execution_error(ok)


# ----------------------------------------------------------------------------------------------
# Apply Quant Policy leaves its input MODEL unchanged


def test_apply_policy_leaves_the_input_model_unchanged(host, assets):
    """Graph A: loader -> sample. Graph B: the same loader -> Apply Quant Policy (fp8-cast, which
    re-stores the file's bf16 block in fp8) -> sample, THEN the original model -> sample (ordered
    through ModelSamplingLTXV's latent input). B's original-model latents must equal A's bit for
    bit, and the policy clone's must differ. The loaders' `rules` differ only by a comment, so
    neither graph is served from the other's cache."""
    out = host.base_dir / "output"
    a = _single_prompt(policy="auto", rules="# graph A", tag="iso_plain")
    lat_a = _latents(host, a, host.run_prompt(a))["iso_plain"]

    b = _single_prompt(policy="auto", rules="# graph B", tag="iso_original")
    b["50"] = {
        "class_type": "LTXFP8ApplyQuantPolicy",
        "inputs": {
            "model": ["1", 0],
            "policy": "fp8-cast",
            "rules": "",
            "activation_scale": "static",
            "backend": "auto",
        },
    }
    b["51"] = copy.deepcopy(b["20"])
    b["51"]["inputs"].update(model=["50", 0], latent=["14", 0])
    b["52"] = copy.deepcopy(b["21"])
    b["52"]["inputs"]["model"] = ["51", 0]
    b["53"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": ["52", 0]}}
    b["54"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["53", 0], "filename_prefix": "ltx_fp8/iso_clone_video"},
    }
    b["55"] = {
        "class_type": "SaveLatent",
        "inputs": {"samples": ["53", 1], "filename_prefix": "ltx_fp8/iso_clone_audio"},
    }
    b["20"]["inputs"]["latent"] = ["52", 0]  # the original samples after the clone did
    entry = host.run_prompt(b)
    lat_b = demo.latents_by_tag(b, out, entry)
    for kind in ("video", "audio"):
        assert torch.equal(lat_b["iso_original"][kind], lat_a[kind]), (
            f"{kind}: the input MODEL changed after Apply Quant Policy "
            f"(rel err {demo.rel_err(lat_b['iso_original'][kind], lat_a[kind]):.3e})"
        )
        assert not torch.equal(lat_b["iso_clone"][kind], lat_a[kind]), f"{kind}: the policy did nothing"
    report = entry["outputs"]["50"]["ltx_fp8"][0]
    summary = json.loads(report)
    assert summary["changed"], summary


def test_apply_policy_on_a_model_from_the_hosts_own_loader(host, assets):
    """Apply Quant Policy takes a MODEL from the host's UNETLoader (a bf16 LTX file) and runs it as
    fp8-cast: the sampled latents agree with the host's bf16 model at the fp8-cast floor (the same
    tolerance as our loader's fp8-cast), are not identical to it, and the VRAM report shows the
    block linears quantized at 1 byte per weight."""
    import shutil

    name = "host_loaded_" + demo.DEMO_BF16
    shutil.copyfile(assets["bf16"], host.model_dir("diffusion_models") / name)

    def prompt(with_policy: bool, tag: str) -> dict:
        p = _single_prompt(tag=tag)
        p["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}
        model = ["1", 0]
        if with_policy:
            p["90"] = {"class_type": "LTXFP8ApplyQuantPolicy", "inputs": {"model": ["1", 0], "policy": "fp8-cast"}}
            p["91"] = {"class_type": "LTXFP8VRAMReport", "inputs": {"model": ["90", 0]}}
            model = ["90", 0]
        for node in p.values():
            for k, v in node["inputs"].items():
                if v == ["1", 0] and node is not p.get("90"):
                    node["inputs"][k] = model
        return p

    p_bf16, p_fp8 = prompt(False, "host_bf16"), prompt(True, "host_fp8cast")
    e_bf16, e_fp8 = host.run_prompt(p_bf16), host.run_prompt(p_fp8)
    ref, got = _latents(host, p_bf16, e_bf16), _latents(host, p_fp8, e_fp8)
    errs = demo.av_rel_err(next(iter(got.values())), next(iter(ref.values())))
    assert all(1e-4 < e < TOL["fp8-cast"] for e in errs.values()), errs

    report = json.loads(e_fp8["outputs"]["91"]["ltx_fp8_vram"][0])["models"][0]
    from quant.ltx2_shapes import expected_linear_shapes

    block_linears = [n for n in expected_linear_shapes(TINY) if n.startswith("transformer_blocks.")]
    # The preset quantizes every block linear; the host's bf16 non-block layers stay as they are.
    assert report["layers_by_mode"].get("fp8-cast") == len(block_linears), report["layers_by_mode"]
    fp8_weights = sum(o * i for n, (o, i) in expected_linear_shapes(TINY).items() if n in block_linears)
    assert report["weight_bytes_by_dtype"].get("float8_e4m3fn") == fp8_weights
    print(f"host UNETLoader bf16 -> Apply Quant Policy fp8-cast vs host bf16: {errs}")
