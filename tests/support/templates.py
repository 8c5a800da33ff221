"""The shipped templates (example_workflows/) on tiny stand-ins: what tests/test_templates.py and
tools/make_thumbnails.py share.

- `install_stand_ins(models_dir)`: tools/ltx2_media's tiny bundle, x2 upscaler and distilled LoRA
  under the official file names the templates use, in the host's model folders, plus a text
  encoder file of the official name that is never loaded (the prompt swaps its loader out): its
  presence puts the name in the loader's file list, as with a real install.
- `with_synthetic_text(api)`: a copy of an API-format template with the text encoder (the
  LTXAVTextEncoderLoader and its two CLIPTextEncode nodes) replaced by the test node pack's
  LTXFP8TestConditioning, wired to the loader's MODEL; every other node, value and id unchanged.
- `smaller(api, factor)`: the same prompt at 1/factor of the width and height (EmptyLTXVLatentVideo;
  frame count, frame rate and everything else unchanged): what CI runs (the shipped sizes take
  minutes per template on a CPU).
- `run_in_editor(ed, host, name)`: the template loaded in a browser page (tests/support/browser),
  run on the stand-ins for that page (queued over HTTP with the page's client id, text encoder
  swapped, 1/4 size): its pack nodes then show the run. The page's graph stays the template.
- `probe(path)`: the streams of a video file, read with PyAV (the host's own video library).
"""

from __future__ import annotations

import copy
import json
import os
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "example_workflows"
TEXT_ENCODER_NODES = ("LTXAVTextEncoderLoader", "CLIPTextEncode")
STAMP = ".ltxfp8-template-stand-ins.json"


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.json"))


def load_api(name: str) -> dict:
    return json.loads((TEMPLATES / "api" / f"{name}.json").read_text())


def load_ui(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


def official_files() -> dict[str, str]:
    """{official file name: model folder} of every file a template names."""
    from tools.workflow_ui import MODELS

    return {name: folder for name, (folder, _url) in MODELS.items()}


def install_stand_ins(models_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the stand-ins (idempotent: a stamp of their sizes). Returns {official name: path}."""
    from tools import ltx2_media

    models = Path(models_dir)
    paths = {name: models / folder / name for name, folder in official_files().items()}
    stamp = models / STAMP
    try:
        sizes = json.loads(stamp.read_text())
        if all(p.is_file() and p.stat().st_size == sizes[n] for n, p in paths.items()):
            return paths
    except (OSError, ValueError, KeyError):
        pass
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    writers = {
        "checkpoints": lambda p: ltx2_media.write_bundle(str(p)),
        "latent_upscale_models": lambda p: ltx2_media.write_upscaler(str(p)),
        "loras": lambda p: ltx2_media.write_distilled_lora(str(p)),
        # Never loaded (swapped out of the prompt); not a model, so loading it would fail loudly.
        "text_encoders": lambda p: p.write_bytes(b"not a model: the tests swap the text encoder out\n"),
    }
    for name, p in paths.items():
        writers[official_files()[name]](p)
    stamp.write_text(json.dumps({n: p.stat().st_size for n, p in paths.items()}))
    return paths


def with_synthetic_text(api: dict, seed: int = 0, tokens: int = 16) -> dict:
    """`api` with its text encoder replaced by LTXFP8TestConditioning (the loader's MODEL in,
    positive/negative out into the LTXVConditioning node). The original is not modified."""
    p = copy.deepcopy(api)
    (cond_id,) = [k for k, v in p.items() if v["class_type"] == "LTXVConditioning"]
    (loader_id,) = [k for k, v in p.items() if v["class_type"] == "LTXFP8CheckpointLoader"]
    removed = [k for k, v in p.items() if v["class_type"] in TEXT_ENCODER_NODES]
    for k in removed:
        del p[k]
    for v in p.values():
        for inp, val in v["inputs"].items():
            if isinstance(val, list) and len(val) == 2 and val[0] in removed and v is not p[cond_id]:
                raise AssertionError(f"{v['class_type']}.{inp} uses the text encoder too: swap it as well")
    new = str(max(int(k) for k in p) + 1)
    p[new] = {
        "class_type": "LTXFP8TestConditioning",
        "inputs": {"model": [loader_id, 0], "seed": seed, "tokens": tokens},
        "_meta": {"title": "Synthetic LTX Conditioning (test stand-in for the text encoder)"},
    }
    p[cond_id]["inputs"]["positive"] = [new, 0]
    p[cond_id]["inputs"]["negative"] = [new, 1]
    return p


def smaller(api: dict, factor: int) -> dict:
    p = copy.deepcopy(api)
    for v in p.values():
        if v["class_type"] == "EmptyLTXVLatentVideo":
            for k in ("width", "height"):
                if v["inputs"][k] % (32 * factor):
                    raise ValueError(f"{k} {v['inputs'][k]} / {factor} is not a multiple of 32")
                v["inputs"][k] //= factor
    return p


PACK_VIEW_NODES = ("LTXFP8CheckpointLoader", "LTXFP8ApplyQuantPolicy", "LTXFP8VRAMReport")


def run_in_editor(ed, host, name: str, factor: int = 4, timeout_s: float = 900) -> tuple[dict, dict, dict]:
    """(history entry, the page's views of the pack nodes, the UI workflow)."""
    wf = load_ui(name)
    ed.load_workflow(wf)
    client = ed.page.evaluate("() => window.comfyAPI.api.api.clientId")
    status, body = host.post_prompt(smaller(with_synthetic_text(load_api(name)), factor), client_id=client)
    if status != 200:
        raise RuntimeError(f"{name}: prompt refused ({status}): {json.dumps(body)[:3000]}")
    entry = host.wait_history(body["prompt_id"], timeout=timeout_s)
    if entry["status"].get("status_str") != "success":
        raise RuntimeError(
            f"{name}: run ended {entry['status'].get('status_str')}: {json.dumps(entry['status'])[:3000]}"
        )
    ids = [str(n["id"]) for n in wf["nodes"] if n["type"] in PACK_VIEW_NODES]
    views = ed.wait_for_views(ids, timeout_s=60)
    return entry, views, wf


def probe(path: str | os.PathLike) -> dict:
    """{"container", "video": {frames, fps, width, height, duration, codec}, "audio": {...} or None}:
    frames are counted by decoding every frame; durations in seconds."""
    import av

    with av.open(str(path)) as c:
        out = {"container": c.format.name, "duration": c.duration / 1e6 if c.duration else None, "audio": None}
        vs = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        rate = Fraction(vs.average_rate) if vs.average_rate else None
        out["video"] = {
            "frames": frames,
            "fps": float(rate) if rate else None,
            "width": vs.codec_context.width,
            "height": vs.codec_context.height,
            "codec": vs.codec_context.name,
            "duration": float(vs.duration * vs.time_base) if vs.duration else None,
        }
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(audio=0))
            out["audio"] = {
                "codec": a.codec_context.name,
                "sample_rate": a.codec_context.sample_rate,
                "channels": a.codec_context.channels,
                "samples": samples,
                "duration": samples / a.codec_context.sample_rate,
            }
    return out
