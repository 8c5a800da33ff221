"""A test-only ComfyUI node pack (V3 API) for the example workflows, the e2e tests and the demo.

The LTX-2 text encoder (Gemma-3 12B) and the audio VAE cannot be had here, so this pack stands in
for the two things the host's LTXAV pipeline needs from them:

- `LTXFP8TestConditioning` ("Synthetic LTX Conditioning"): positive / negative CONDITIONING shaped
  exactly like the output of the host's LTXAV text encoder (comfy/text_encoders/lt.py,
  `LTXAVTEModel.encode_token_weights`): a float32 tensor `[1, tokens, C]` with the extra key
  `unprocessed_ltxav_embeds=True` and `pooled_output=None`. The model's `extra_conds`
  (comfy/model_base.py `LTXAV`) then runs it through `LTXAVModel.preprocess_text_embeds`, i.e. the
  model's own caption projections and embeddings connectors, as with a real prompt. `C` is read
  from the MODEL's diffusion model: LTX-2.3 (`caption_proj_before_connector`, the "dual_linear"
  text projection) wants `cross_attention_dim + audio_cross_attention_dim` (video part first,
  audio part second); LTX-2.0 ("single_linear") wants `caption_channels`, shared by both. Values
  are N(0, 1) from a CPU generator seeded with `seed` (negative: `seed + 1`), so a seed gives the
  same tensors on every machine.
- `LTXFP8TestEmptyAudioLatent` ("Empty LTX Audio Latent (no VAE)"): the host's
  `LTXVEmptyLatentAudio` needs an audio VAE only to read its constants; these are the LTX-2 audio
  VAE's (8 latent channels, 64 mel bins / 4 = 16 frequency bins, 16 kHz / hop 160 / 4 = 25
  latents per second), so the latent is the same `{"samples": zeros[B, 8, ceil(frames / fps *
  25), 16], "type": "audio"}`.
"""

from __future__ import annotations

import math

import torch
from comfy_api.latest import ComfyExtension, io

# LTX-2 audio VAE constants (comfy/ldm/lightricks/vae/audio_vae.py with its default config).
AUDIO_Z_CHANNELS = 8
AUDIO_FREQ_BINS = 16
AUDIO_LATENTS_PER_SECOND = 25.0


def context_width(model) -> int:
    """The width of the text-encoder output the LTXAV diffusion model expects (unprocessed)."""
    dm = model.model.diffusion_model
    if not hasattr(dm, "audio_embeddings_connector"):
        raise ValueError(f"{type(dm).__name__} is not an LTX-2 audio-video (LTXAV) model")
    if getattr(dm, "caption_proj_before_connector", False):
        return int(dm.cross_attention_dim + dm.audio_cross_attention_dim)
    return int(dm.caption_channels)


def synthetic_context(width: int, tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return torch.randn((1, tokens, width), generator=g, dtype=torch.float32)


class LTXFP8TestConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8TestConditioning",
            display_name="Synthetic LTX Conditioning (test)",
            category="testing/ltx fp8",
            description=(
                "Deterministic stand-in for the LTX-2 text encoder (Gemma-3 12B): N(0, 1) text "
                "embeddings of the width the MODEL expects, run through the model's own "
                "connectors like a real prompt. Negative uses seed + 1."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The LTXAV MODEL the conditioning is for (its dims are read)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False),
                io.Int.Input("tokens", default=16, min=1, max=1024, tooltip="Text tokens per prompt."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, model, seed, tokens) -> io.NodeOutput:
        width = context_width(model)
        extra = {"pooled_output": None, "unprocessed_ltxav_embeds": True}
        pos = [[synthetic_context(width, tokens, seed), dict(extra)]]
        neg = [[synthetic_context(width, tokens, seed + 1), dict(extra)]]
        return io.NodeOutput(pos, neg)


class LTXFP8TestEmptyAudioLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LTXFP8TestEmptyAudioLatent",
            display_name="Empty LTX Audio Latent (no VAE, test)",
            category="testing/ltx fp8",
            description="LTXVEmptyLatentAudio with the LTX-2 audio VAE's constants built in (no VAE needed).",
            inputs=[
                io.Int.Input("frames_number", default=97, min=1, max=1000),
                io.Float.Input("frame_rate", default=25.0, min=1.0, max=1000.0, step=0.01),
                io.Int.Input("batch_size", default=1, min=1, max=4096),
            ],
            outputs=[io.Latent.Output(display_name="Latent")],
        )

    @classmethod
    def execute(cls, frames_number, frame_rate, batch_size) -> io.NodeOutput:
        import comfy.model_management

        n = math.ceil(float(frames_number) / frame_rate * AUDIO_LATENTS_PER_SECOND)
        samples = torch.zeros(
            (batch_size, AUDIO_Z_CHANNELS, n, AUDIO_FREQ_BINS), device=comfy.model_management.intermediate_device()
        )
        return io.NodeOutput({"samples": samples, "type": "audio"})


NODES = [LTXFP8TestConditioning, LTXFP8TestEmptyAudioLatent]


class LTXFP8TestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LTXFP8TestExtension:
    return LTXFP8TestExtension()
