"""Synchformer visual branch and DAC-VAE decoder: shapes, determinism, official-format loading."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from foley_dist.errors import FoleyError
from foley_dist.models.dac_vae import AudioDecoder, DacDecoderConfig
from foley_dist.models.synchformer import SyncEncoder, SyncEncoderConfig, sync_tokens, sync_windows


def _frames(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _sync(seed: int = 0) -> SyncEncoder:
    torch.manual_seed(seed)
    return SyncEncoder(SyncEncoderConfig.tiny()).eval()


def _vae(seed: int = 0) -> AudioDecoder:
    torch.manual_seed(seed)
    return AudioDecoder(DacDecoderConfig.tiny()).eval()


def _official_sync_file(model: SyncEncoder, path: Path) -> Path:
    """The layout of synchformer_state_dict.pth: the whole Synchformer, visual branch under vfeat_extractor."""
    state = {f"vfeat_extractor.{k}": v.clone() for k, v in model.state_dict().items()}
    state["vfeat_extractor.patch_embed.proj.weight"] = torch.zeros(768, 3, 16, 16)
    state["vfeat_extractor.patch_embed.proj.bias"] = torch.zeros(768)
    state["afeat_extractor.patch_embed.proj.weight"] = torch.zeros(768, 1, 16, 16)
    state["transformer.OFF_tok"] = torch.zeros(1, 1, 768)
    torch.save(state, path)
    return path


def _official_vae_file(model: AudioDecoder, path: Path, drop: tuple[str, ...] = (),
                       add: dict[str, torch.Tensor] | None = None) -> Path:
    """The audiotools layout of vae_128d_48k.pth: full DAC state dict plus constructor kwargs."""
    c = model.config
    state = {k: v.clone() for k, v in model.state_dict().items() if k not in drop}
    state.update({"encoder.block.0.weight_v": torch.zeros(8, 1, 7), "quant_conv.weight": torch.zeros(256, 128, 1)})
    state.update(add or {})
    kwargs = {"encoder_dim": 8, "encoder_rates": [2, 4, 8, 15], "latent_dim": c.latent_dim,
              "decoder_dim": c.decoder_dim, "decoder_rates": list(c.decoder_rates), "n_codebooks": 9,
              "codebook_size": 1024, "codebook_dim": 8, "quantizer_dropout": False, "sample_rate": c.sample_rate,
              "continuous": True}
    torch.save({"state_dict": state, "metadata": {"kwargs": kwargs}}, path)
    return path


# --- shapes and windowing -------------------------------------------------------------------------


def test_sync_tokens_keep_training_rate():
    assert sync_tokens(5) == 120
    # the official floor((T - 16) / 8) + 1 windows at 8, 10 and 15 s (what the model was trained on)
    for seconds in (8, 10, 15):
        frames = 25 * seconds
        assert sync_tokens(seconds) == 8 * ((frames - 16) // 8 + 1) == 24 * seconds
    assert sync_windows(1) == 1 and sync_tokens(0.1) == 8


def test_sync_encoder_five_seconds_gives_120_tokens():
    with torch.inference_mode():
        out = _sync()(_frames(125))
    assert out.shape == (1, 120, 768) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_sync_windows_pad_tail_with_last_frame():
    model = _sync()
    frames = _frames(125)
    windows = model.windows(frames)  # [15, 3, 16, S, S]: 128 frames needed, 3 repeats of the last
    assert windows.shape == (15, 3, 16, 32, 32)
    assert torch.equal(windows[1, :, 0], frames[8]) and torch.equal(windows[-1, :, -1], frames[-1])
    assert torch.equal(windows[-1, :, -4], frames[-1]) and torch.equal(windows[-1, :, -5], frames[-2])


def test_sync_encoder_rejects_wrong_frames():
    with pytest.raises(ValueError, match="uint8 frames"):
        _sync()(_frames(20, size=64))
    with pytest.raises(ValueError, match="uint8 frames"):
        _sync()(_frames(20).float())


def test_vae_250_latents_give_240000_samples():
    model = _vae()
    assert model.hop_length == 960 and model.sample_rate == 48000
    with torch.inference_mode():
        wave = model(torch.randn(2, 128, 250))
    assert wave.shape == (2, 240000) and wave.abs().max() <= 1


def test_real_configs_hop_and_window():
    assert DacDecoderConfig.real().hop_length == 960
    c = SyncEncoderConfig.real()
    assert (c.image_size, c.dim, c.tokens_per_window, c.window, c.stride) == (224, 768, 8, 16, 8)


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_weights_and_outputs():
    frames, z = _frames(16), torch.randn(1, 128, 4)
    with torch.inference_mode():
        assert torch.equal(_sync(3)(frames), _sync(3)(frames))
        assert torch.equal(_vae(3)(z), _vae(3)(z))
        assert not torch.equal(_vae(3)(z), _vae(4)(z))


def test_window_batch_size_is_bit_exact():
    model, frames = _sync(), _frames(56)  # 7 windows
    outs = []
    with torch.inference_mode():
        for batch in (1, 3, 100):
            model.config.window_batch_size = batch
            outs.append(model(frames))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# --- official checkpoint layouts ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_sync_official_round_trip(tmp_path, suffix):
    model = _sync(1)
    path = _official_sync_file(model, tmp_path / "synchformer_state_dict.pth")
    if suffix == ".safetensors":
        save_file(torch.load(path, weights_only=True), tmp_path / "sync.safetensors")
        path = tmp_path / "sync.safetensors"
    loaded = SyncEncoder.load_official(path, SyncEncoderConfig.tiny())
    frames = _frames(16)
    with torch.inference_mode():
        assert torch.equal(loaded(frames), model(frames))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_vae_official_round_trip_reads_hyperparameters(tmp_path):
    model = _vae(1)
    loaded = AudioDecoder.from_official(_official_vae_file(model, tmp_path / "vae_128d_48k.pth"))
    assert loaded.config == model.config
    z = torch.randn(1, 128, 6)
    with torch.inference_mode():
        assert torch.equal(loaded(z), model(z))


def test_vae_safetensors_with_kwargs_metadata(tmp_path):
    import json

    model = _vae(2)
    c = dataclasses.asdict(model.config) | {"continuous": True}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "vae.safetensors",
              metadata={"kwargs": json.dumps(c)})
    loaded = AudioDecoder.from_official(tmp_path / "vae.safetensors")
    z = torch.randn(1, 128, 3)
    with torch.inference_mode():
        assert torch.equal(loaded(z), model(z))


def test_vae_keys_follow_official_weight_norm_layout():
    keys = _vae().state_dict().keys()
    assert {"post_quant_conv.weight", "decoder.model.0.weight_g", "decoder.model.0.weight_v",
            "decoder.model.1.block.0.alpha", "decoder.model.1.block.1.weight_v",
            "decoder.model.1.block.2.block.1.weight_g", "decoder.model.5.weight_v"} <= keys
    assert not any(k.endswith(".weight") and k.startswith("decoder.") for k in keys)


def test_missing_key_is_named(tmp_path):
    path = _official_vae_file(_vae(), tmp_path / "vae.pth", drop=("decoder.model.0.weight_g",))
    with pytest.raises(FoleyError, match=r"missing 1 keys \(decoder\.model\.0\.weight_g\)"):
        AudioDecoder.from_official(path)
    state = torch.load(_official_sync_file(_sync(), tmp_path / "s.pth"), weights_only=True)
    del state["vfeat_extractor.temp_embed"]
    torch.save(state, tmp_path / "s.pth")
    with pytest.raises(FoleyError, match="missing 1 keys \\(temp_embed\\)"):
        SyncEncoder.load_official(tmp_path / "s.pth", SyncEncoderConfig.tiny())


def test_wrong_shape_and_unexpected_keys_are_named(tmp_path, caplog):
    add = {"post_quant_conv.bias": torch.zeros(64), "decoder.model.9.weight": torch.zeros(1)}
    path = _official_vae_file(_vae(), tmp_path / "vae.pth", add=add)
    with pytest.raises(FoleyError) as err:
        AudioDecoder.from_official(path)
    msg = str(err.value)
    assert "post_quant_conv.bias (64,) vs (128,)" in msg and "\n" not in msg
    # unused keys alone are reported in one line and ignored; missing ones stay an error
    path = _official_vae_file(_vae(), tmp_path / "vae2.pth", add={"decoder.model.9.weight": torch.zeros(1)})
    AudioDecoder.from_official(path)
    assert "ignoring 1 tensor(s) inference does not use [decoder.model.9.weight]" in caplog.text
    # the real config does not fit tiny weights: every mismatch is reported, none loaded
    with pytest.raises(FoleyError, match="shape mismatches"):
        SyncEncoder.load_official(_official_sync_file(_sync(), tmp_path / "s.pth"), SyncEncoderConfig.real())


class _NotATensor:
    pass


def test_pickle_with_objects_is_refused(tmp_path):
    torch.save({"vfeat_extractor.cls_token": torch.zeros(1, 1, 768), "evil": _NotATensor()}, tmp_path / "s.pth")
    with pytest.raises(FoleyError, match="refused"):
        SyncEncoder.load_official(tmp_path / "s.pth", SyncEncoderConfig.tiny())
    torch.save({"state_dict": {}, "metadata": {"kwargs": _NotATensor()}}, tmp_path / "v.pth")
    with pytest.raises(FoleyError, match="refused"):
        AudioDecoder.from_official(tmp_path / "v.pth")


def test_bad_files_fail_with_one_line(tmp_path):
    with pytest.raises(FoleyError, match="not found"):
        AudioDecoder.from_official(tmp_path / "absent.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "flat.pth")
    with pytest.raises(FoleyError, match="audiotools DAC"):
        AudioDecoder.from_official(tmp_path / "flat.pth")
    with pytest.raises(FoleyError, match="not a Synchformer checkpoint"):
        SyncEncoder.load_official(tmp_path / "flat.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FoleyError):
        SyncEncoder.load_official(tmp_path / "junk.pth")
    model = _vae()
    path = _official_vae_file(model, tmp_path / "d.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["metadata"]["kwargs"]["continuous"] = False
    torch.save(ckpt, path)
    with pytest.raises(FoleyError, match="discrete"):
        AudioDecoder.from_official(path)
