"""VRAM Report: what each model costs, by mode, on the device. Always re-runs."""

from __future__ import annotations

import json

import comfy.model_management
from comfy_api.latest import io

from ..bridge.vram import device_stats, model_stats
from ..quant.units import format_gib

MODEL_INPUTS = ("model", "model_2", "model_3", "model_4")


def format_table(report: dict) -> str:
    lines = []
    for m in report["models"]:
        held = m["holdings"]
        parts = [f"{k} {format_gib(v['bytes'])} ({v['layers']} layers)" for k, v in sorted(held["modes"].items())]
        if held["other"]["tensors"]:
            parts.append(f"other {format_gib(held['other']['bytes'])} ({held['other']['tensors']} tensors)")
        modes = ", ".join(parts)
        lines.append(
            f"{m['input']}: {m['label']}\n  total {format_gib(held['total_bytes'])}: {modes}\n"
            f"  resident {format_gib(m['resident_bytes'])}, offloaded {format_gib(m['offloaded_bytes'])} "
            f"({m['load_device']}{', loaded' if m['loaded'] else ''})"
        )
        if m.get("budget"):
            lines.append("  " + budget_text(m["budget"], held["total_bytes"]))
    d = report["device"]
    line = f"device {d['device']}: total {format_gib(d['total_bytes'])}, free {format_gib(d['free_bytes'])}"
    if "cuda" in d:
        c = d["cuda"]
        line += (
            f"; allocated {format_gib(c['allocated_bytes'])}, reserved {format_gib(c['reserved_bytes'])}, "
            f"peak since last report {format_gib(c['peak_allocated_since_last_report_bytes'])}"
        )
    if "process_rss_bytes" in d:
        line += (
            f"; process RSS {format_gib(d['process_rss_bytes'])}, system RAM available "
            f"{format_gib(d['system_ram_available_bytes'])} of {format_gib(d['system_ram_total_bytes'])}"
        )
    lines.append(line)
    return "\n".join(lines)


def budget_text(budget: dict, actual: int) -> str:
    """The policy's weight budget beside what the model actually holds."""
    over = actual - budget["budget_bytes"]
    verdict = f"over by {format_gib(over)}" if over > 0 else f"{format_gib(-over)} to spare"
    moved = f", {budget['moved_layers']} layers moved to fp8" if budget.get("moved_layers") else ""
    ceiling = f"budget {budget['budget']} ({format_gib(budget['budget_bytes'])})"
    return f"{ceiling}: holds {format_gib(actual)}, {verdict}{moved}"


class LTXFP8VRAMReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8VRAMReport",
            display_name="VRAM Report",
            category="utils/ltx fp8",
            description=(
                "Weight bytes of each MODEL by mode and dtype, resident on the device vs offloaded, "
                "and the device's memory (CUDA allocated/reserved/peak since the last report; on CPU "
                "the process RSS and system RAM). Put it after a sampler through 'passthrough' to "
                "measure the run."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "A MODEL to report: its weight bytes by mode (fp8-cast / scaled-mm 1 byte per weight, "
                        "bf16 2 bytes) and how many are resident on the device vs offloaded. Reporting "
                        "allocates nothing; any device (CUDA adds allocated/reserved/peak)."
                    ),
                )
            ]
            + [
                io.Model.Input(
                    n,
                    optional=True,
                    tooltip=(
                        "Another MODEL to report, its own column on the canvas: weight bytes by mode, resident "
                        "vs offloaded. Reporting allocates nothing; any device."
                    ),
                )
                for n in MODEL_INPUTS[1:]
            ]
            + [
                io.AnyType.Input(
                    "passthrough",
                    optional=True,
                    tooltip="Anything (e.g. a sampler's LATENT): forces this report to run "
                    "after it, so the CUDA peak covers the run; passed on unchanged "
                    "(no copy, no memory; any device).",
                )
            ],
            outputs=[io.AnyType.Output(display_name="passthrough"), io.String.Output(display_name="json")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # never equal to itself: re-run every prompt

    @classmethod
    def execute(cls, model, model_2=None, model_3=None, model_4=None, passthrough=None) -> io.NodeOutput:
        models = []
        for name, m in zip(MODEL_INPUTS, (model, model_2, model_3, model_4), strict=False):
            if m is None:
                continue
            options = m.model_options.get("ltx_fp8", {})
            # budget: the weight budget the model was loaded / converted under (its badge figures), or None
            models.append(
                {"input": name, **model_stats(m, options.get("label", name)), "budget": options.get("budget")}
            )
        report = {"models": models, "device": device_stats(comfy.model_management.get_torch_device())}
        text = format_table(report)
        return io.NodeOutput(passthrough, json.dumps(report), ui={"text": [text], "ltx_fp8_vram": [json.dumps(report)]})
