"""The bundle's video VAE, built by the host the way its own checkpoint loader builds it.

An LTX-2 bundle carries its video VAE under `vae.` and the VAE's config in the header
(`__metadata__["config"]`, sub-dict `"vae"`). ComfyUI 0.30's CheckpointLoaderSimple
(comfy/sd.py `load_state_dict_guess_config`) strips the LTXAV `vae_key_prefix` ("vae.") from the
state dict and calls `comfy.sd.VAE(sd=vae_sd, metadata=metadata)`, which recognises the Lightricks
video VAE by `decoder.up_blocks.0.res_blocks.0.conv1.conv.weight` and sizes it from
`config["vae"]`. We do the same with the host's own class, reading only the `vae.` tensors (one
at a time, through the pack's strict safetensors reader): the transformer is never read twice, and
nothing of the file is mapped.

The audio VAE and the vocoder (`audio_vae.`, `vocoder.`) stay with the host's LTXVAudioVAELoader
on the same file: it keeps only those two prefixes (comfy_extras/nodes_lt_audio.py).
"""

from __future__ import annotations

from typing import NamedTuple

import comfy.sd

from ..quant.safetensors_header import open_checkpoint, read_tensor

PREFIX = "vae."


def read_vae_state_dict(path: str) -> tuple[dict, dict[str, str]]:
    """({key without "vae.": tensor}, the header's __metadata__) of `path`; ({}, metadata) if the
    file has no `vae.` tensors (a diffusion-model-only file)."""
    with open_checkpoint(path) as (index, f):
        sd = {
            name[len(PREFIX) :]: read_tensor(f, info, index.path)
            for name, info in index.tensors.items()
            if name.startswith(PREFIX)
        }
        return sd, dict(index.metadata)


class BundleVAE(NamedTuple):
    vae: object  # comfy.sd.VAE
    note: str  # one line for the load report
    problem: bool  # `vae.` tensors were there and could not be built (worth a warning)


def load_bundle_vae(path: str) -> BundleVAE:
    """The host VAE of the bundle at `path` and a note describing it; or the host's placeholder VAE
    and a note saying why (for the load report and the log: never dropped silently).

    Placeholder: `comfy.sd.VAE(sd={})`, what the host's own loader returns for a checkpoint without
    a VAE (comfy/sd.py `load_state_dict_guess_config`); it raises "VAE is invalid" only when a node
    uses it, so a diffusion-model-only file, or a bundle whose VAE the host cannot build, still
    gives its MODEL.
    """
    sd, metadata = read_vae_state_dict(path)
    if not sd:
        note = f"VAE: none (no '{PREFIX}' tensors in the file); the VAE output fails if used"
        return BundleVAE(comfy.sd.VAE(sd={}), note, False)
    reason = None
    try:
        vae = comfy.sd.VAE(sd=sd, metadata=metadata)
        if vae.first_stage_model is None:
            reason = "not a VAE the host recognises"
    except Exception as e:  # the host's constructor on a config or shape it cannot build
        reason = f"the host could not build it: {type(e).__name__}: {e}"
    if reason:
        note = f"VAE: the {len(sd)} '{PREFIX}' tensors were not loaded ({reason}); the VAE output fails if used"
        return BundleVAE(comfy.sd.VAE(sd={}), note, True)
    n = sum(t.numel() for t in sd.values())
    note = f"VAE: {type(vae.first_stage_model).__name__}, {len(sd)} tensors, {n / 1e6:.1f} M parameters"
    return BundleVAE(vae, note, False)
