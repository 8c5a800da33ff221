#!/usr/bin/env python
"""`make run`: the demo. Generates a tiny LTX-2.3-format fp8 bundle, its bf16 original and a LoRA
into the host's model folders, starts ComfyUI with this pack (and the test node pack that stands
in for the Gemma-3 text encoder and the audio VAE), queues the test graphs (tests/workflows/) through the HTTP
API, prints the VRAM reports and each mode's agreement with the bf16 run, and keeps serving so a
person can open the graph editor (Ctrl-C stops it).

    .venv/bin/python tools/demo.py            (make run; env PORT=8188, HOST_ARGS="--verbose DEBUG")
    DEMO_EXIT=1 .venv/bin/python tools/demo.py   exit after printing (make demo-check, tests)

Environment: PORT (default 8188), HOST_BASE (default .work/host, the base directory `make serve`
uses too), HOST_ARGS (more main.py arguments), DEMO_EXIT=1 (do not keep serving).

Files (in HOST_BASE/models): checkpoints/ltx23_demo_fp8.safetensors (ltx-core encoding, the TINY
config of tools/ltx2_fixture.py: 2 blocks, block 0 kept bf16 as the official files keep their
sensitive blocks, block 1 fp8 with per-tensor weight and input scales), checkpoints/
ltx23_demo_bf16.safetensors (the same weights before quantization) and loras/
ltx23_demo_lora.safetensors (rank 4, alpha 24, on attention and feed-forward linears of both
blocks: strong enough that its effect stands far above the fp8 error).
A stamp file records what was generated; a second run reuses the files.

The helpers here (assets, workflows, latents, agreement) are shared with tests/test_e2e_workflows.py.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import signal
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from support import hostlib  # noqa: E402  (tests/support/hostlib.py: standard library only)

# The test graphs on the demo files (they need tests/nodepack); the shipped templates in
# example_workflows/ need the official files.
WORKFLOWS = REPO / "tests" / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
NODEPACK = REPO / "tests" / "nodepack"
NODEPACK_NAME = "ltx-fp8-testnodes"

DEMO_FP8 = "ltx23_demo_fp8.safetensors"
DEMO_BF16 = "ltx23_demo_bf16.safetensors"
DEMO_LORA = "ltx23_demo_lora.safetensors"
DEMO_SEED = 0
LORA_SEED = 1
LORA_RANK = 4
LORA_ALPHA = 24.0  # delta = alpha / rank * B @ A: strong enough to stand well above the fp8 floor
LORA_SUFFIXES = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
    "audio_attn1.to_q",
    "audio_attn1.to_v",
    "audio_ff.net.0.proj",
    "audio_ff.net.2",
)
# Bump when what ensure_assets writes changes: the stamp then no longer matches and files are redone.
ASSET_VERSION = 1
STAMP = ".ltx23_demo.json"


def node_packs() -> list[tuple[str, Path]]:
    """Extra custom-node packs the example workflows need (linked into the host's custom_nodes)."""
    return [(NODEPACK_NAME, NODEPACK)]


# ----------------------------------------------------------------------------------------------
# Model files


def lora_layers(num_layers: int = 2) -> list[str]:
    return [f"transformer_blocks.{b}.{s}" for b in range(num_layers) for s in LORA_SUFFIXES]


def _asset_spec() -> dict:
    from tools.ltx2_fixture import TINY

    return {
        "version": ASSET_VERSION,
        "config": TINY,
        "seed": DEMO_SEED,
        "lora_seed": LORA_SEED,
        "lora_rank": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_layers": lora_layers(),
    }


def ensure_assets(models_dir: str | os.PathLike, force: bool = False, log=print) -> dict[str, Path]:
    """Write the demo bundle, its bf16 original and the LoRA under `models_dir` unless the stamp
    says they are already there (idempotent). Returns {"fp8"|"bf16"|"lora": path}."""
    from tools.ltx2_fixture import TINY, write_checkpoint, write_lora

    models = Path(models_dir)
    ck, lo = models / "checkpoints", models / "loras"
    ck.mkdir(parents=True, exist_ok=True)
    lo.mkdir(parents=True, exist_ok=True)
    paths = {"fp8": ck / DEMO_FP8, "bf16": ck / DEMO_BF16, "lora": lo / DEMO_LORA}
    stamp = models / STAMP
    spec = _asset_spec()
    if not force and stamp.is_file():
        try:
            old = json.loads(stamp.read_text())
            if old.get("spec") == json.loads(json.dumps(spec)) and all(
                p.is_file() and p.stat().st_size == old["sizes"][k] for k, p in paths.items()
            ):
                return paths
        except (ValueError, KeyError, TypeError):
            pass
    log(f"[demo] writing the demo model files into {models}")
    tmp = {k: p.with_name(p.name + ".tmp") for k, p in paths.items()}
    write_checkpoint(tmp["fp8"], TINY, "ltx-core", seed=DEMO_SEED)
    write_checkpoint(tmp["bf16"], TINY, "bf16", seed=DEMO_SEED)
    write_lora(tmp["lora"], TINY, lora_layers(), rank=LORA_RANK, seed=LORA_SEED, alpha=LORA_ALPHA)
    for k, p in paths.items():
        os.chmod(tmp[k], 0o644)
        os.replace(tmp[k], p)
    stamp.write_text(json.dumps({"spec": spec, "sizes": {k: p.stat().st_size for k, p in paths.items()}}, indent=1))
    return paths


def fp8_file_bytes(path: str | os.PathLike) -> dict[str, int]:
    """From the safetensors header alone: bytes of the F8_E4M3 weights, of their `weight_scale`s and
    of their `input_scale`s (what a model holding the file's fp8 layers as fp8 must hold)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)

    def size(key):
        a, b = header[key]["data_offsets"]
        return b - a

    out = {"fp8_weights": 0, "weight_scales": 0, "input_scales": 0, "layers": 0}
    for key, info in header.items():
        if info["dtype"] == "F8_E4M3" and key.endswith(".weight") and info["shape"]:
            base = key[: -len(".weight")]
            out["fp8_weights"] += size(key)
            out["layers"] += 1
            if base + ".weight_scale" in header:
                out["weight_scales"] += size(base + ".weight_scale")
            if base + ".input_scale" in header:
                out["input_scales"] += size(base + ".input_scale")
    out["total"] = out["fp8_weights"] + out["weight_scales"] + out["input_scales"]
    return out


# ----------------------------------------------------------------------------------------------
# Workflows


def load_api_workflow(name: str) -> dict:
    """An API-format test graph (tests/workflows/api/NAME.json), as a fresh dict."""
    return json.loads((API_WORKFLOWS / f"{name}.json").read_text())


def single_prompt(tag: str, **loader_inputs) -> dict:
    """The single example workflow without its VRAM report, saving its latents as
    ltx_fp8/<tag>_video|audio; `loader_inputs` update node 1 (the loader). Node 12 / 13 are the
    empty latents, 21 the sampler, 41 / 42 the SaveLatent nodes."""
    p = load_api_workflow("ltx_fp8_single")
    p["1"]["inputs"].update(loader_inputs)
    p["40"]["inputs"]["av_latent"] = ["21", 0]
    del p["30"]
    p["41"]["inputs"]["filename_prefix"] = f"ltx_fp8/{tag}_video"
    p["42"]["inputs"]["filename_prefix"] = f"ltx_fp8/{tag}_audio"
    return p


def ancestors(prompt: dict, node_ids) -> set[str]:
    seen, todo = set(), list(node_ids)
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        for v in prompt[nid]["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                todo.append(v[0])
    return seen


def prune(prompt: dict, outputs) -> dict:
    """Only the nodes the given output nodes need."""
    keep = ancestors(prompt, outputs)
    return {k: copy.deepcopy(v) for k, v in prompt.items() if k in keep}


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def saved_latent_paths(output_dir: str | os.PathLike, entry: dict) -> dict[str, Path]:
    """{SaveLatent node id: file} from a history entry."""
    out = {}
    for nid, o in (entry.get("outputs") or {}).items():
        for item in o.get("latents") or []:
            out[nid] = Path(output_dir) / item.get("subfolder", "") / item["filename"]
    return out


def read_latent(path: str | os.PathLike):
    from safetensors.torch import load_file

    return load_file(str(path))["latent_tensor"].float()


def vram_reports(entry: dict) -> dict[str, dict]:
    """{VRAM Report node id: its JSON report} from a history entry."""
    out = {}
    for nid, o in (entry.get("outputs") or {}).items():
        for item in o.get("ltx_fp8_vram") or []:
            out[nid] = json.loads(item)
    return out


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (Frobenius), in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def latents_by_tag(prompt: dict, output_dir, entry) -> dict[str, dict]:
    """{tag: {"video": tensor, "audio": tensor}} from SaveLatent prefixes `ltx_fp8/<tag>_video|audio`."""
    out: dict[str, dict] = {}
    for nid, path in saved_latent_paths(output_dir, entry).items():
        prefix = prompt[nid]["inputs"]["filename_prefix"].split("/")[-1]
        tag, _, kind = prefix.rpartition("_")
        out.setdefault(tag, {})[kind] = read_latent(path)
    return out


def av_rel_err(x: dict, ref: dict) -> dict[str, float]:
    return {k: rel_err(x[k], ref[k]) for k in ("video", "audio")}


def lora_reference_prompt(mix: dict) -> dict:
    """From the mix workflow: fp8-cast without the LoRA, and the bf16 model with the same LoRA, each
    sampled exactly as in the mix (the references for the agreement of fp8-cast and of the LoRA)."""
    p = copy.deepcopy(mix)
    lora = nodes_of(p, "LoraLoaderModelOnly")[0]
    p["5"] = copy.deepcopy(p[lora])
    p["5"]["inputs"]["model"] = ["4", 0]
    p["5"]["_meta"]["title"] = "the same LoRA on the bf16 model"
    for nid in nodes_of(p, "ModelSamplingLTXV"):
        p[nid]["inputs"]["latent"] = ["14", 0]  # only the size is read: no chaining needed here
    p["22"]["inputs"]["model"] = ["2", 0]  # fp8-cast, no LoRA
    p["24"]["inputs"]["model"] = ["5", 0]  # bf16 + LoRA
    saves = []
    for base, tag in (("43", "ref_fp8_cast"), ("46", "ref_bf16_lora")):
        p[base]["inputs"]["av_latent"] = ["23" if tag == "ref_fp8_cast" else "25", 0]
        for i, kind in ((1, "video"), (2, "audio")):
            nid = str(int(base) + i)
            p[nid]["inputs"]["filename_prefix"] = f"ltx_fp8/{tag}_{kind}"
            saves.append(nid)
    return prune(p, saves)


# ----------------------------------------------------------------------------------------------
# The demo run


def run_examples(host: hostlib.Host, log=print) -> dict:
    """Queue both example workflows and the LoRA references; returns latents, reports, timings."""
    out_dir = host.base_dir / "output"
    res = {"latents": {}, "reports": {}, "seconds": {}, "entries": {}}
    mix = load_api_workflow("ltx_fp8_mix")
    for name, prompt in (
        ("ltx_fp8_single", load_api_workflow("ltx_fp8_single")),
        ("ltx_fp8_mix", mix),
        ("lora_reference", lora_reference_prompt(mix)),
    ):
        t0 = time.monotonic()
        entry = host.run_prompt(prompt, timeout=600)
        res["seconds"][name] = time.monotonic() - t0
        res["entries"][name] = entry
        log(f"[demo] {name}: {entry['status']['status_str']} in {res['seconds'][name]:.1f} s")
        res["latents"].update(latents_by_tag(prompt, out_dir, entry))
        for nid, rep in vram_reports(entry).items():
            res["reports"][f"{name}#{nid}"] = rep
    return res


def agreement_rows(latents: dict, single_mode: str) -> list[tuple[str, str, dict]]:
    """(mode, reference, {video, audio} relative error) rows."""
    bf16, bf16_lora = latents["mix_bf16"], latents["ref_bf16_lora"]
    return [
        (f"auto ({single_mode})", "bf16", av_rel_err(latents["single_auto"], bf16)),
        ("fp8-cast", "bf16", av_rel_err(latents["ref_fp8_cast"], bf16)),
        ("scaled-mm", "bf16", av_rel_err(latents["mix_scaled_mm"], bf16)),
        ("fp8-cast + LoRA", "bf16 + LoRA", av_rel_err(latents["mix_fp8_cast_lora"], bf16_lora)),
        ("(bf16 + LoRA)", "bf16", av_rel_err(bf16_lora, bf16)),
    ]


def format_table(rows) -> str:
    lines = [
        "per-mode agreement of the sampled latents (relative error ||x - ref|| / ||ref||)",
        f"  {'mode':<22} {'reference':<13} {'video':>10} {'audio':>10}",
    ]
    for mode, ref, e in rows:
        lines.append(f"  {mode:<22} {ref:<13} {e['video']:>10.2e} {e['audio']:>10.2e}")
    lines.append("  (the last row is the LoRA's own effect, for scale)")
    return "\n".join(lines)


def single_mode(res: dict) -> str:
    rep = next(v for k, v in res["reports"].items() if k.startswith("ltx_fp8_single"))
    modes = [m for m in rep["models"][0]["layers_by_mode"] if m != "bf16"]
    return ",".join(sorted(modes)) or "bf16"


def print_results(res: dict) -> None:
    for key, rep in res["reports"].items():
        print(f"\n=== VRAM Report ({key}) ===")
        print(_report_text(rep))
    print()
    print(format_table(agreement_rows(res["latents"], single_mode(res))))
    sys.stdout.flush()


def _report_text(rep: dict) -> str:
    def mib(n):
        return f"{n / 2**20:.2f} MiB"

    lines = []
    for m in rep["models"]:
        modes = ", ".join(f"{k} {mib(v)}" for k, v in sorted(m["weight_bytes_by_mode"].items()))
        layers = ", ".join(f"{k} {v}" for k, v in sorted(m["layers_by_mode"].items()))
        lines.append(
            f"{m['input']}: {m['label']}\n  weights {mib(m['total_bytes'])}: {modes}\n"
            f"  layers: {layers}; resident {mib(m['resident_bytes'])}, offloaded {mib(m['offloaded_bytes'])}"
        )
    d = rep["device"]
    line = f"device {d['device']}: total {mib(d['total_bytes'])}, free {mib(d['free_bytes'])}"
    if "process_rss_bytes" in d:
        line += f", process RSS {mib(d['process_rss_bytes'])}"
    if "cuda" in d:
        c = d["cuda"]
        line += (
            f", allocated {mib(c['allocated_bytes'])}, reserved {mib(c['reserved_bytes'])}, "
            f"peak {mib(c['peak_allocated_since_last_report_bytes'])}"
        )
    lines.append(line)
    return "\n".join(lines)


def main() -> int:
    port = int(os.environ.get("PORT") or 8188)
    base = Path(os.environ.get("HOST_BASE") or REPO / ".work" / "host")
    if not base.is_absolute():
        base = REPO / base
    exit_after = os.environ.get("DEMO_EXIT", "") not in ("", "0", "false", "no")
    extra = shlex.split(os.environ.get("HOST_ARGS", ""))
    ensure_assets(base / "models")
    log_path = base / "demo-host.log"
    host = hostlib.Host(base_dir=base, port=port, extra_custom_nodes=node_packs(), extra_args=extra, log_path=log_path)
    print(f"[demo] starting ComfyUI with comfyui-ltx-fp8 on 127.0.0.1:{port} (log: {log_path})", flush=True)
    # Ctrl-C (even where a shell started us with SIGINT ignored) and SIGTERM stop the host too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            host.start()
        except hostlib.HostError as e:
            print(f"[demo] the host did not start: {e}", file=sys.stderr)
            return 1
        print(f"[demo] up in {host.startup_seconds:.1f} s; queueing the example workflows", flush=True)
        try:
            res = run_examples(host)
        except hostlib.HostError as e:
            print(f"[demo] a workflow failed: {e}", file=sys.stderr)
            return 1
        print_results(res)
        if exit_after:
            print("[demo] DEMO_EXIT set: stopping the host", flush=True)
            return 0
        print(
            f"\n[demo] ComfyUI is serving on {host.url} : open it in a browser and drop a graph of "
            f"tests/workflows/ on it (they run on the demo files); the templates under Workflow > Browse "
            f"Templates > comfyui-ltx-fp8 need the official LTX-2.3 files. Ctrl-C stops it.",
            flush=True,
        )
        while host.alive():
            time.sleep(0.5)
        print(f"[demo] the host exited\n{host.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[demo] stopping", flush=True)
        return 0
    finally:
        host.stop()


if __name__ == "__main__":
    sys.exit(main())
