"""Hostile files at the loader level: real fixture files (TINY config, 7 encodings and
layouts) mutated in 13 ways, each run through `plan_checkpoint` + the whole `iter_load`, and, when
the pinned host can be imported, through the bridge that builds the host's LTXAV model (the
node's path). Each case loads (the mutation kept the file valid; the loaded weights are finite)
or raises one `CheckpointError` naming the file and, for everything past the header text, a
tensor; never another exception, a hang, a read outside the file or another file opened. The
mutations and the oracle are in tests/support/loader_fuzz.py.

Three drivers share the mutators: hypothesis (per kind, bounded), a seeded random loop (fixed
count), and a coverage-guided atheris run with a fixed budget (a subprocess, core only; skipped
when atheris is not installed). Counts per kind are printed in the "figures" summary.
The header parser alone is fuzzed in test_safetensors_header.py.

Pickle formats are refused by name before a byte is read: files that would run code when
unpickled are handed to the loader and the node, and the code never runs.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import loader_fuzz as lf

from tools.host_inprocess import HOST_AVAILABLE, REPO

EXAMPLES_PER_KIND = int(os.environ.get("LOADER_FUZZ_EXAMPLES", "20"))
SEEDED_CASES = int(os.environ.get("LOADER_FUZZ_SEEDED", "200"))
ATHERIS_RUNS = int(os.environ.get("LOADER_FUZZ_ATHERIS_RUNS", "400"))

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module")
def pack_name():
    """The pack's package name when the host imports here (cases then also build the host model)."""
    if not HOST_AVAILABLE:
        return None
    from tools.host_inprocess import PACKAGE, import_pack

    import_pack()
    return PACKAGE


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return lf.make_bases(tmp_path_factory.mktemp("hostile-bases"))


@pytest.fixture(scope="module", autouse=True)
def report_counts(figures):
    yield
    for driver, counter in sorted(COUNTS.items()):
        per_kind = collections.defaultdict(dict)
        for (kind, verdict), n in counter.items():
            per_kind[kind][verdict] = n
        total = sum(counter.values())
        figures(
            "hostile files",
            f"{driver}: {total} cases; "
            + "; ".join(
                f"{k} {v.get('loaded', 0)} loaded / {v.get('refused', 0)} refused" for k, v in sorted(per_kind.items())
            ),
        )


def _run(driver: str, case: lf.Case, path: Path, policy: str, pack) -> None:
    verdict = lf.run_case(case, str(path), policy, pack)
    COUNTS[driver][(case.kind, verdict)] += 1


SETTINGS = settings(
    max_examples=EXAMPLES_PER_KIND,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("kind", lf.KINDS)
@SETTINGS
@given(rng=st.randoms(use_true_random=False))
def test_mutated_fixture_loads_or_refuses_cleanly(kind, rng, bases, pack_name, tmp_path_factory):
    r = lf.R(rng)
    case, policy = lf.generate(r, bases, kind)
    path = tmp_path_factory.getbasetemp() / f"hyp-{kind}.safetensors"
    _run("hypothesis", case, path, policy, pack_name)


def test_seeded_mutation_loop(bases, pack_name, tmp_path):
    """A fixed count of cases from a fixed seed, every kind in turn (reproducible)."""
    rng = random.Random(20260501)
    path = tmp_path / "seeded.safetensors"
    for i in range(SEEDED_CASES):
        case, policy = lf.generate(lf.R(rng), bases, lf.KINDS[i % len(lf.KINDS)])
        _run("seeded loop", case, path, policy, pack_name)


def test_atheris_run(tmp_path):
    """Coverage-guided (libFuzzer through atheris), fixed budget: ATHERIS_RUNS inputs from seed 1,
    quant modules instrumented. Any violation is an uncaught exception = a libFuzzer crash."""
    pytest.importorskip("atheris")
    counts = tmp_path / "counts.json"
    cmd = [
        sys.executable,
        str(Path(lf.__file__)),
        "--atheris",
        str(tmp_path),
        str(counts),
        f"-runs={ATHERIS_RUNS}",
        "-seed=1",
        "-max_len=128",
        "-len_control=0",
        "-timeout=60",
        "-max_total_time=240",
        "-rss_limit_mb=6000",
        f"-artifact_prefix={tmp_path}/",
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"atheris found a failing input (rc {proc.returncode}):\n{tail}"
    assert f"Done {ATHERIS_RUNS} runs" in tail, tail
    for kind, c in json.loads(counts.read_text()).items():
        for verdict, n in c.items():
            COUNTS["atheris (core only)"][(kind, verdict)] += n


# ------------------------------------------------------------------------------------------------
# Specific hostile files the random drivers may not hit


def test_every_mutation_kind_refuses_its_target(bases, tmp_path):
    """The strict kinds name exactly the tensor they broke, in every encoding that has it."""
    path = tmp_path / "strict.safetensors"
    rng = random.Random(7)
    for kind in ("nan_codes", "nonfinite_full", "scale_value", "scale_shape", "offsets", "truncate"):
        for base in bases.values():
            for _ in range(3):
                case = lf.MUTATORS[kind](lf.R(rng), base)
                verdict = lf.run_case(case, str(path), "auto")
                if case.expect == "error":
                    assert verdict == "refused"
                COUNTS["targeted"][(case.kind, verdict)] += 1


@pytest.mark.parametrize("value", ["1e38", "I32"])
def test_scale_that_cannot_be_a_scale_is_refused(bases, tmp_path, value):
    """A weight scale whose codes * scale overflow float32, or integers labelled as a scale."""
    from quant.errors import CheckpointError
    from quant.plan import plan_checkpoint

    base = bases["ltx-core"]
    key = next(k for k in base.entries if k.endswith("transformer_blocks.1.attn1.to_q.weight_scale"))
    e = base.entries[key]
    if value == "I32":
        blob = lf.relayout(base, {key: ("I32", e.shape, (3).to_bytes(4, "little"))})
    else:
        raw = bytearray(base.raw)
        raw[e.begin : e.end] = struct.pack("<f", 1e38)
        blob = bytes(raw)
    path = tmp_path / "scale.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError) as err:
        plan_checkpoint(str(path), "auto", device="cpu")
    assert err.value.tensor == key and str(path) in str(err.value)


def test_huge_block_index_is_refused_quickly(bases, tmp_path):
    """The block count comes from the keys: `transformer_blocks.999999999.*` must not make the
    loader (or the host) build a billion blocks."""
    from quant.errors import CheckpointError
    from quant.plan import plan_checkpoint

    base = bases["ltx-core"]
    old = next(k for k in base.entries if k.endswith("transformer_blocks.1.ff.net.2.bias"))
    new = old.replace("transformer_blocks.1.", "transformer_blocks.999999999.")
    pairs = [(new if k == old else k, v) for k, v in base.header.items()]
    path = tmp_path / "blocks.safetensors"
    path.write_bytes(lf.serialize(pairs, base.data))
    with pytest.raises(CheckpointError) as err:
        plan_checkpoint(str(path), "auto", device="cpu")
    assert err.value.tensor == new and "block 999999999" in str(err.value)


def test_config_num_layers_unlike_the_file_is_refused_before_the_host_builds(bases, tmp_path, pack_name):
    """The host builds as many blocks as config['transformer']['num_layers'] says, whatever the keys."""
    if pack_name is None:
        pytest.skip("host not importable")
    import importlib

    pack = importlib.import_module(pack_name)
    base = bases["ltx-core"]
    meta = dict(base.header["__metadata__"])
    cfg = json.loads(meta["config"])
    cfg["transformer"]["num_layers"] = 48  # the 22B model's count, in a 2-block file
    meta["config"] = json.dumps(cfg)
    path = tmp_path / "layers.safetensors"
    path.write_bytes(lf.serialize([(k, meta if k == "__metadata__" else v) for k, v in base.header.items()], base.data))
    plan = pack.quant.plan.plan_checkpoint(str(path), "auto", device="cpu")
    with pytest.raises(pack.quant.errors.CheckpointError, match="num_layers = 48 but the file holds 2"):
        pack.bridge.host_model.build_model_patcher(
            plan, load_device=torch.device("cpu"), offload_device=torch.device("cpu")
        )


# ------------------------------------------------------------------------------------------------
# Pickle formats


class _RunsCode:
    """Unpickling this creates the marker file: proof that a loader unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def _pickles(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps({"model.diffusion_model.patchify_proj.weight": _RunsCode(str(marker))})
    files = {}
    for suffix in (".ckpt", ".pt", ".pth", ".bin", ".CKPT"):
        p = tmp_path / f"evil{suffix}"
        if suffix == ".pt":
            torch.save({"x": _RunsCode(str(marker))}, p)  # torch.save's zip format
        else:
            p.write_bytes(payload)
        files[suffix] = p
    (tmp_path / "evil-pickle.safetensors").write_bytes(payload)
    files[".safetensors (a pickle inside)"] = tmp_path / "evil-pickle.safetensors"
    zipped = tmp_path / "evil-zip.safetensors"
    torch.save({"x": _RunsCode(str(marker))}, zipped)
    files[".safetensors (torch.save zip inside)"] = zipped
    return files


def test_pickle_files_are_refused_and_never_unpickled(tmp_path):
    from quant.errors import CheckpointError
    from quant.plan import plan_checkpoint

    files = _pickles(tmp_path)
    for label, path in files.items():
        with pytest.raises(CheckpointError) as err:
            plan_checkpoint(str(path), "auto", device="cpu")
        msg = str(err.value)
        assert err.value.file == str(path) and str(path) in msg, label
        if "safetensors" not in label:
            assert "never unpickled" in msg, msg
        COUNTS["pickle"][(label, "refused")] += 1
    assert not (tmp_path / "UNPICKLED").exists(), "a pickle was unpickled"
    # The payload does run code when unpickled (the test is not vacuous).
    pickle.loads(files[".ckpt"].read_bytes())
    assert (tmp_path / "UNPICKLED").read_text() == "unpickled"


def test_pickle_in_the_checkpoints_folder_is_not_listed_nor_loadable(host, tmp_path):
    """Through the node: a .ckpt / .pt / .bin in the model folders is not offered, a prompt naming
    one is refused at validation (400, nothing executes), and no file is unpickled."""
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps({"w": _RunsCode(str(marker))})
    names = []
    for folder, suffix in (
        ("checkpoints", ".ckpt"),
        ("checkpoints", ".pt"),
        ("diffusion_models", ".bin"),
        ("checkpoints", ".pth"),
    ):
        name = f"hostile_evil{suffix}"
        (host.model_dir(folder) / name).write_bytes(payload)
        names.append(name)
    info = host.object_info("LTXFP8CheckpointLoader")["LTXFP8CheckpointLoader"]
    spec = info["input"]["required"]["ckpt_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])
    for name in names:
        assert name not in options, f"{name} offered by the loader"
        status, body = host.post_prompt(
            {
                "1": {"class_type": "LTXFP8CheckpointLoader", "inputs": {"ckpt_name": name, "policy": "auto"}},
                "2": {"class_type": "LTXFP8VRAMReport", "inputs": {"model": ["1", 0]}},
            }
        )
        assert status == 400, body
        assert "ckpt_name" in json.dumps(body) and name in json.dumps(body), body
        COUNTS["pickle"][(f"node {Path(name).suffix}", "refused")] += 1
    assert not marker.exists()
    assert host.alive() and host.system_stats()
