"""bridge.bundle_vae inside the real host: the bundle's video VAE is the host's own VAE, built from
the `vae.` tensors and the header's config, equal to what CheckpointLoaderSimple's path gives
(comfy.sd.VAE on the same state dict), and reading nothing but those tensors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from tools.host_inprocess import HOST_AVAILABLE, HOST_SKIP_REASON

pytestmark = [pytest.mark.skipif(not HOST_AVAILABLE, reason=HOST_SKIP_REASON), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from tools import ltx2_media
    from tools.host_inprocess import import_pack

    pack = import_pack()
    d = tmp_path_factory.mktemp("bundle_vae")
    bundle = d / "bundle.safetensors"
    ltx2_media.write_bundle(str(bundle))
    return importlib.import_module(f"{pack.__name__}.bridge.bundle_vae"), bundle


def test_the_vae_is_the_hosts_own_from_the_vae_tensors_and_header_config(env):
    import comfy.sd
    from safetensors import safe_open

    from tools import ltx2_media

    bundle_vae, bundle = env
    vae, note, problem = bundle_vae.load_bundle_vae(str(bundle))
    assert not problem
    assert type(vae) is comfy.sd.VAE
    assert type(vae.first_stage_model).__name__ == "VideoVAE"
    assert vae.first_stage_model.config == ltx2_media.VIDEO_VAE_CONFIG  # from the header, not a default
    assert note.startswith("VAE: VideoVAE, ")
    # The host's own path (comfy/sd.py load_state_dict_guess_config: strip "vae.", VAE(sd, metadata)).
    with safe_open(str(bundle), framework="pt") as f:
        ref_sd = {k[4:]: f.get_tensor(k) for k in f.keys() if k.startswith("vae.")}
        meta = f.metadata()
    ref = comfy.sd.VAE(sd=ref_sd, metadata=meta)
    ours = vae.first_stage_model.state_dict()
    theirs = ref.first_stage_model.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    latent = torch.randn(1, 128, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = vae.decode(latent), ref.decode(latent)
    assert a.shape == (1, ltx2_media.video_frames(2), 64, 96, 3)
    assert torch.equal(a, b)


def test_only_vae_tensors_are_read(env, monkeypatch):
    bundle_vae, bundle = env
    read = []
    real = bundle_vae.read_tensor
    monkeypatch.setattr(bundle_vae, "read_tensor", lambda f, info, path: read.append(info.name) or real(f, info, path))
    sd, metadata = bundle_vae.read_vae_state_dict(str(bundle))
    assert read and all(name.startswith("vae.") for name in read)
    assert len(read) == len(sd)
    assert json.loads(metadata["config"])["vae"]["_class_name"] == "CausalVideoAutoencoder"


def test_a_file_without_a_buildable_vae_gives_the_hosts_placeholder_and_says_why(tmp_path):
    from tools.host_inprocess import import_pack
    from tools.ltx2_fixture import TINY, write_checkpoint

    bundle_vae = importlib.import_module(f"{import_pack().__name__}.bridge.bundle_vae")
    none, junk = tmp_path / "none.safetensors", tmp_path / "junk.safetensors"
    write_checkpoint(none, TINY, "ltx-core", passengers=False)
    write_checkpoint(junk, TINY, "ltx-core")  # placeholder vae.* tensors: not a VAE
    for path, words, problem in ((none, "no 'vae.' tensors", False), (junk, "were not loaded", True)):
        vae, note, warn = bundle_vae.load_bundle_vae(str(path))
        assert warn is problem, path
        assert vae.first_stage_model is None, path
        assert words in note and "fails if used" in note, note
        with pytest.raises(RuntimeError, match="VAE is invalid"):
            vae.throw_exception_if_invalid()
