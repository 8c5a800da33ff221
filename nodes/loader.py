"""Load LTX FP8 Checkpoint: any LTX-2 checkpoint encoding, loaded correctly, per a policy."""

from __future__ import annotations

import json
import logging
import os
import time

import comfy.model_management
from comfy_api.latest import io

from ..bridge.bundle_vae import load_bundle_vae
from ..bridge.errors import node_error
from ..bridge.host_model import build_model_patcher, host_plan
from ..quant.device import device_caps
from ..quant.plan import plan_checkpoint
from ..quant.report import budget_figures, build_report, format_text
from ..quant.stream import item_bytes, load_items, private_bytes, weights_in_ram
from ..quant.units import format_gb
from .inputs import policy_inputs, read_policy
from .paths import MODEL_FOLDERS, checkpoint_names, resolve_checkpoint

log = logging.getLogger("ltx_fp8")

CKPT_TOOLTIP = (
    f"An LTX-2 / LTX-2.3 .safetensors file from the {' or '.join(MODEL_FOLDERS)} folders: any fp8 encoding "
    "(ltx-core, ComfyUI native or legacy scaled fp8, per-row scales) or bf16/fp16/fp32. Streamed one tensor "
    "at a time (no second copy in RAM). Weights take 1 byte per parameter in fp8 modes and 2 in bf16: the "
    "22B LTX-2.3 transformer is about 22 GB as fp8, 44 GB as bf16. Any CUDA GPU, or the CPU."
)


def badge(report: dict) -> dict:
    """The canvas badge's figures (web/ltx_fp8.js): what the MODEL holds, as the report plans it."""
    return {
        "holdings": report["holdings"],
        "policy": report["policy"],
        "file": os.path.basename(report["file"]),
        "warnings": len(report["warnings"]),
        "budget": budget_figures(report.get("budget")),
    }


def load_line(plan, seconds: float) -> str:
    """Time, throughput and where the weights live, for the summary log line."""
    read = sum(item_bytes(item) for _, _, item in load_items(plan))
    private = private_bytes(plan, plan.compute_dtype)
    where = "in RAM (LTX_FP8_WEIGHTS=ram)" if weights_in_ram() else "the rest file-backed"
    return (
        f"read {format_gb(read)} in {seconds:.1f} s ({read / max(seconds, 1e-9) / 1e9:.2f} GB/s); "
        f"{format_gb(private)} converted into private memory, {where}"
    )


class LTXFP8CheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8CheckpointLoader",
            display_name="Load LTX FP8 Checkpoint",
            category="loaders/ltx fp8",
            description=(
                "Loads an LTX-2 / LTX-2.3 transformer from any checkpoint encoding (ltx-core fp8, "
                "ComfyUI native or legacy scaled fp8, per-row scales, [in, out] fp8, bf16) keeping "
                "every weight scale, streaming one tensor at a time. A bundle's video VAE (vae.*) is "
                "built by the host's own VAE class and output as VAE (only those tensors are read); "
                "the audio VAE and vocoder load with the host's LTXVAudioVAELoader on the same file."
            ),
            inputs=[io.Combo.Input("ckpt_name", options=checkpoint_names(), tooltip=CKPT_TOOLTIP)] + policy_inputs(),
            # New outputs go after the existing ones: saved workflows link outputs by slot index.
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.String.Output(display_name="report"),
                io.Vae.Output(
                    display_name="VAE",
                    tooltip=(
                        "The bundle's video VAE (vae.* tensors + the header's config), as "
                        "CheckpointLoaderSimple builds it. A file without a VAE gives the host's "
                        "placeholder, which fails only when a node uses it."
                    ),
                ),
            ],
            # The canvas badge (web/ltx_fp8.js) is this node's ui output: resent when the node is cached.
            has_intermediate_output=True,
        )

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, **kwargs):
        # A file replaced on disk must not be served from the cache: the host caches a node's
        # outputs by its inputs, and the file name alone does not change when the file does.
        try:
            st = os.stat(resolve_checkpoint(ckpt_name))
            # ctime and inode too: a same-size file copied in with its old mtime kept (cp -p,
            # rsync -t) still changes them.
            return (ckpt_name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, tuple(sorted(kwargs.items())))
        except Exception as e:  # resolution errors surface in execute, with the file named
            return (ckpt_name, repr(e))

    @classmethod
    def execute(
        cls, ckpt_name, policy="auto", rules="", activation_scale="static", backend="auto", weight_budget=""
    ) -> io.NodeOutput:
        with node_error(ckpt_name) as ctx:
            path = resolve_checkpoint(ckpt_name)
            pol = read_policy(policy, rules, weight_budget)
            device = comfy.model_management.get_torch_device()
            ctx["plan"] = plan_checkpoint(
                path, pol, device=device_caps(device), activation=activation_scale, backend=backend
            )
            prepared = host_plan(ctx["plan"], device)  # the plan in the host's weight dtype
            plan = ctx["plan"] = prepared.plan
            start = time.perf_counter()
            # Shows the host's progress bar by bytes read while it loads (tens of seconds at full size).
            patcher = build_model_patcher(prepared, load_device=device)
            seconds = time.perf_counter() - start
            report = build_report(plan)
            patcher.model_options["ltx_fp8"] = {
                "label": f"{ckpt_name} [{pol.to_string()}]",
                "budget": budget_figures(report["budget"]),  # the VRAM Report shows it beside the actual bytes
            }
            bundle_vae = load_bundle_vae(path)
        log.info("%s; %s", report["summary"], load_line(plan, seconds))
        (log.warning if bundle_vae.problem else log.info)("%s: %s", ckpt_name, bundle_vae.note)
        text = format_text(report) + "\n" + bundle_vae.note
        return io.NodeOutput(patcher, text, bundle_vae.vae, ui={"ltx_fp8": [json.dumps(badge(report))]})
