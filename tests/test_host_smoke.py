"""The real host starts with the pack, serves its API and imports the pack cleanly."""

from __future__ import annotations

from conftest import test_node_packs
from support import hostlib

PACK = hostlib.PACK_NAME


def test_system_stats(host):
    stats = host.system_stats()
    assert stats["system"]["comfyui_version"].startswith("0.30")
    assert stats["devices"], stats


def test_object_info_has_core_and_ltx_nodes(host):
    info = host.object_info()
    for cls in (
        "KSampler",
        "EmptyLTXVLatentVideo",
        "LTXVConcatAVLatent",
        "LTXVSeparateAVLatent",
        "ModelSamplingLTXV",
        "LTXVScheduler",
        "LoraLoaderModelOnly",
        "UNETLoader",
    ):
        assert cls in info, f"{cls} missing from /object_info"
    one = host.object_info("EmptyLTXVLatentVideo")
    assert set(one) == {"EmptyLTXVLatentVideo"}
    assert "width" in one["EmptyLTXVLatentVideo"]["input"]["required"]


def test_pack_imported_without_error(host):
    log = host.log_text()
    lines = hostlib.custom_node_import_lines(log)
    pack_lines = [ln for ln in lines if ln.rstrip("/").endswith("/custom_nodes/" + PACK)]
    assert len(pack_lines) == 1, f"pack not in the import-times section: {lines}\n{host.log_tail()}"
    assert "IMPORT FAILED" not in pack_lines[0], host.log_tail()
    assert "IMPORT FAILED" not in log, host.log_tail()
    assert "Cannot import" not in log, host.log_tail()
    assert "Unable to parse pyproject.toml" not in log, host.log_tail()
    for name, _ in test_node_packs():  # test-only packs load too
        assert any(ln.endswith("/custom_nodes/" + name) and "IMPORT FAILED" not in ln for ln in lines), lines


def test_trivial_prompt_runs(host):
    """A core-only graph runs to success (the queue and history work on this host)."""
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 0.5},
        },
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "smoke/latent"}},
    }
    entry = host.run_prompt(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success"
    assert "3" in entry["outputs"]


def test_invalid_prompt_is_refused_and_host_survives(host):
    status, body = host.post_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert status == 400, body
    assert host.alive()
    assert host.system_stats()
