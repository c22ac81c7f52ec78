"""The DiT's memory options: block ranges (the split's model side), exact weight bytes, fp8
weight-only storage and block offload."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from foley_dist.config import ModelConfig
from foley_dist.models.checkpoint import load_into, load_state_dict
from foley_dist.models.dit_memory import dit_bytes, fp8_error, is_fp8_file, load_dit, place_dit
from foley_dist.models.foley import ModelSpec, build_parts, random_part
from foley_dist.models.fp8 import FP8, Fp8Conv1d, Fp8Linear, dequantize, quantize
from foley_dist.models.hunyuan_cost import param_count
from foley_dist.models.hunyuan_dit import HunyuanDiT, HunyuanDiTConfig, range_prefixes, strip_to_range
from foley_dist.tools.convert_checkpoint import main as convert_main
from tests.reference import reference_file

INPUTS = ("x", "t", "cond", "clip_feat", "sync_feat")


@pytest.fixture(scope="module")
def tiny() -> HunyuanDiT:
    with torch.device("meta"):
        model = HunyuanDiT(HunyuanDiTConfig.tiny())
    load_into(model, load_state_dict(reference_file("hvf_tiny_weights.safetensors")))
    return model.eval()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(reference_file("hvf_tiny_io.safetensors"))


def conditioning(dit: HunyuanDiT, io: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return dit.condition(io["cond"], io["clip_feat"], io["sync_feat"])


# --- block ranges ------------------------------------------------------------------------------------


@torch.inference_mode()
def test_block_ranges_compose_to_the_whole_forward(tiny, io):
    whole = tiny(*(io[k] for k in INPUTS))
    cond = conditioning(tiny, io)
    ctx = tiny.context(cond, io["x"].shape[2])
    for split in range(tiny.num_blocks + 1):  # inside the triple blocks, at the boundary, inside the single ones
        state = tiny.run_blocks(tiny.embed(io["x"], io["t"], ctx), ctx, 0, split)
        assert (state.visual is None) == (split >= tiny.config.depth_triple_blocks)
        out = tiny.finish(tiny.run_blocks(state, ctx, split, tiny.num_blocks))
        assert torch.equal(out, whole), split


@torch.inference_mode()
def test_a_range_rank_loads_only_its_blocks(tiny, io):
    """Ranks [0, 1), [1, 3), [3, 4) each read only their checkpoint keys and together give the forward."""
    path = reference_file("hvf_tiny_weights.safetensors")
    cfg, cond = tiny.config, conditioning(tiny, io)
    ctx = tiny.context(cond, io["x"].shape[2])
    state = tiny.embed(io["x"], io["t"], ctx)
    loaded = 0
    for start, stop in ((0, 1), (1, 3), (3, 4)):
        with torch.device("meta"):
            rank = HunyuanDiT(cfg)
        prefixes = range_prefixes(cfg, start, stop)
        load_into(rank, load_state_dict(path, prefixes=prefixes), prefixes=prefixes)
        strip_to_range(rank, start, stop)
        assert not any(p.is_meta for p in rank.parameters())
        loaded += sum(p.numel() for p in rank.parameters())
        if start == 0:
            state = rank.embed(io["x"], io["t"], ctx)
        state = rank.run_blocks(state, ctx, start, stop)
    assert torch.equal(rank.finish(state), tiny(*(io[k] for k in INPUTS)))
    assert loaded == sum(p.numel() for n, p in tiny.named_parameters() if n.startswith(range_prefixes(cfg, 0, 4)))


def test_range_outside_the_blocks_is_refused(tiny, io):
    ctx = tiny.context(conditioning(tiny, io), io["x"].shape[2])
    with pytest.raises(ValueError, match="outside"):
        tiny.run_blocks(tiny.embed(io["x"], io["t"], ctx), ctx, 2, 5)


# --- exact bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["xl", "xxl"])
def test_dit_bytes_match_the_parameter_count(size):
    cfg = HunyuanDiTConfig.builtin(size)
    plain = dit_bytes(cfg, torch.bfloat16)
    assert plain.total == 2 * param_count(cfg)
    fp8 = dit_bytes(cfg, torch.bfloat16, fp8=True)
    assert fp8.embed == plain.embed and fp8.condition == plain.condition and fp8.finish == plain.finish
    assert 0.49 < sum(fp8.blocks) / sum(plain.blocks) < 0.51  # e4m3 matrices + fp32 scales, bf16 rest
    assert fp8.streamed == max(a + b for a, b in zip(fp8.blocks, fp8.blocks[1:]))


def test_dit_bytes_count_a_materialised_fp8_model():
    spec = ModelSpec.named("tiny")
    dit = place_dit(random_part(spec, "dit", 0), torch.device("cpu"), torch.float32, fp8=True, offload=False)
    assert dit_bytes(spec.dit, torch.float32, fp8=True).total == sum(p.numel() * p.element_size() for p in dit.parameters())


# --- fp8 --------------------------------------------------------------------------------------------


def test_quantize_rounds_each_channel_to_e4m3():
    w = torch.randn(64, 32, 3) * torch.logspace(-3, 1, 64).view(-1, 1, 1)  # channels of very different size
    q, scale = quantize(w)
    assert q.dtype == FP8 and scale.shape == (64,)
    assert torch.equal(q.float().abs().flatten(1).amax(1), torch.full((64,), 448.0))  # each channel's peak maps to 448
    # e4m3 keeps 3 mantissa bits: a normal value rounds within 2^-4 of itself
    err = (dequantize(q, scale) - w).abs()
    normal = q.float().abs() >= 2**-6
    assert (err[normal] <= 2**-4 * w.abs()[normal] * (1 + 1e-6)).all()


@torch.inference_mode()
def test_fp8_layers_equal_the_dequantised_matmul():
    x = torch.randn(2, 10, 32)
    q, scale = quantize(torch.randn(48, 32))
    bias = torch.randn(48)
    ref = torch.nn.functional.linear(x, dequantize(q, scale), bias)
    torch.testing.assert_close(Fp8Linear(q, scale, bias, torch.float32)(x), ref, rtol=1e-5, atol=1e-5)
    q, scale = quantize(torch.randn(48, 32, 3))
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), dequantize(q, scale), padding=1).transpose(1, 2)
    torch.testing.assert_close(Fp8Conv1d(q, scale, None, torch.float32, 1)(x), ref, rtol=1e-5, atol=1e-5)


# Bound on the relative L2 error of fp8 against bf16 weights. e4m3 rounds each weight within 2^-4
# (rms ~2.5 % over a matrix, asserted as `weights`); residual connections dilute it in the output,
# measured 0.2 % (velocity) and 0.1 % (latents) on the tiny and the mid-size config. 1 % leaves 5x margin
# while a wrong scale or channel order gives errors of order 1.
FP8_BOUND = 1e-2


def test_fp8_error_against_bf16_weights():
    """The tiny model here; scripts/bench_gpu_size.py measures the mid-size config against the same bound."""
    spec = ModelSpec.named("tiny")
    dit, vae = random_part(spec, "dit", 0).eval(), random_part(spec, "vae", 0).eval()
    err = fp8_error(dit, vae, seconds=0.5, steps=2)
    assert 0.005 < err["weights"] < 0.04
    assert 0 < err["velocity"] < FP8_BOUND and 0 < err["latents"] < FP8_BOUND and err["audio"] < FP8_BOUND


def test_convert_fp8_loads_as_converting_on_load(tmp_path):
    """`foley-dist convert --fp8` writes what hardware.weights=fp8 makes of the bf16 checkpoint on
    load, bit for bit, and build_parts picks an fp8 file up as fp8."""
    spec = ModelSpec.named("hunyuan_xxl", None)
    spec = dataclasses.replace(spec, dit=HunyuanDiTConfig.tiny())
    src = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in random_part(spec, "dit", 0).state_dict().items()}, src)
    dst = tmp_path / "hunyuanvideo_foley.safetensors"
    assert convert_main(["--fp8", str(src), str(dst)]) == 0
    assert is_fp8_file(dst) and not is_fp8_file(src)
    stored = load_file(dst)
    assert stored["single_blocks.0.linear2.w1.weight"].dtype == FP8
    assert stored["single_blocks.0.linear2.w1.weight_scale"].dtype == torch.float32
    on_load = load_dit(spec.dit, src, torch.bfloat16, fp8=True).state_dict()
    from_file = load_dit(spec.dit, dst, torch.bfloat16, fp8=True).state_dict()
    assert on_load.keys() == from_file.keys() == stored.keys()
    assert all(torch.equal(on_load[k].view(torch.uint8), from_file[k].view(torch.uint8)) for k in on_load)
    # model.path with only the fp8 file: the DiT loads as fp8 without hardware.weights=fp8
    with pytest.raises(Exception, match="vae_128d_48k"):  # the folder lacks the other parts; the DiT came first
        build_parts(spec, ("dit", "vae"), ModelConfig(name="hunyuan_xxl", path=str(tmp_path)), torch.device("cpu"))
    dit = build_parts(spec, ("dit",), ModelConfig(name="hunyuan_xxl", path=str(tmp_path)), torch.device("cpu"))["dit"]
    assert isinstance(dit.single_blocks[0].linear_qkv, Fp8Linear)


# --- offload ----------------------------------------------------------------------------------------


@torch.inference_mode()
def test_offloaded_forward_is_bit_identical(tiny, io):
    spec = ModelSpec.named("tiny")
    plain = build_parts(spec, ("dit",), ModelConfig(), torch.device("cpu"))["dit"]
    streamed = build_parts(spec, ("dit",), ModelConfig(), torch.device("cpu"), offload=True)["dit"]
    host = [p.data_ptr() for p in streamed.single_blocks[1].parameters()]
    seen = []
    streamed.single_blocks[1].register_forward_pre_hook(lambda m, a: seen.append([p.data_ptr() for p in m.parameters()]))
    inputs = [io[k] for k in INPUTS]
    assert torch.equal(streamed(*inputs), plain(*inputs))
    assert seen and not set(seen[0]) & set(host)  # the block ran on a copy, not on its host tensors
    assert [p.data_ptr() for p in streamed.single_blocks[1].parameters()] == host  # and went back afterwards
    fp8 = build_parts(spec, ("dit",), ModelConfig(), torch.device("cpu"), fp8=True)["dit"]
    fp8_streamed = build_parts(spec, ("dit",), ModelConfig(), torch.device("cpu"), fp8=True, offload=True)["dit"]
    assert torch.equal(fp8_streamed(*inputs), fp8(*inputs))
