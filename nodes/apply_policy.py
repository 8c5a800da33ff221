"""Apply Quant Policy: change how each layer of a MODEL is stored and computed."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..bridge.apply_policy import apply_policy
from ..bridge.errors import node_error
from ..bridge.vram import model_holdings
from ..quant.backends import resolve_backend
from ..quant.device import device_caps
from ..quant.report import budget_figures, budget_line
from ..quant.units import format_gb
from .inputs import policy_inputs, read_policy


class LTXFP8ApplyQuantPolicy(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8ApplyQuantPolicy",
            display_name="Apply Quant Policy",
            category="advanced/model/ltx fp8",
            description=(
                "Returns a copy of the MODEL whose linear layers run in the chosen modes; the input "
                "MODEL is unchanged for other branches. Switching fp8 layers between fp8-cast and "
                "scaled-mm allocates no weight memory; fp8 -> bf16 and bf16 -> fp8 do."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip=(
                        "An LTX-2 MODEL from this pack's loader or the host's loaders. Not copied: the returned MODEL "
                        "shares its weights; only layers whose storage changes allocate (fp8 -> bf16: 2 bytes per "
                        "weight, bf16 -> fp8: 1 byte per weight); fp8-cast <-> scaled-mm allocates nothing. Any device "
                        "(CUDA GPU or CPU); see policy for what scaled-mm needs."
                    ),
                )
            ]
            + policy_inputs(),
            outputs=[io.Model.Output(display_name="MODEL"), io.String.Output(display_name="report")],
            # The canvas badge (web/ltx_fp8.js) is this node's ui output: resent when the node is cached.
            has_intermediate_output=True,
        )

    @classmethod
    def execute(
        cls, model, policy="auto", rules="", activation_scale="static", backend="auto", weight_budget=""
    ) -> io.NodeOutput:
        with node_error("Apply Quant Policy"):
            pol = read_policy(policy, rules, weight_budget)
            caps = device_caps(model.load_device)
            resolved = resolve_backend(backend) if caps.fp8_gemm else "torch"
            clone, summary = apply_policy(model, pol, caps, activation_scale, resolved)
            old = model.model_options.get("ltx_fp8", {}).get("label", "model")
            budget = budget_figures(summary["budget"])
            clone.model_options["ltx_fp8"] = {"label": f"{old} -> [{pol.to_string()}]", "budget": budget}
            # The badge (web/ltx_fp8.js): what the returned MODEL holds, beside what changed.
            badge = {**summary, "holdings": model_holdings(clone), "budget": budget}
        text = (
            f"policy {summary['policy']}: layers by mode {summary['layers_by_mode']}; changed "
            f"{summary['changed']}; newly allocated {format_gb(summary['allocated_bytes'])}"
        )
        if summary["budget"]:
            text += f"; {budget_line(summary['budget'])}; holds {format_gb(badge['holdings']['total_bytes'])}"
        return io.NodeOutput(clone, text, ui={"ltx_fp8": [json.dumps(badge)]})
