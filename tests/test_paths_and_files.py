"""Paths and files: only files inside the host's model folders load by name; a load never writes
its file; a file changed on disk between loads is noticed and its new contents are served.

In-process: `nodes.paths.resolve_checkpoint` against the host's real `folder_paths` pointed at a
temporary models tree. Over HTTP (the session host): names leading out are refused at validation
(400) or as a node error with a one-line message, and the next prompt works.
The pack adds no HTTP route of its own (nodes only), so there is no route input to validate.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from support import reliability as rl

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON

# ------------------------------------------------------------------------------------------------
# resolve_checkpoint in-process


@pytest.fixture
def models(tmp_path, monkeypatch):
    """folder_paths with checkpoints / diffusion_models in a temp tree, and files around it."""
    if not HOST_AVAILABLE:
        pytest.skip(HOST_SKIP_REASON)
    from tools.host_inprocess import import_pack

    pack = import_pack()
    import importlib

    paths = importlib.import_module(pack.__name__ + ".nodes.paths")
    import folder_paths

    ck, dm, out = tmp_path / "models" / "checkpoints", tmp_path / "models" / "diffusion_models", tmp_path / "outside"
    for d in (ck, dm, out, ck / "sub", out / "dir"):
        d.mkdir(parents=True)
    for p in (
        ck / "real.safetensors",
        ck / "sub" / "real2.safetensors",
        dm / "dm.safetensors",
        out / "secret.safetensors",
        out / "dir" / "inner.safetensors",
        ck / "evil.ckpt",
    ):
        p.write_bytes(b"x")
    (ck / "link_out.safetensors").symlink_to(out / "secret.safetensors")
    (ck / "linkdir").symlink_to(out / "dir", target_is_directory=True)
    (ck / "dangling.safetensors").symlink_to(out / "nothing.safetensors")
    (ck / "alias.safetensors").symlink_to(ck / "sub" / "real2.safetensors")
    (ck / "cross.safetensors").symlink_to(dm / "dm.safetensors")
    exts = {".safetensors", ".ckpt"}
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "checkpoints", ([str(ck)], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models", ([str(dm)], exts))
    return paths, ck, dm, out


REFUSED = {
    "../outside/secret.safetensors": "relative name",
    "../../outside/secret.safetensors": "relative name",
    "sub/../../outside/secret.safetensors": "relative name",
    "..\\outside\\secret.safetensors": "relative name",
    "sub\\..\\..\\x.safetensors": "relative name",
    "": "relative name",
    "link_out.safetensors": "resolves outside",
    "linkdir/inner.safetensors": "resolves outside",
    "dangling.safetensors": "not found",
    "evil.ckpt": "never unpickled",
    "missing.safetensors": "not found",
}


def test_resolve_checkpoint_refuses_names_leading_out(models):
    paths, ck, dm, out = models

    cases = dict(REFUSED)
    cases[str(out / "secret.safetensors")] = "relative name"  # absolute
    cases[str(ck / "real.safetensors")] = "relative name"  # absolute, even inside
    for name, fragment in cases.items():
        with pytest.raises(ValueError) as err:  # CheckpointError is a ValueError
            paths.resolve_checkpoint(name)
        assert type(err.value).__name__ == "CheckpointError", (name, err.value)
        assert fragment in str(err.value), (name, str(err.value))
        assert "\n" not in str(err.value)
    for bad in (None, 5, b"real.safetensors"):
        with pytest.raises(ValueError):
            paths.resolve_checkpoint(bad)


def test_resolve_checkpoint_accepts_files_inside(models):
    paths, ck, dm, out = models
    assert paths.resolve_checkpoint("real.safetensors") == str(ck / "real.safetensors")
    assert paths.resolve_checkpoint("sub/real2.safetensors") == str(ck / "sub" / "real2.safetensors")
    assert paths.resolve_checkpoint("alias.safetensors") == str(ck / "alias.safetensors")  # link inside
    assert paths.resolve_checkpoint("dm.safetensors") == str(dm / "dm.safetensors")
    # A link from one model folder into the other stays inside the model folders.
    assert paths.resolve_checkpoint("cross.safetensors") == str(ck / "cross.safetensors")
    names = paths.checkpoint_names()
    assert "evil.ckpt" not in names and "real.safetensors" in names


# ------------------------------------------------------------------------------------------------
# Over HTTP


def test_names_leading_out_are_refused_and_the_server_keeps_serving(host, figures):
    good = "paths_good.safetensors"
    rl.write(host, good, seed=11)
    outside = host.base_dir / "outside_models"
    outside.mkdir(exist_ok=True)
    rl.write_checkpoint(outside / "secret.safetensors", rl.TINY, "ltx-core", seed=12)
    (outside / "dir").mkdir(exist_ok=True)
    rl.write_checkpoint(outside / "dir" / "inner.safetensors", rl.TINY, "ltx-core", seed=13)
    ck = host.model_dir("checkpoints")
    for link, target in (
        ("paths_link_out.safetensors", outside / "secret.safetensors"),
        ("paths_linkdir", outside / "dir"),
    ):
        if not (ck / link).is_symlink():
            (ck / link).symlink_to(target, target_is_directory=target.is_dir())

    refused_400, node_errors = 0, 0
    for name in (
        "../outside_models/secret.safetensors",
        "../../outside_models/secret.safetensors",
        str(outside / "secret.safetensors"),
        str(ck / good),
        "..\\secret.safetensors",
        "sub/../../../etc/passwd",
        "nope.safetensors",
    ):
        status, body = host.post_prompt(rl.load_prompt(name))
        assert status == 400, (name, body)
        assert "ckpt_name" in str(body), body
        refused_400 += 1
    for name in ("paths_link_out.safetensors", "paths_linkdir/inner.safetensors"):
        entry = host.run_prompt(rl.load_prompt(name), check=False)
        if entry["status"]["status_str"] == "refused":  # not offered at all: also fine
            refused_400 += 1
            continue
        err = rl.error(entry)
        assert entry["status"]["status_str"] == "error" and err, entry["status"]
        assert err["node_type"] == "LTXFP8CheckpointLoader"
        msg = err["exception_message"]
        assert "resolves outside" in msg and name in msg and "Traceback" not in msg, msg
        node_errors += 1
        # The server keeps serving: the next prompt loads a good file.
        ok = host.run_prompt(rl.load_prompt(good))
        assert rl.vram(ok)["models"][0]["total_bytes"] > 0
    assert host.alive()
    figures(
        "paths",
        f"{refused_400} names refused at validation (400), {node_errors} symlinks leading out "
        f"refused as node errors; the next prompt loaded each time",
    )


MODES = ("auto", "fp8-cast", "scaled-mm", "bf16", "fp8-cast; transformer_blocks.1.*=bf16")


def test_loads_never_write_the_file(host, figures):
    """sha256, size and mtime of the file are unchanged after loads in every mode, Apply Quant
    Policy switches, VRAM reports, and the in-process core loader."""
    names = {"paths_ro_fp8.safetensors": "ltx-core", "paths_ro_bf16.safetensors": "bf16"}
    before = {}
    for name, enc in names.items():
        rl.write(host, name, encoding=enc, seed=21)
        before[name] = rl.fingerprint(host.model_dir("checkpoints") / name)
    time.sleep(0.05)  # a write after this would show in mtime_ns
    runs = 0
    for name in names:
        for mode in MODES:
            preset, _, rules = mode.partition("; ")
            p = rl.load_prompt(name, preset, rules)
            p["4"] = rl.apply_policy(["1", 0], "bf16" if preset != "bf16" else "fp8-cast")
            p["5"] = rl.apply_policy(["4", 0], "scaled-mm")
            p["6"] = rl.vram_report(["1", 0], ["4", 0], ["5", 0])
            host.run_prompt(p)
            runs += 1
    from quant.stream import load

    for name in names:
        for mode in MODES:
            load(str(host.model_dir("checkpoints") / name), mode, device="cpu")
            runs += 1
    for name in names:
        assert rl.fingerprint(host.model_dir("checkpoints") / name) == before[name], f"{name} was written"
    figures(
        "files",
        f"{runs} loads ({len(MODES)} modes x {len(names)} files, over HTTP with Apply Quant Policy "
        f"switches, and in-process): sha256, size and mtime unchanged",
    )


def test_file_changed_on_disk_is_reloaded_not_served_from_cache(host, figures):
    """Rewritten under the same name with the same size (another seed: only mtime and the bytes
    differ), the file is loaded again and sampling gives exactly what a fresh load of the new
    contents gives; rewritten in another encoding, the VRAM report's bytes follow."""
    name, fresh = "paths_changing.safetensors", "paths_changing_fresh.safetensors"
    path = host.model_dir("checkpoints") / name
    rl.write(host, name, seed=31)
    rl.write(host, fresh, seed=32)  # the new contents, under a name never loaded before
    prompt = rl.sample_prompt(name, "auto", tag="changing")

    first = host.run_prompt(prompt)
    again = host.run_prompt(prompt)
    assert "1" in rl.cached_nodes(again), "an unchanged file is served from the cache"
    v1 = rl.latents(host, first)["video"]

    st1 = os.stat(path)
    rl.write(host, name, seed=32)
    st2 = os.stat(path)
    assert st2.st_size == st1.st_size
    if st2.st_mtime_ns == st1.st_mtime_ns:  # a coarse-mtime filesystem: make the change visible
        os.utime(path, ns=(st2.st_atime_ns, st1.st_mtime_ns + 1_000_000_000))
    changed = host.run_prompt(prompt)
    assert "1" not in rl.cached_nodes(changed), "a changed file must be loaded again"
    v2 = rl.latents(host, changed)["video"]
    ref = rl.latents(host, host.run_prompt(rl.sample_prompt(fresh, "auto", tag="changing_fresh")))["video"]
    diff_old = float((v2 - v1).norm() / v1.norm())
    assert diff_old > 1e-3, "the changed file sampled like the old one: stale model served"
    assert torch.equal(v2, ref), "the changed file must sample exactly like a fresh load of its new contents"

    # Replaced again, same size AND its mtime set back (cp -p, rsync -t): ctime / inode tell.
    host.run_prompt(prompt)  # (the prompts since evicted it from the host's cache)
    assert "1" in rl.cached_nodes(host.run_prompt(prompt)), "the cache holds the current file's model"
    st3 = os.stat(path)
    rl.write(host, name, seed=31)
    os.utime(path, ns=(st3.st_atime_ns, st3.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st3.st_size, st3.st_mtime_ns)
    restored = host.run_prompt(prompt)
    assert "1" not in rl.cached_nodes(restored), "a replaced file with its old mtime must be loaded again"
    assert torch.equal(rl.latents(host, restored)["video"], v1)

    # Another encoding under the same name (another size): the bytes by mode follow the new file.
    before = host.run_prompt(rl.load_prompt(name, "auto"))
    fp8_bytes = rl.vram(before)["models"][0]["weight_bytes_by_mode"]
    rl.write(host, name, encoding="bf16", seed=33)
    after = host.run_prompt(rl.load_prompt(name, "auto"))
    assert "1" not in rl.cached_nodes(after)
    bf16_bytes = rl.vram(after)["models"][0]["weight_bytes_by_mode"]
    assert "bf16" in bf16_bytes and not ({"fp8-cast", "scaled-mm"} & set(bf16_bytes)), bf16_bytes
    assert {"fp8-cast", "scaled-mm"} & set(fp8_bytes), fp8_bytes
    assert "encodings: full-precision" in rl.text(after)
    figures(
        "files",
        f"file rewritten on disk, same size, new seed: reloaded, latents moved by {diff_old:.3g} "
        f"(rel.) and equal a fresh load of the new file bit for bit; rewritten as bf16: "
        f"bytes by mode {fp8_bytes} -> {bf16_bytes}",
    )


def test_file_replaced_between_plan_and_load_is_refused(tmp_path):
    """Inside one load: a file rewritten after its header was read is refused, not read with a
    header that no longer describes it."""
    from quant.errors import CheckpointError
    from quant.plan import plan_checkpoint
    from quant.stream import iter_load

    path = tmp_path / "swap.safetensors"
    rl.write_checkpoint(path, rl.TINY, "ltx-core", seed=1)
    plan = plan_checkpoint(str(path), "auto", device="cpu")
    rl.write_checkpoint(path, rl.TINY, "comfy-legacy", seed=2)
    with pytest.raises(CheckpointError, match="changed on disk") as err:
        next(iter_load(plan))
    assert err.value.file == str(path)
