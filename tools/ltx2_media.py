"""Tiny stand-ins of every LTX-2.3 model a template needs, built by the host's own classes on CPU.

The official files (a 29 GB bundle, a 1 GB upscaler, a 2.5 GB LoRA, a 12B text encoder) cannot be
had here. The templates' end-to-end test runs them on files with the same structure at tiny size:

- the bundle (`write_bundle`): the tiny LTX-2.3 transformer of tools/ltx2_fixture.py (TINY, fp8 in
  the ltx-core encoding) plus a real video VAE (`vae.*`), audio VAE (`audio_vae.*`) and vocoder
  (`vocoder.*`), each with its config in the header (`config["vae"]`, `config["audio_vae"]`,
  `config["vocoder"]`), so that the host's loaders build them exactly as they build the official
  ones: comfy.sd.VAE (Lightricks CausalVideoAutoencoder from `config["vae"]`) and
  comfy.ldm.lightricks.vae.audio_vae.AudioVAE (CausalAudioAutoencoder + Vocoder from the header);
- the x2 spatial latent upscaler (`write_upscaler`): the host's LatentUpsampler, config in the
  header (`config`), as its LatentUpscaleModelLoader reads it;
- the distilled LoRA: tools/ltx2_fixture.write_lora on the tiny transformer.

Weights are deterministic (`_initialised`: N(0, 1/fan_in), norms and statistics 1 / 0): the
decoded video and audio are noise-like but real, deterministic and of the exact frame count, size
and sample count the configs imply.

What the stand-ins keep of the real models: the video VAE decodes 32x32 pixels and 8 frames per
latent (patch size 4 and three x2 space-time stages: the ratios comfy.sd.VAE assumes for this
class), 128 latent channels; the audio VAE has the LTX-2 constants the host's nodes rely on
(8 latent channels, 64 mel bins -> 16 latent bins, 16 kHz, hop 160: 25 latents per second) and the
vocoder turns 64-bin stereo mels into a 16 kHz stereo waveform; the upscaler doubles the latent's
height and width. Channel widths, block counts and the vocoder's upsampling stages are cut down.

What cannot be built tiny: the Gemma-3 12B text encoder. The host's LTXAVTextEncoderLoader takes a
Gemma-3 checkpoint whose architecture (comfy/text_encoders/lt.py) fixes its width and depth, plus
the Gemma tokenizer; a tiny one would not be the host's model. The tests swap it (in the queued
prompt only) for the test node pack's synthetic conditioning, shaped like its output.

Imports the host (tools/host_inprocess.import_host) on first use.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib

import torch

from tools.ltx2_fixture import PASSENGER_PREFIXES, TINY, write_checkpoint, write_lora

SEED = 0

# comfy/ldm/lightricks/vae/causal_video_autoencoder.py VideoVAE(config=...): decoder = res_x, three
# x2 space-time stages, res_x; patch size 4 -> 32x spatial, 8x temporal, as comfy.sd.VAE assumes.
VIDEO_VAE_CONFIG = {
    "_class_name": "CausalVideoAutoencoder",
    "dims": 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 128,
    "encoder_blocks": [
        ["res_x", {"num_layers": 1}],
        ["compress_space_res", {"multiplier": 2}],
        ["compress_time_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 2}],
        ["compress_all_res", {"multiplier": 1}],
    ],
    "decoder_blocks": [
        ["res_x", {"num_layers": 1, "inject_noise": False}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["compress_all", {"residual": True, "multiplier": 2}],
        ["res_x", {"num_layers": 1, "inject_noise": False}],
    ],
    "encoder_base_channels": 8,
    "decoder_base_channels": 8,
    "scaling_factor": 1.0,
    "norm_layer": "pixel_norm",
    "patch_size": 4,
    "latent_log_var": "uniform",
    "use_quant_conv": False,
    "causal_decoder": False,
    "timestep_conditioning": False,
}

# comfy/ldm/lightricks/vae/causal_audio_autoencoder.py CausalAudioAutoencoder(config): the LTX-2
# constants (64 mel bins, z 8, 16 kHz, hop 160, three resolutions = x4 downsampling), 8 channels.
AUDIO_VAE_CONFIG = {
    "model": {
        "params": {
            "ddconfig": {
                "double_z": True,
                "mel_bins": 64,
                "z_channels": 8,
                "resolution": 256,
                "downsample_time": False,
                "in_channels": 2,
                "out_ch": 2,
                "ch": 8,
                "ch_mult": [1, 2, 4],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
                "mid_block_add_attention": False,
                "norm_type": "pixel",
                "causality_axis": "height",
            },
            "sampling_rate": 16000,
        }
    },
    "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160}},
}

# comfy/ldm/lightricks/vocoders/vocoder.py Vocoder(config): HiFi-GAN, stereo 2 x 64 mel bins in;
# upsampling 10 x 16 = the hop length 160, so the output rate is 16 kHz (AudioVAE.output_sample_rate).
VOCODER_CONFIG = {
    "resblock_kernel_sizes": [3],
    "upsample_rates": [10, 16],
    "upsample_kernel_sizes": [20, 32],
    "resblock_dilation_sizes": [[1, 3, 5]],
    "upsample_initial_channel": 16,
    "stereo": True,
    "resblock": "1",
    "activation": "snake",
    "use_bias_at_final": True,
    "use_tanh_at_final": True,
}

# comfy/ldm/lightricks/latent_upsampler.py LatentUpsampler.from_config: x2 spatial, 3-D convs.
UPSCALER_CONFIG = {
    "_class_name": "LatentUpsampler",
    "in_channels": 128,
    "mid_channels": 32,
    "num_blocks_per_stage": 1,
    "dims": 3,
    "spatial_upsample": True,
    "temporal_upsample": False,
    "spatial_scale": 2.0,
    "rational_resampler": False,
}

AUDIO_SAMPLE_RATE = 16000  # the tiny vocoder's output rate
AUDIO_HOP = 160
AUDIO_LATENT_DOWNSAMPLE = 4  # comfy/ldm/lightricks/vae/audio_vae.py LATENT_DOWNSAMPLE_FACTOR


def _host():
    from tools.host_inprocess import import_host

    import_host()


def _initialised(sd: dict, seed: int) -> dict:
    """Deterministic values for every tensor of a host module's state dict. The host builds these
    modules with comfy.ops.disable_weight_init (torch.empty: whatever memory held), expecting a
    checkpoint to fill them. Each tensor gets its own generator seeded from (seed, key): weights
    N(0, 1/fan_in), 1-D `weight`/`alpha`/`beta`/std tensors 1, everything else 0."""
    out = {}
    for key, v in sd.items():
        g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) & 0x7FFFFFFF)
        if v.dim() >= 2:
            fan_in = max(1, v[0].numel())
            t = torch.randn(v.shape, generator=g, dtype=torch.float32) / fan_in**0.5
        elif key.rsplit(".", 1)[-1] in ("weight", "alpha", "beta") or "std" in key:
            t = torch.ones(v.shape)
        else:
            t = torch.zeros(v.shape)
        out[key] = t.to(v.dtype if v.dtype.is_floating_point else torch.float32).contiguous()
    return out


def video_vae_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The tiny video VAE's state dict (keys without `vae.`), from the host's VideoVAE."""
    _host()
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE

    return _initialised(VideoVAE(config=VIDEO_VAE_CONFIG).state_dict(), seed)


def audio_state_dicts(seed: int = SEED) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(audio VAE state dict without `audio_vae.`, vocoder state dict without `vocoder.`), from the
    host's AudioVAE (its `autoencoder.` and `vocoder.` submodules)."""
    _host()
    from comfy.ldm.lightricks.vae.audio_vae import AudioVAE

    model = AudioVAE({"config": json.dumps({"audio_vae": AUDIO_VAE_CONFIG, "vocoder": VOCODER_CONFIG})})
    sd = _initialised(model.state_dict(), seed + 1)
    audio = {k[len("autoencoder.") :]: v for k, v in sd.items() if k.startswith("autoencoder.")}
    vocoder = {k[len("vocoder.") :]: v for k, v in sd.items() if k.startswith("vocoder.")}
    assert len(audio) + len(vocoder) == len(sd), "AudioVAE holds more than autoencoder. and vocoder."
    return audio, vocoder


def _save(tensors: dict, metadata: dict, path: str) -> None:
    """Write complete or not at all (a temp file in the same folder, then os.replace)."""
    from safetensors.torch import save_file

    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".safetensors", dir=d)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_bundle(path: str, encoding: str = "ltx-core", seed: int = SEED, config: dict = TINY):
    """An LTX-2.3 bundle at tiny size: the fixture transformer (`model.diffusion_model.`) plus the
    real tiny video VAE, audio VAE and vocoder, the fixture's text projection placeholder, and the
    header config of all four. Returns the transformer's ltx2_fixture.Fixture."""
    from safetensors import safe_open

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".transformer-", suffix=".safetensors", dir=d)
    os.close(fd)
    try:
        fx = write_checkpoint(tmp, config, encoding, seed=seed)
        with safe_open(tmp, framework="pt") as f:
            # The fixture's vae./audio_vae./vocoder. placeholders are replaced by the real stand-ins.
            keep = [k for k in f.keys() if not k.startswith(PASSENGER_PREFIXES[:3])]
            tensors = {k: f.get_tensor(k).clone() for k in keep}
            metadata = dict(f.metadata())
    finally:
        os.unlink(tmp)
    audio, vocoder = audio_state_dicts(seed)
    tensors.update({"vae." + k: v for k, v in video_vae_state_dict(seed).items()})
    tensors.update({"audio_vae." + k: v for k, v in audio.items()})
    tensors.update({"vocoder." + k: v for k, v in vocoder.items()})
    cfg = json.loads(metadata["config"])
    cfg.update({"vae": VIDEO_VAE_CONFIG, "audio_vae": AUDIO_VAE_CONFIG, "vocoder": VOCODER_CONFIG})
    metadata["config"] = json.dumps(cfg)
    _save(tensors, metadata, path)
    fx.path = path
    fx.metadata = metadata
    return fx


def write_upscaler(path: str, seed: int = SEED) -> None:
    """The x2 spatial latent upscaler at tiny size (the host's LatentUpsampler)."""
    _host()
    import comfy.ops
    from comfy.ldm.lightricks.latent_upsampler import LatentUpsampler

    model = LatentUpsampler.from_config(UPSCALER_CONFIG, operations=comfy.ops.disable_weight_init)
    _save(_initialised(model.state_dict(), seed + 2), {"config": json.dumps(UPSCALER_CONFIG)}, path)


def write_distilled_lora(path: str, seed: int = SEED, rank: int = 4, config: dict = TINY):
    """A LoRA on every block linear of the tiny transformer (the distilled LoRA's key format)."""
    from quant.ltx2_shapes import expected_linear_shapes

    layers = [n for n in expected_linear_shapes(config) if n.startswith("transformer_blocks.")]
    return write_lora(path, config, layers, rank, seed + 3)


def video_frames(latent_frames: int) -> int:
    """Frames the video VAE decodes from `latent_frames` latent frames (comfy.sd.VAE upscale_ratio)."""
    return max(0, latent_frames * 8 - 7)


def audio_samples(latents: int) -> int:
    """Waveform samples per channel the audio VAE + vocoder give for `latents` audio latents:
    (latents * 4 - 3) mel frames (causal) x hop 160 (AudioVAE.target_shape_from_latents)."""
    return (latents * AUDIO_LATENT_DOWNSAMPLE - (AUDIO_LATENT_DOWNSAMPLE - 1)) * AUDIO_HOP
