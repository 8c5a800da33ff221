"""The fault model of file-backed weights (docs/design.md, "Fault model"): what happens to a
loaded model when its file changes on disk, beside the host's own loader in the same situation.

- A new file renamed over the one in use (how downloaders and the pack's writers replace files):
  the model keeps computing with the old bytes (its mappings hold the old inode).
- In-place truncation: touching a weight whose pages are gone kills the process with SIGBUS, as
  it does with the host's own loader (`comfy.utils.load_torch_file`, one mapping of the whole file);
  the copy mode (`LTX_FP8_WEIGHTS=ram`) is immune. Run in child processes here.
- In-place rewrite of the same bytes: pages not yet written by the model show the new bytes, with
  both loaders (private file mappings follow the file until written).
- A file changed between the plan and the load, or a load that fails, leaves no model behind;
  a load that cannot fit the RAM available is refused before it starts.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from support.memory import live_ltxav_models

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON
from tools.ltx2_fixture import TINY, write_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER = "transformer_blocks.1.attn1.to_q"


def test_a_file_renamed_over_the_one_in_use_leaves_the_model_on_the_old_bytes(pack, tmp_path):
    import comfy.utils

    path = tmp_path / "m.safetensors"
    write_checkpoint(path, TINY, "ltx-core", seed=1)
    cpu = torch.device("cpu")
    plan = pack.quant.plan.plan_checkpoint(str(path), "fp8-cast", device="cpu")
    patcher = pack.bridge.host_model.build_model_patcher(plan, load_device=cpu, offload_device=cpu)
    m = comfy.utils.get_attr(patcher.model.diffusion_model, LAYER)
    x = torch.randn(3, m.in_features)
    y0, codes0 = m(x), m.weight.view(torch.uint8).clone()

    new = tmp_path / "m.safetensors.part"
    write_checkpoint(new, TINY, "ltx-core", seed=2)
    os.replace(new, path)  # what a downloader does when it finishes
    assert torch.equal(m.weight.view(torch.uint8), codes0)
    assert torch.equal(m(x), y0), "the model computes with the bytes it loaded"
    fresh = pack.quant.plan.plan_checkpoint(str(path), "fp8-cast", device="cpu")
    again = dict(pack.quant.stream.iter_load(fresh, names={LAYER}))[LAYER]
    assert not torch.equal(again.weight.codes.view(torch.uint8), codes0), "a new load reads the new file"


_CHILD = textwrap.dedent(
    """
    import os, sys, torch
    path, loader = sys.argv[1], sys.argv[2]
    if loader == "host":
        from tools.host_inprocess import import_host
        import_host()
        import comfy.utils
        held = list(comfy.utils.load_torch_file(path).values())
    else:
        from quant.plan import plan_checkpoint
        from quant.stream import iter_load
        held = []
        for _, item in iter_load(plan_checkpoint(path, "auto", device="cpu")):
            if isinstance(item, torch.Tensor):
                held.append(item)
            else:
                held += [item.weight.codes if item.quantized else item.weight, item.bias]
    print("loaded", len(held), flush=True)
    mode = sys.argv[3]
    if mode == "truncate":
        os.truncate(path, 64)
    else:  # rewrite every data byte in place, same size
        with open(path, "r+b") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(8 + n)
            f.write(b"\\x11" * (os.path.getsize(path) - 8 - n))
    touched = 0
    for t in held:
        if t is not None and t.numel():
            touched += int(t.contiguous().reshape(-1).view(torch.uint8).to(torch.int64).sum())
    print("survived", flush=True)
    changed = any(
        t is not None and t.numel() > 4096 and bool((t.reshape(-1).view(torch.uint8) == 0x11).all()) for t in held
    )
    print("sees-new-bytes" if changed else "sees-old-bytes", flush=True)
    """
)


def _child(path, loader: str, mode: str, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), loader, mode],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# A file with weights over a page (file-backed in the pack) and under the host's small tensors.
_CFG = dict(TINY, attention_head_dim=64, cross_attention_dim=256, caption_channels=128)


@pytest.mark.parametrize("loader", ["pack", "host"])
def test_in_place_truncation_kills_the_process_with_either_loader(tmp_path, loader):
    if loader == "host" and not HOST_AVAILABLE:
        pytest.skip(HOST_SKIP_REASON)
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, _CFG, "ltx-core", seed=1, prefix="")
    r = _child(path, loader, "truncate")
    assert "loaded" in r.stdout, r.stderr[-2000:]
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "survived" not in r.stdout


def test_copy_mode_survives_in_place_truncation_and_rewrite(tmp_path):
    path = tmp_path / "m.safetensors"
    for mode in ("truncate", "rewrite"):
        write_checkpoint(path, _CFG, "ltx-core", seed=1, prefix="")
        r = _child(path, "pack", mode, {"LTX_FP8_WEIGHTS": "ram"})
        assert r.returncode == 0 and "survived" in r.stdout, (mode, r.returncode, r.stderr[-2000:])
        assert "sees-old-bytes" in r.stdout


@pytest.mark.parametrize("loader", ["pack", "host"])
def test_in_place_rewrite_shows_through_with_either_loader(tmp_path, loader):
    if loader == "host" and not HOST_AVAILABLE:
        pytest.skip(HOST_SKIP_REASON)
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, _CFG, "ltx-core", seed=1, prefix="")
    r = _child(path, loader, "rewrite")
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])
    assert "sees-new-bytes" in r.stdout, r.stdout


def test_a_file_truncated_between_plan_and_load_leaves_no_model(pack, tmp_path):
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, TINY, "ltx-core", seed=1)
    plan = pack.quant.plan.plan_checkpoint(str(path), "auto", device="cpu")
    os.truncate(path, os.path.getsize(path) // 2)
    before = live_ltxav_models()
    cpu = torch.device("cpu")
    errors = importlib.import_module(pack.__name__ + ".bridge.errors")
    with pytest.raises(pack.quant.errors.CheckpointError, match="changed on disk"):
        with errors.node_error("m.safetensors"):
            pack.bridge.host_model.build_model_patcher(plan, load_device=cpu, offload_device=cpu)
    assert live_ltxav_models() == before


def test_a_load_that_cannot_fit_the_ram_is_refused_before_it_starts(pack, monkeypatch, tmp_path):
    """bf16 on an fp8 file dequantizes every fp8 weight into private memory: with less RAM than
    that available (the RAM probe bridge.errors.ram_available, faked), the node refuses before
    building anything, saying what would fit; with enough, the same node loads."""
    import folder_paths

    path = tmp_path / "m.safetensors"
    write_checkpoint(path, _CFG, "ltx-core", seed=1)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(tmp_path)], {".safetensors"}))
    errors = importlib.import_module(pack.__name__ + ".bridge.errors")
    node = importlib.import_module(pack.__name__ + ".nodes.loader").LTXFP8CheckpointLoader
    hm = pack.bridge.host_model
    plan = hm.host_plan(pack.quant.plan.plan_checkpoint(str(path), "bf16"), torch.device("cpu")).plan
    need = errors.private_bytes_by_preset(plan, plan.compute_dtype)
    assert need["bf16"] > 1.5 * need["fp8-cast"]
    monkeypatch.setattr(errors, "ram_available", lambda: (need["bf16"] + need["fp8-cast"]) // 2)
    before = live_ltxav_models()
    with pytest.raises(MemoryError) as err:
        node.execute(path.name, policy="bf16")
    msg = str(err.value)
    assert isinstance(err.value, errors.LoadRefused)
    assert msg.startswith(f"{path.name}: not loaded, it would not fit in RAM: policy bf16 needs"), msg
    assert "Policy fp8-cast (or scaled-mm) would fit: try it" in msg, msg
    assert live_ltxav_models() == before
    out = node.execute(path.name, policy="fp8-cast")  # what the message advises: loads
    assert out.result[0] is not None
    monkeypatch.setattr(errors, "ram_available", lambda: need["fp8-cast"] // 2)
    with pytest.raises(MemoryError, match="No mode fits the memory available now"):
        node.execute(path.name, policy="bf16")


def test_the_load_shows_the_hosts_progress_bar_by_bytes(pack, tmp_path, monkeypatch, caplog):
    """While it reads, the load drives comfy.utils.ProgressBar (the host's hook sends it to the
    canvas) by file bytes, up to every byte it reads; the node's log line gives time and GB/s."""
    import logging

    import comfy.utils
    import folder_paths

    path = tmp_path / "m.safetensors"
    write_checkpoint(path, _CFG, "ltx-core", seed=1)
    calls = []
    monkeypatch.setattr(
        comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(tmp_path)], {".safetensors"}))
    node = importlib.import_module(pack.__name__ + ".nodes.loader").LTXFP8CheckpointLoader
    with caplog.at_level(logging.INFO, logger="ltx_fp8"):
        node.execute(path.name, policy="auto")
    stream = pack.quant.stream
    plan = pack.quant.plan.plan_checkpoint(str(path), "auto")
    total = sum(stream.item_bytes(it) for _, _, it in stream.load_items(plan))
    items = len(stream.load_items(plan))
    assert 2 <= len(calls) <= min(202, items // 4), (len(calls), items)  # every 1/200 of the bytes, not per tensor
    assert all(t == total for _, t in calls)
    values = [v for v, _ in calls]
    assert values == sorted(values) and values[-1] == total
    line = next(r.getMessage() for r in caplog.records if "GB/s" in r.getMessage())
    assert f"read {pack.quant.units.format_gb(total)} in " in line and "converted into private memory" in line
