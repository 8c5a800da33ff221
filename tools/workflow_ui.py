#!/usr/bin/env python
"""Make the UI-format workflows (`DIR/NAME.json`, what the graph editor opens) from their API-format
sources (`DIR/api/NAME.json`, what the tests and the demo queue), so the two never drift. Two
folders: `example_workflows/` (the shipped templates, listed by the host's template browser) and
`tests/workflows/` (the test graphs on the demo bundle, which need tests/nodepack).

    .venv/bin/python tools/workflow_ui.py                  # every DIR/api/*.json of both folders
    .venv/bin/python tools/workflow_ui.py --url http://127.0.0.1:8188 ltx23_two_stage_mix
    .venv/bin/python tools/workflow_ui.py --check          # exit 1 if a UI file is out of date

The node definitions (which inputs are widgets, their order, control_after_generate, output names)
come from `/object_info` of a running host (`--url`); without one, a headless host with this pack
and the test node pack is started for the duration (tests/support/hostlib.py). Nodes are laid out left to
right in columns by their depth in the graph (longest path from a source), each column stacked in
the order of its inputs' rows. Edit the API file, then re-run this; both are committed.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

WORKFLOWS = REPO / "example_workflows"
API_DIR = WORKFLOWS / "api"
TEST_WORKFLOWS = REPO / "tests" / "workflows"
DIRS = (WORKFLOWS, TEST_WORKFLOWS)
PACK_NODES = {"LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"}

# Where each official file comes from (node properties "models": the editor offers the download
# when a file is missing, as ComfyUI's own templates do). Folder = the host's model folder.
HF = "https://huggingface.co"
MODELS = {
    "ltx-2.3-22b-dev-fp8.safetensors": (
        "checkpoints",
        f"{HF}/Lightricks/LTX-2.3-fp8/resolve/main/ltx-2.3-22b-dev-fp8.safetensors",
    ),
    "gemma_3_12B_it_fp4_mixed.safetensors": (
        "text_encoders",
        f"{HF}/Comfy-Org/ltx-2/resolve/main/split_files/text_encoders/gemma_3_12B_it_fp4_mixed.safetensors",
    ),
    "ltx_2.3_22b_distilled_1.1_lora_dynamic_fro09_avg_rank_111_bf16.safetensors": (
        "loras",
        f"{HF}/Comfy-Org/ltx-2.3/resolve/main/split_files/loras/"
        "ltx_2.3_22b_distilled_1.1_lora_dynamic_fro09_avg_rank_111_bf16.safetensors",
    ),
    "ltx-2.3-spatial-upscaler-x2-1.1.safetensors": (
        "latent_upscale_models",
        f"{HF}/Lightricks/LTX-2.3/resolve/main/ltx-2.3-spatial-upscaler-x2-1.1.safetensors",
    ),
}


def _files_note(names) -> str:
    lines = ["Files (into ComfyUI/models/<folder>/; the names in the nodes are the official ones):"]
    for name in names:
        folder, url = MODELS[name]
        lines.append(f"- {folder}/{name}\n  {url}")
    return "\n".join(lines)


_BUNDLE_NOTE = (
    "The bundle (29.1 GB: transformer + video VAE + audio VAE + vocoder) is read once for the model: "
    "Load LTX FP8 Checkpoint streams the transformer and gives the bundle's video VAE as its VAE output "
    "(only the vae.* tensors); Load LTXV Audio VAE keeps only the audio_vae.* and vocoder.* tensors; "
    "the text encoder loader takes the bundle's text projection."
)
_LORA_NOTE = (
    "Any LTX-2.3 distilled LoRA works in the LoRA node, e.g. Lightricks' own "
    "ltx-2.3-22b-distilled-lora-384-1.1.safetensors (Lightricks/LTX-2.3 on Hugging Face)."
)

# Notes shown in the graph (UI only: an API prompt has no place for them).
NOTES = {
    "ltx_fp8_single": (
        "LTX FP8: one model\n\n"
        "Load LTX FP8 Checkpoint keeps every weight scale of the file; policy 'auto' runs its fp8 "
        "layers as scaled-mm on GPUs with fp8 tensor cores (Ada, Hopper, Blackwell) and as fp8-cast "
        "elsewhere. VRAM Report sits after the sampler (through 'passthrough') so it sees the run.\n\n"
        "The demo files (ltx23_demo_*.safetensors) are made by `make run`. With a real LTX-2.3 "
        "checkpoint, replace 'Synthetic LTX Conditioning' by the LTXAV text encoder + CLIPTextEncode, "
        "the audio latent by LTXVEmptyLatentAudio, and decode with the video / audio VAEs."
    ),
    "ltx_fp8_mix": (
        "LTX FP8: three modes side by side\n\n"
        "The same fp8 bundle as scaled-mm and as fp8-cast with a LoRA (merged at full precision and "
        "re-quantized with a fresh scale), and the bf16 original, sampled with the same seed. Each "
        "ModelSamplingLTXV takes the previous sampler's latent: it reads only its size (the shift), "
        "so the three samplers run in turn and the one VRAM Report after the last sees all three.\n\n"
        "`make run` prints each mode's agreement with the bf16 run."
    ),
    "ltx23_t2v_audio": (
        "LTX-2.3 text to video with audio, through LTX FP8\n\n"
        "The chain of ComfyUI's own LTX-2.3 text-to-video template (Gemma 3 12B prompt encoding, "
        "SamplerCustomAdvanced with the distilled LoRA's sigma schedule at CFG 1, tiled video decode, "
        "audio decode, an mp4 with sound) with the model from Load LTX FP8 Checkpoint, policy 'auto': "
        "every fp8 scale kept; scaled-mm on GPUs with fp8 tensor cores (Ada, Hopper, Blackwell), "
        "fp8-cast elsewhere. Its third output is the bundle's video VAE.\n\n"
        + _BUNDLE_NOTE
        + "\n\n"
        + _files_note(list(MODELS)[:3])
        + "\n\n"
        + _LORA_NOTE
    ),
    "ltx23_two_stage_mix": (
        "LTX-2.3 two stages, two modes, one bundle load\n\n"
        "Stage 1: the dev model in scaled-mm (fp8 x fp8 matrix multiplies: Ada, Hopper, Blackwell; "
        "fp8-cast elsewhere), CFG 4, 20 steps at half size. The x2 spatial upscaler doubles the "
        "video latent. Stage 2: Apply Quant Policy turns the same weights into fp8-cast (no new "
        "weight memory), the distilled LoRA is merged at full precision and re-quantized, and three "
        "distilled steps refine at full size. VRAM Report shows what each stage's model holds.\n\n"
        + _BUNDLE_NOTE
        + "\n\n"
        + _files_note(list(MODELS))
        + "\n\n"
        + _LORA_NOTE
    ),
}


# ----------------------------------------------------------------------------------------------
# Node definitions


def _inputs(defn: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the definition's order (required, then optional; no hidden)."""
    order = defn.get("input_order") or {k: list(v) for k, v in defn["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = defn["input"].get(section, {}).get(name)
            if spec is not None:
                out.append((name, spec, section == "optional"))
    return out


def _is_widget(spec: list) -> bool:
    typ, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    # A V3 MultiType input ("FLOAT,INT") is shown as the widget of its first type ("widgetType").
    return isinstance(typ, list) or typ in WIDGET_TYPES or opts.get("widgetType") in WIDGET_TYPES


def _type_name(spec: list) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _cnr_id(defn: dict, class_type: str) -> str | None:
    if class_type in PACK_NODES:
        return "comfyui-ltx-fp8"
    mod = defn.get("python_module", "")
    if mod == "nodes" or mod.startswith("comfy_extras") or mod.startswith("comfy_api_nodes"):
        return "comfy-core"
    return None


# ----------------------------------------------------------------------------------------------
# Layout

# Links that only order execution (ModelSamplingLTXV reads just the size of its latent; the mix
# chains its samplers through it): ignored by the layout, so parallel branches share columns.
ORDERING_INPUTS = {("ModelSamplingLTXV", "latent")}


def _layout_ups(api: dict, nid: str) -> list[str]:
    ct = api[nid]["class_type"]
    return [v[0] for k, v in api[nid]["inputs"].items() if _is_link(v) and (ct, k) not in ORDERING_INPUTS]


def _depths(api: dict) -> dict[str, int]:
    memo: dict[str, int] = {}

    def depth(nid: str) -> int:
        if nid not in memo:
            ups = _layout_ups(api, nid)
            memo[nid] = 1 + max((depth(u) for u in ups), default=-1)
        return memo[nid]

    for nid in api:
        depth(nid)
    # A source (a loader, a noise or sampler choice, an empty latent) goes in the column just before
    # its first consumer rather than all in the first one: shorter links, a compact first column.
    consumers: dict[str, list[str]] = {}
    for nid in api:
        for u in _layout_ups(api, nid):
            consumers.setdefault(u, []).append(nid)
    for nid in sorted(api, key=int):
        if not _layout_ups(api, nid) and consumers.get(nid):
            memo[nid] = max(0, min(memo[c] for c in consumers[nid]) - 1)
    return memo


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _size(defn: dict, api_node: dict) -> list[int]:
    ins = _inputs(defn)
    sockets = sum(1 for _, s, _ in ins if not _is_widget(s))
    widgets = [(n, s) for n, s, _ in ins if _is_widget(s)]
    h = 30 + 22 * max(sockets, len(defn.get("output", []))) + 8
    for _, s in widgets:
        opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
        h += 84 if opts.get("multiline") else 26
        if opts.get("control_after_generate"):
            h += 26
    longest = max([len(str(v)) for v in api_node["inputs"].values() if not _is_link(v)] + [0])
    title = (api_node.get("_meta") or {}).get("title") or defn.get("display_name", "")
    w = max(300 if longest < 24 else 360, int(7.5 * len(title)) + 60)
    return [w, max(h, 60)]


# ----------------------------------------------------------------------------------------------
# API -> UI


def api_to_ui(api: dict, object_info: dict, name: str) -> dict:
    ids = sorted(api, key=int)
    depth = _depths(api)
    # Execution order for "order": by depth, then id (a topological order).
    topo = sorted(ids, key=lambda n: (depth[n], int(n)))

    links, link_id = [], 0
    out_links: dict[tuple[str, int], list[int]] = {}
    in_link: dict[tuple[str, str], int] = {}
    for nid in ids:
        defn = object_info[api[nid]["class_type"]]
        socket_names = [n for n, s, _ in _inputs(defn) if not _is_widget(s)]
        for inp in socket_names:
            v = api[nid]["inputs"].get(inp)
            if v is None:
                continue
            if not _is_link(v):
                raise ValueError(f"{name}: node {nid} input {inp} must be a link")
            src, slot = v
            link_id += 1
            src_type = object_info[api[src]["class_type"]]["output"][slot]
            links.append([link_id, int(src), slot, int(nid), socket_names.index(inp), src_type])
            out_links.setdefault((src, slot), []).append(link_id)
            in_link[(nid, inp)] = link_id

    sizes = {nid: _size(object_info[api[nid]["class_type"]], api[nid]) for nid in ids}
    columns: dict[int, list[str]] = {}
    for nid in ids:
        columns.setdefault(depth[nid], []).append(nid)
    pos: dict[str, list[int]] = {}
    x = 40
    for col in sorted(columns):
        members = columns[col]

        def rank(nid):
            ups = [pos[u][1] for u in _layout_ups(api, nid) if u in pos]
            return (sum(ups) / len(ups) if ups else -1, int(nid))

        members.sort(key=rank)
        y = 60
        for nid in members:
            pos[nid] = [x, y]
            y += sizes[nid][1] + 50
        x += max(sizes[n][0] for n in members) + 60

    nodes = []
    for nid in ids:
        node = api[nid]
        ct = node["class_type"]
        defn = object_info[ct]
        ins = _inputs(defn)
        inputs, widgets_values = [], []
        for inp, spec, optional in ins:
            if not _is_widget(spec):
                inputs.append(
                    {"localized_name": inp, "name": inp, "type": _type_name(spec), "link": in_link.get((nid, inp))}
                    | ({"shape": 7} if optional else {})
                )
        for inp, spec, _optional in ins:
            if _is_widget(spec):
                inputs.append(
                    {
                        "localized_name": inp,
                        "name": inp,
                        "type": _type_name(spec),
                        "widget": {"name": inp},
                        "link": None,
                    }
                )
                opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if inp in node["inputs"]:
                    value = node["inputs"][inp]
                else:
                    value = opts.get("default", spec[0][0] if isinstance(spec[0], list) and spec[0] else "")
                widgets_values.append(value)
                if opts.get("control_after_generate"):
                    widgets_values.append("fixed")
        unknown = set(node["inputs"]) - {n for n, _, _ in ins}
        if unknown:
            raise ValueError(f"{name}: node {nid} ({ct}) has inputs its definition lacks: {sorted(unknown)}")
        outputs = []
        for slot, (otype, oname) in enumerate(zip(defn["output"], defn["output_name"], strict=False)):
            outputs.append(
                {
                    "localized_name": oname,
                    "name": oname,
                    "type": otype,
                    "slot_index": slot,
                    "links": out_links.get((nid, slot), []),
                }
            )
        props = {"Node name for S&R": ct}
        cnr = _cnr_id(defn, ct)
        if cnr:
            props["cnr_id"] = cnr
        models = [
            {"name": v, "url": MODELS[v][1], "directory": MODELS[v][0]}
            for v in node["inputs"].values()
            if isinstance(v, str) and v in MODELS
        ]
        if models:
            props["models"] = models
        entry = {
            "id": int(nid),
            "type": ct,
            "pos": pos[nid],
            "size": sizes[nid],
            "flags": {},
            "order": topo.index(nid),
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": props,
            "widgets_values": widgets_values,
        }
        title = (node.get("_meta") or {}).get("title")
        if title:
            entry["title"] = title
        if ct in PACK_NODES:
            entry["color"], entry["bgcolor"] = "#2a363b", "#3f5159"
        nodes.append(entry)

    last = max(int(n) for n in ids)
    if name in NOTES:
        last += 1
        nodes.append(
            {
                "id": last,
                "type": "Note",
                "pos": [40, -260 if len(NOTES[name]) < 900 else -560],
                "size": [640, 220 if len(NOTES[name]) < 900 else 520],
                "flags": {},
                "order": len(ids),
                "mode": 0,
                "inputs": [],
                "outputs": [],
                "properties": {"text": ""},
                "widgets_values": [NOTES[name]],
                "color": "#432",
                "bgcolor": "#653",
            }
        )
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-ltx-fp8/example_workflows/{name}")),
        "revision": 0,
        "last_node_id": last,
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [0, 300]}},
        "version": 0.4,
    }


def dumps(ui: dict) -> str:
    return json.dumps(ui, indent=2, ensure_ascii=False) + "\n"


def api_names(folder: Path = WORKFLOWS) -> list[str]:
    return sorted(p.stem for p in (folder / "api").glob("*.json"))


def folder_of(name: str) -> Path:
    """The folder (example_workflows/ or tests/workflows/) whose api/ holds `name`."""
    for d in DIRS:
        if (d / "api" / f"{name}.json").is_file():
            return d
    raise FileNotFoundError(f"no api/{name}.json in {', '.join(str(d.relative_to(REPO)) for d in DIRS)}")


def render(names, object_info) -> dict[str, str]:
    """{name: UI JSON text} of API workflows in either folder."""
    out = {}
    for n in names:
        api = json.loads((folder_of(n) / "api" / f"{n}.json").read_text())
        out[n] = dumps(api_to_ui(api, object_info, n))
    return out


def fetch_object_info(url: str | None) -> dict:
    import urllib.request

    if url:
        with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    from support import hostlib

    from tools.demo import node_packs

    with hostlib.Host(extra_custom_nodes=node_packs()) as host:
        return host.object_info()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="workflow names (default: every api/*.json of both folders)")
    ap.add_argument("--url", help="a running host with this pack and tests/nodepack (default: start one)")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a UI file differs")
    a = ap.parse_args(argv)
    names = a.names or [n for d in DIRS for n in api_names(d)]
    texts = render(names, fetch_object_info(a.url))
    stale = []
    for n, text in texts.items():
        path = folder_of(n) / f"{n}.json"
        current = path.read_text() if path.is_file() else None
        if current == text:
            print(f"{path.relative_to(REPO)}: up to date")
        elif a.check:
            stale.append(n)
            print(f"{path.relative_to(REPO)}: out of date")
        else:
            path.write_text(text)
            print(f"{path.relative_to(REPO)}: written")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
