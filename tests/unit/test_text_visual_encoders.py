"""SigLIP2 visual encoder, CLAP text encoder and the built-in tokenizer: shapes, determinism,
official preprocessing/tokenization rules, local loading (no network)."""

import json
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    ClapAudioConfig,
    ClapConfig,
    ClapModel,
    SiglipConfig,
    SiglipModel,
    SiglipTextConfig,
)

from foley_dist.errors import FoleyError
from foley_dist.models.clap import MAX_TEXT_TOKENS, TextEncoder, TextEncoderConfig, text_param_count
from foley_dist.models.siglip import VisualEncoder, VisualEncoderConfig, normalize_frames, visual_param_count
from foley_dist.models.tokenizer import TINY_VOCAB_SIZE, build_tiny_tokenizer
from tests.reference import assert_rounding_close

PROMPTS = ["noisy, harsh", "a dog barks twice in a quiet room"]
LONG = "rain on a tin roof, " * 10  # ~200 byte tokens: longer than 77, shorter than 512


@pytest.fixture
def no_network(monkeypatch):
    """Offline mode plus a hard guarantee: any socket connect fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_visual(seed: int = 0, encode_batch_size: int = 32) -> VisualEncoder:
    torch.manual_seed(seed)
    return VisualEncoder.from_config(VisualEncoderConfig.tiny(), encode_batch_size)


def tiny_text(seed: int = 0, fixed_length: bool = True) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder.from_config(TextEncoderConfig.tiny(), fixed_length=fixed_length)


def frames(t: int, seed: int = 1, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, size, size), dtype=torch.uint8, generator=g)


# ---------------------------------------------------------------- visual


def test_visual_shape_and_dtype():
    enc = tiny_visual()
    out = enc(frames(5))
    assert out.shape == (1, 5, 768) and out.dtype == torch.float32
    assert enc.config.out_dim == 768 and enc.image_size == 64
    assert enc.to(torch.bfloat16)(frames(2)).dtype == torch.bfloat16


def test_visual_seeded_construction_is_deterministic():
    a, b, c = tiny_visual(3), tiny_visual(3), tiny_visual(4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    x = frames(4)
    assert torch.equal(a(x), b(x))


def test_visual_applies_official_normalisation():
    # ToTensor (/255) then Normalize(0.5, 0.5): uint8 0 -> -1, 255 -> 1.
    assert torch.equal(normalize_frames(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    enc = tiny_visual()
    x = frames(3)
    ref = enc.model(pixel_values=(x.float() / 255 - 0.5) / 0.5).pooler_output
    # the reference is a call into transformers (grad mode, its own dispatch): equal up to float
    # rounding; a wrong normalisation moves the features by O(1)
    assert_rounding_close(enc(x)[0], ref)
    black = enc(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    white = enc(torch.full((1, 3, 64, 64), 255, dtype=torch.uint8))
    assert not torch.allclose(black, white)


def test_visual_chunking_matches_one_batch():
    # Chunks only bound memory. Bit-equality across chunk sizes is not promised: CPU GEMM kernels
    # pick a different summation order for small row counts (the pooling head has one row per frame).
    x = frames(6)
    one_by_one = tiny_visual(encode_batch_size=1)(x)
    whole = tiny_visual(encode_batch_size=6)(x)
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=1e-5)
    assert torch.equal(tiny_visual(encode_batch_size=3)(x), tiny_visual(encode_batch_size=3)(x))


def test_visual_rejects_frames_it_cannot_encode():
    enc = tiny_visual()
    with pytest.raises(ValueError, match="64x64"):
        enc(frames(2, size=32))
    with pytest.raises(ValueError, match="uint8"):
        enc(frames(2).float())


def test_visual_save_and_load_roundtrip(tmp_path, no_network):
    enc = tiny_visual(encode_batch_size=4)
    enc.save_pretrained(tmp_path)
    loaded = VisualEncoder.from_pretrained_dir(tmp_path, encode_batch_size=4)
    assert loaded.config == enc.config
    x = frames(6)
    assert torch.equal(loaded(x), enc(x))


def test_visual_loads_full_siglip_checkpoint_like_official(tmp_path, no_network):
    """The real folder is a whole SigLIP model (text + vision); the official calls get_image_features."""
    torch.manual_seed(0)
    text = SiglipTextConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=1, max_position_embeddings=8)
    vision = VisualEncoderConfig.tiny().to_hf()
    full = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
    full.eval().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "siglip"
    enc = VisualEncoder.from_pretrained_dir(tmp_path, encode_batch_size=8)
    x = frames(5)
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=normalize_frames(x)).pooler_output
    # transformers' SiglipModel path rounds differently from its vision tower alone (5.25: 3.5e-7 relative)
    assert_rounding_close(enc(x)[0], ref)


def test_visual_missing_or_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FoleyError, match="does not exist.*siglip2-base-patch16-512"):
        VisualEncoder.from_pretrained_dir(tmp_path / "nope")
    with pytest.raises(FoleyError, match="no config.json"):
        VisualEncoder.from_pretrained_dir(tmp_path)
    tiny_visual().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip2"}))
    with pytest.raises(FoleyError, match="model_type 'siglip2'"):
        VisualEncoder.from_pretrained_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(FoleyError, match=r"layers.0.mlp.fc1.weight \(checkpoint \(256, 768\), config \(128, 768\)\)"):
        VisualEncoder.from_pretrained_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "head.probe" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(FoleyError, match=r"1 bad weights \(head.probe \(missing\)\)"):
        VisualEncoder.from_pretrained_dir(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FoleyError, match="no \\*.safetensors"):
        VisualEncoder.from_pretrained_dir(tmp_path)


# ---------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_is_deterministic_and_roberta_like(no_network):
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == TINY_VOCAB_SIZE
    assert (a.bos_token_id, a.pad_token_id, a.eos_token_id, a.unk_token_id) == (0, 1, 2, 3)
    ids = a("héllo")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) == 2 + len("héllo".encode())
    assert a.decode(ids, skip_special_tokens=True) == "héllo"


def test_tiny_tokenizer_roundtrips_through_autotokenizer(tmp_path, no_network):
    build_tiny_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded(PROMPTS)["input_ids"] == build_tiny_tokenizer()(PROMPTS)["input_ids"]


# ---------------------------------------------------------------- text


def test_text_shape_and_dtype():
    enc = tiny_text()
    out = enc(PROMPTS)
    assert out.shape == (2, MAX_TEXT_TOKENS, 768) and out.dtype == torch.float32
    assert enc.config.out_dim == 768


def test_text_seeded_construction_is_deterministic():
    a, b = tiny_text(5), tiny_text(5)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a(PROMPTS), b(PROMPTS))


def test_text_pads_to_77_and_pad_features_do_not_touch_real_tokens():
    fixed, official = tiny_text(fixed_length=True), tiny_text(fixed_length=False)
    batch = fixed.tokenize(PROMPTS)
    assert batch["input_ids"].shape == (2, MAX_TEXT_TOKENS)
    lengths = batch["attention_mask"].sum(1)
    assert (batch["input_ids"][0, lengths[0]:] == 1).all()  # right padding with <pad>
    short = official(PROMPTS)
    assert short.shape == (2, int(lengths.max()), 768)  # official: longest of the pair
    torch.testing.assert_close(fixed(PROMPTS)[:, : short.shape[1]], short, rtol=0, atol=1e-5)
    # Pad positions all carry the same feature (same token, same position id, masked as keys).
    pads = fixed(PROMPTS)[0, lengths[1]:]
    torch.testing.assert_close(pads, pads[:1].expand_as(pads), rtol=0, atol=1e-5)


def test_text_long_prompt_encoded_in_full_then_cut_to_77():
    enc = tiny_text()
    batch = enc.tokenize([LONG, "short"])
    n = len(LONG.encode()) + 2
    assert batch["input_ids"].shape == (2, n) and n > MAX_TEXT_TOKENS
    out = enc([LONG, "short"])
    assert out.shape == (2, MAX_TEXT_TOKENS, 768)
    with torch.no_grad():
        ref = enc.model(**batch).last_hidden_state[:, :MAX_TEXT_TOKENS]
    assert_rounding_close(out, ref)  # a direct call into transformers: equal up to float rounding
    # Beyond the 512-token position table the input is truncated instead of crashing.
    huge = enc.tokenize(["x" * 2000])["input_ids"]
    assert huge.shape == (1, 512) and huge[0, -1] == 2
    assert enc(["x" * 2000]).shape == (1, MAX_TEXT_TOKENS, 768)


def test_text_save_and_load_roundtrip(tmp_path, no_network):
    enc = tiny_text()
    enc.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained_dir(tmp_path)
    assert loaded.config == enc.config
    assert torch.equal(loaded(PROMPTS + [LONG]), enc(PROMPTS + [LONG]))


def test_text_loads_full_clap_checkpoint_like_official(tmp_path, no_network):
    """The real folder is a whole CLAP model; the official tokenizes with padding=True, runs
    ClapTextModelWithProjection and keeps last_hidden_state[:, :77]."""
    torch.manual_seed(0)
    audio = ClapAudioConfig(depths=[1, 1], num_attention_heads=[1, 1], patch_embeds_hidden_size=8, hidden_size=16,
                            spec_size=64, window_size=4, num_mel_bins=16, projection_dim=32)
    full = ClapModel(ClapConfig(text_config=TextEncoderConfig.tiny().to_hf().to_dict(), audio_config=audio.to_dict(),
                                projection_dim=32))
    full.eval().save_pretrained(tmp_path)
    tok = build_tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained_dir(tmp_path, fixed_length=False)
    for prompts in (PROMPTS, [PROMPTS[0], LONG]):
        with torch.no_grad():
            ref = full.text_model(**tok(prompts, padding=True, return_tensors="pt")).last_hidden_state
        assert_rounding_close(enc(prompts), ref[:, :MAX_TEXT_TOKENS])  # transformers' ClapModel: float rounding


def test_text_missing_folder_or_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FoleyError, match="does not exist.*larger_clap_general"):
        TextEncoder.from_pretrained_dir(tmp_path / "nope")
    tiny_text().model.save_pretrained(tmp_path)  # weights without tokenizer files
    with pytest.raises(FoleyError, match="no tokenizer"):
        TextEncoder.from_pretrained_dir(tmp_path)


# ---------------------------------------------------------------- sizes


def test_param_counts():
    assert visual_param_count(VisualEncoderConfig.tiny()) == sum(p.numel() for p in tiny_visual().parameters())
    assert text_param_count(TextEncoderConfig.tiny()) == sum(p.numel() for p in tiny_text().parameters())
    assert visual_param_count(VisualEncoderConfig.real()) == 93_520_128  # siglip2-base-patch16-512 vision tower
    assert text_param_count(TextEncoderConfig.real()) == 125_302_016  # RoBERTa-base + CLAP text projection
