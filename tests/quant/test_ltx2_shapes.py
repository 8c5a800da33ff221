"""quant/ltx2_shapes.py: which layers and tensors are sensitive (kept in the file's precision unless
a rule names them): the model's entry and exit, its adaptive norms, caption projection, embedding
connectors, norms and scale-shift tables; never a block's attention or feed-forward linears."""

from __future__ import annotations

from quant.ltx2_shapes import is_sensitive

Q = "transformer_blocks.1.attn1.to_q"
FF = "transformer_blocks.1.ff.net.0.proj"
GATE = "transformer_blocks.1.attn1.to_gate_logits"


def test_sensitive_names():
    for name in (
        "patchify_proj",
        "audio_patchify_proj",
        "proj_out",
        "audio_proj_out",
        "adaln_single.linear",
        "adaln_single.emb.timestep_embedder.linear_1",
        "prompt_adaln_single.linear",
        "av_ca_a2v_gate_adaln_single.linear",
        "caption_projection.linear_1",
        "video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q",
        "audio_embeddings_connector.transformer_1d_blocks.0.ff.net.2",
        "transformer_blocks.3.scale_shift_table",
        "transformer_blocks.3.attn1.q_norm.weight",
        "model.diffusion_model.proj_out.weight",
    ):
        assert is_sensitive(name), name
    for name in (
        Q,
        FF,
        GATE,
        "transformer_blocks.47.audio_to_video_attn.to_out.0",
        "model.diffusion_model.transformer_blocks.3.attn2.to_k.weight",
        "diffusion_model.transformer_blocks.3.audio_ff.net.2",
    ):
        assert not is_sensitive(name), name
