"""Soak: the real host with the pack handles a queue of 50 prompts in a row (loads in several
encodings and policies, Apply Quant Policy switches, VRAM Reports, broken files) without a leak,
and two graphs loading the same file in different modes in one prompt each get their own, correct
model.

Files are a widened TINY config (video width 256, ~9 MB in fp8, ~20 MB of weights loaded as bf16
in float32 on this CPU host), so that a model leaked per prompt would exceed the stated margin
several times over within the run. Memory is the host's RSS (psutil on its pid), taken after
prompt 5 and after prompt 50, both right after a refused broken file (so the host's output cache
holds the same thing at both points).
"""

from __future__ import annotations

import copy
import time

import torch
from support import reliability as rl

SOAK = rl.config(
    rl.TINY,
    num_attention_heads=8,
    attention_head_dim=32,
    audio_num_attention_heads=4,
    audio_attention_head_dim=16,
    cross_attention_dim=256,
    audio_cross_attention_dim=64,
    connector_num_attention_heads=8,
    connector_attention_head_dim=32,
    audio_connector_num_attention_heads=4,
    audio_connector_attention_head_dim=16,
    caption_channels=128,
)
PROMPTS = 50
RSS_MARGIN = 48 * 2**20
GOOD = {  # name -> (encoding, fixture options)
    "soak_ltx_core.safetensors": ("ltx-core", {}),
    "soak_native_header.safetensors": ("comfy-native-header", {"per_row": True}),
    "soak_legacy.safetensors": ("comfy-legacy", {}),
    "soak_transposed.safetensors": ("ltx-core", {"transposed": True, "prefix": "diffusion_model."}),
    "soak_bf16.safetensors": ("bf16", {}),
}
BAD = {
    "soak_bad_missing_scale.safetensors": ("ltx-core", {"breakage": "missing_scale"}),
    "soak_bad_truncated.safetensors": ("comfy-native-tensor", {"breakage": "truncate"}),
    "soak_bad_nan_codes.safetensors": (
        "ltx-core",
        {"breakage": "nan_codes", "break_layer": "transformer_blocks.1.video_to_audio_attn.to_v"},
    ),
    "soak_bad_unexpected.safetensors": ("bf16", {"breakage": "unexpected_key"}),
}
POLICIES = [
    ("auto", ""),
    ("fp8-cast", ""),
    ("scaled-mm", ""),
    ("bf16", ""),
    ("fp8-cast", "transformer_blocks.1.ff.* = bf16"),
    ("scaled-mm", "*.attn1.* = fp8-cast"),
]


def _write_files(host):
    out = {}
    for name, (enc, kw) in {**GOOD, **BAD}.items():
        out[name] = rl.write(host, name, cfg=SOAK, encoding=enc, seed=5, **kw)
    return out


def _prompt(i: int) -> tuple[str, dict]:
    """Prompt i of the queue: what it is, and the API prompt."""
    goods, bads = sorted(GOOD), sorted(BAD)
    if i % 5 == 4:  # every fifth: a broken file (prompts 5, 10, ..., 50)
        name = bads[(i // 5) % len(bads)]
        return f"bad:{name}", rl.load_prompt(name, "auto")
    name = goods[i % len(goods)]
    policy, rules = POLICIES[i % len(POLICIES)]
    if i % 3 == 0:  # Apply Quant Policy switches on the loaded model, all reported
        p = {
            "1": rl.loader(name, policy, rules),
            "4": rl.apply_policy(["1", 0], "bf16"),
            "5": rl.apply_policy(["4", 0], "scaled-mm"),
            "6": rl.apply_policy(["1", 0], "fp8-cast", "transformer_blocks.0.* = bf16"),
            "2": rl.vram_report(["1", 0], ["4", 0], ["5", 0], ["6", 0]),
            "3": rl.preview(["1", 1]),
        }
        return f"switch:{name}:{policy}", p
    return f"load:{name}:{policy}", rl.load_prompt(name, policy, rules)


def test_fifty_prompts_in_a_row_without_a_leak(host, figures):
    files = _write_files(host)
    kinds = {"ok": 0, "refused": 0}
    samples = []
    t0 = time.monotonic()
    for i in range(PROMPTS):
        what, prompt = _prompt(i)
        entry = host.run_prompt(prompt, check=False, timeout=120)
        status = entry["status"]["status_str"]
        if what.startswith("bad:"):
            err = rl.error(entry)
            name = what.split(":", 1)[1]
            assert status == "error" and err and err["node_type"] == "LTXFP8CheckpointLoader", (what, entry["status"])
            broken = files[name].broken
            assert name in err["exception_message"] and broken.tensor in err["exception_message"], err
            kinds["refused"] += 1
        else:
            assert status == "success", (what, rl.error(entry))
            report = rl.vram(entry)
            assert all(m["total_bytes"] > 0 for m in report["models"]), report
            kinds["ok"] += 1
        if i in (4, PROMPTS - 1):
            samples.append((i + 1, host.rss()))
    seconds = time.monotonic() - t0
    assert host.alive()
    (n0, rss0), (n1, rss1) = samples
    grew = rss1 - rss0
    figures(
        "soak",
        f"{PROMPTS} prompts in {seconds:.0f} s ({kinds['ok']} succeeded: loads in 5 encodings x "
        f"6 policies, {len(range(0, PROMPTS, 3))} with 3 Apply Quant Policy switches + VRAM Report; "
        f"{kinds['refused']} broken files refused); host RSS after prompt {n0} {rl.mib(rss0)}, after "
        f"prompt {n1} {rl.mib(rss1)} ({grew / 2**20:+.1f} MiB, margin {RSS_MARGIN / 2**20:.0f} MiB)",
    )
    assert grew <= RSS_MARGIN, f"host RSS grew {grew / 2**20:.1f} MiB from prompt {n0} to prompt {n1}"


def _with_prefix(prompt: dict, prefix: str) -> dict:
    """The same graph with every node id prefixed (to put two graphs in one prompt)."""
    out = {}
    for nid, node in prompt.items():
        node = copy.deepcopy(node)
        for k, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                node["inputs"][k] = [prefix + v[0], v[1]]
        out[prefix + nid] = node
    return out


def test_two_graphs_load_the_same_file_in_different_modes_in_one_prompt(host, figures):
    name = "soak_two_graphs.safetensors"
    rl.write(host, name, cfg=SOAK, encoding="ltx-core", seed=6)
    from quant.ltx2_shapes import expected_linear_shapes

    # An fp8 preset runs every transformer-block linear in fp8 (block 0, stored bf16, is quantized
    # at load); scaled-mm falls back to fp8-cast where a dim is not a multiple of 16 (to_gate_logits).
    blocks = {n: s for n, s in expected_linear_shapes(SOAK).items() if n.startswith("transformer_blocks.")}
    fallback = sum(1 for o, i in blocks.values() if o % 16 or i % 16)
    fp8_layers = len(blocks)
    graphs = {"s": "scaled-mm", "c": "fp8-cast", "b": "bf16"}
    prompt = {}
    for prefix, policy in graphs.items():
        g = rl.sample_prompt(name, policy, tag=f"two_graphs_{prefix}")
        prompt.update(_with_prefix(g, prefix))
    prompt["r"] = rl.vram_report(["s1", 0], ["c1", 0], ["b1", 0])
    entry = host.run_prompt(prompt)
    models = rl.vram(entry, "r")["models"]
    by_policy = dict(zip(graphs.values(), models, strict=False))
    s, c, b = by_policy["scaled-mm"], by_policy["fp8-cast"], by_policy["bf16"]
    # Each model's layers run as asked: the file's fp8 layers in the mode of its own loader.
    assert s["layers_by_mode"].get("scaled-mm") == fp8_layers - fallback > 0, s
    assert s["layers_by_mode"].get("fp8-cast", 0) == fallback, s
    assert c["layers_by_mode"].get("fp8-cast") == fp8_layers and "scaled-mm" not in c["layers_by_mode"], c
    assert set(b["layers_by_mode"]) == {"bf16"}, b
    # Bytes by mode: the same fp8 bytes under both fp8 modes; bf16 holds them at full precision.
    fp8_bytes = c["weight_bytes_by_mode"]["fp8-cast"]
    assert s["weight_bytes_by_mode"]["scaled-mm"] + s["weight_bytes_by_mode"].get("fp8-cast", 0) == fp8_bytes
    assert s["weight_bytes_by_mode"]["bf16"] == c["weight_bytes_by_mode"]["bf16"]
    assert b["weight_bytes_by_mode"]["bf16"] - c["weight_bytes_by_mode"]["bf16"] >= 1.9 * fp8_bytes, (b, c)
    assert s["label"] != c["label"] != b["label"]

    # Each graph sampled with its own model: exactly what the same graph gives alone.
    together = {}
    for prefix, policy in graphs.items():
        paths = rl.latents(
            host,
            {
                "outputs": {
                    k[len(prefix) :]: v
                    for k, v in entry["outputs"].items()
                    if k.startswith(prefix) and k[len(prefix) :] in ("41", "42")
                }
            },
        )
        together[policy] = paths["video"]
    for prefix, policy in graphs.items():
        alone = rl.sample_prompt(name, policy, tag=f"two_graphs_alone_{prefix}")
        alone["1"]["inputs"]["rules"] = "# alone"  # a fresh cache key: loaded and sampled again
        entry_alone = host.run_prompt(alone)
        assert "1" not in rl.cached_nodes(entry_alone) and "21" not in rl.cached_nodes(entry_alone)
        assert torch.equal(rl.latents(host, entry_alone)["video"], together[policy]), policy
    ref = together["bf16"]
    rel = {p: float((together[p] - ref).norm() / ref.norm()) for p in ("scaled-mm", "fp8-cast")}
    assert 0 < rel["fp8-cast"] < 0.1 and 0 < rel["scaled-mm"] < 0.15, rel
    figures(
        "soak",
        f"one prompt, one file loaded as scaled-mm, fp8-cast and bf16: {fp8_layers} block layers in "
        f"each model's own mode ({fallback} scaled-mm -> fp8-cast by kernel dims), fp8 bytes {fp8_bytes} "
        f"under both fp8 modes, bf16 model "
        f"+{(b['weight_bytes_by_mode']['bf16'] - c['weight_bytes_by_mode']['bf16'])} bytes; each graph's "
        f"latents equal the same graph run alone bit for bit; vs bf16: "
        + ", ".join(f"{p} {v:.2g}" for p, v in rel.items()),
    )
