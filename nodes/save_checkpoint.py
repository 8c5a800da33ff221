"""Save LTX FP8 Checkpoint: write a MODEL (a LoRA baked in, a policy applied) as an fp8 bundle."""

from __future__ import annotations

import json
import logging
import os

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..bridge.errors import node_error
from ..bridge.save_model import ENCODINGS, save_model
from ..quant.units import format_gb
from .paths import MODEL_FOLDERS, checkpoint_names, resolve_checkpoint

log = logging.getLogger("ltx_fp8")
# Public: saved in workflows. The default first: the one every loader reads (quant.convert.ENCODINGS).
ENCODING_OPTIONS = sorted(ENCODINGS, key=lambda e: e != "comfy-native")

MODEL_TOOLTIP = (
    "The LTX-2 MODEL to write: from Load LTX FP8 Checkpoint, Apply Quant Policy, or the host's LoRA loaders on "
    "them. fp8 layers are written as the codes with the scale in force (a LoRA merged in: its merged codes with "
    "their fresh scale, 1 byte per weight); layers in bf16 mode at full precision (2 bytes per weight). The model "
    "is loaded as for sampling first (its LoRA patches merged; GPU or CPU memory of its size)."
)
SOURCE_TOOLTIP = (
    f"The bundle the MODEL was loaded from (the {' or '.join(MODEL_FOLDERS)} folders): its VAE, audio VAE, "
    "vocoder and text projection are copied into the new file byte for byte, and its header config kept. Read "
    "one tensor at a time (no second copy in memory); any device, CPU included."
)
PREFIX_TOOLTIP = (
    "Where the file goes, inside ComfyUI's output folder: 'checkpoints/ltx_fp8' writes "
    "output/checkpoints/ltx_fp8_00001_.safetensors (a counter, never overwriting). The file is written to a "
    "temporary and renamed when complete: an error, a Cancel or a full disk leaves nothing behind. Disk: about "
    "the model's size (22B LTX-2.3 as fp8: ~27 GB with its VAEs); memory: one tensor at a time, CPU or GPU."
)
ENCODING_TOOLTIP = (
    "comfy-native: loads correctly in ComfyUI's own loaders (header _quantization_metadata), in this pack and in "
    "LTX-2's pipelines. ltx-core: LTX-2's own conventions, no quantization metadata (ComfyUI's own loader then "
    "drops the scales; this pack reads it). Same tensors, same bytes and memory either way; any GPU or CPU. "
    "Per-row scales need ltx-core."
)


def output_path(filename_prefix: str) -> str:
    """`<output>/<subfolder>/<name>_<counter>_.safetensors`, confined to the host's output folder by
    its own `folder_paths.get_save_image_path` (as its CheckpointSave does: ComfyUI 0.30
    comfy_extras/nodes_model_merging.py save_checkpoint)."""
    output_dir = folder_paths.get_output_directory()
    folder, filename, counter, _subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{filename}_{counter:05}_.safetensors")


class LTXFP8SaveCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8SaveCheckpoint",
            display_name="Save LTX FP8 Checkpoint",
            category="advanced/model/ltx fp8",
            description=(
                "Writes the MODEL as an fp8 LTX-2 bundle that ComfyUI's own loader, LTX-2's pipelines and this pack "
                "read correctly: every fp8 layer with its scale (a LoRA baked in with a fresh scale), bf16-mode "
                "layers at full precision, the source bundle's VAEs and config copied as they are."
            ),
            inputs=[
                io.Model.Input("model", tooltip=MODEL_TOOLTIP),
                io.Combo.Input("ckpt_name", options=checkpoint_names(), tooltip=SOURCE_TOOLTIP),
                io.String.Input("filename_prefix", default="checkpoints/ltx_fp8", tooltip=PREFIX_TOOLTIP),
                io.Combo.Input("encoding", options=ENCODING_OPTIONS, default="comfy-native", tooltip=ENCODING_TOOLTIP),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, ckpt_name, filename_prefix="checkpoints/ltx_fp8", encoding="comfy-native") -> io.NodeOutput:
        with node_error("Save LTX FP8 Checkpoint"):
            src = resolve_checkpoint(ckpt_name)
            out = output_path(filename_prefix)
            bar = comfy.utils.ProgressBar(1000)

            def progress(done: int, total: int, _key: str) -> None:
                # A user's Cancel stops the write here, between tensors (the output is then not created).
                comfy.model_management.throw_exception_if_processing_interrupted()
                bar.update_absolute(int(1000 * done / total) if total else 1000, 1000)

            summary = save_model(model, src, out, encoding, progress=progress)
        rel = os.path.relpath(out, folder_paths.get_output_directory())
        layers = summary["layers"]
        text = (
            f"wrote {rel} ({encoding}): {format_gb(summary['bytes'])}, {layers['fp8']} fp8 layers, "
            f"{layers['full_precision']} full precision, {summary['copied_keys']} keys copied from {ckpt_name}"
            + (
                f"; {summary['lora_patched_weights']} LoRA-patched weights baked in"
                if summary["lora_patched_weights"]
                else ""
            )
        )
        log.info("ltx-fp8: %s", text)
        # Paths relative to the output folder: the browser is not told where the server's files live.
        saved = {k: v for k, v in summary.items() if k not in ("out", "source")} | {"file": rel, "source": ckpt_name}
        return io.NodeOutput(ui={"text": [text], "ltx_fp8_saved": [json.dumps(saved)]})
