"""HunyuanVideo-Foley DiT: checkpoint-layout parity, numerical parity with the official model, cost model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from foley_dist.errors import FoleyError
from foley_dist.models.checkpoint import load_into, load_state_dict
from foley_dist.models.hunyuan_blocks import RopeTables
from foley_dist.models.hunyuan_cost import TokenCounts
from foley_dist.models.hunyuan_dit import (
    HunyuanDiT,
    HunyuanDiTConfig,
    condition_flops,
    forward_flops,
    param_count,
    segment_flops,
    velocity_flops,
)
from foley_dist.models.hunyuan_layers import apply_rope, rope_table
from tests.reference import reference_file, relative_error

REPO = Path(__file__).resolve().parents[2]
INPUTS = ("x", "t", "cond", "clip_feat", "sync_feat")


@pytest.fixture(scope="module")
def tiny() -> HunyuanDiT:
    with torch.device("meta"):
        model = HunyuanDiT(HunyuanDiTConfig.tiny())
    weights = reference_file("hvf_tiny_weights.safetensors")
    load_into(model, load_state_dict(weights), "DiT", source=weights)
    return model.eval()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(reference_file("hvf_tiny_io.safetensors"))


@pytest.fixture(scope="module")
def tiny_out(tiny, io) -> torch.Tensor:
    with torch.inference_mode():
        return tiny(*(io[name] for name in INPUTS))


@pytest.mark.parametrize("name, make", [("xl", HunyuanDiTConfig.xl), ("xxl", HunyuanDiTConfig.xxl)])
def test_state_dict_matches_official_manifest(name, make):
    manifest = json.loads(reference_file(f"hunyuanvideo_foley_{name}_state_dict.json").read_text())
    cfg = make()
    with torch.device("meta"):
        model = HunyuanDiT(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest["state_dict_shapes"]
    assert sorted(set(shapes) - set(expected)) == [] and sorted(set(expected) - set(shapes)) == []
    assert shapes == expected
    assert len(shapes) == manifest["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]
    assert param_count(cfg) == manifest["num_params"]


def test_tiny_config_is_reference_json():
    assert HunyuanDiTConfig.from_file(reference_file("hvf_tiny_config.json")) == HunyuanDiTConfig.tiny()
    weights = load_file(reference_file("hvf_tiny_weights.safetensors"))
    assert param_count(HunyuanDiTConfig.tiny()) == sum(t.numel() for t in weights.values())


def test_config_rejects_unknown_and_unsupported(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"model_kwargs": {"hidden_size": 128, "num_heads": 2, "hiden_size": 3}}))
    with pytest.raises(FoleyError, match="unknown model_kwargs.*hiden_size"):
        HunyuanDiTConfig.from_file(path)
    with pytest.raises(FoleyError, match="sync_modulation"):
        HunyuanDiTConfig(sync_modulation=True)
    with pytest.raises(FoleyError, match="divisible"):
        HunyuanDiTConfig(hidden_size=130, num_heads=4)
    nested = HunyuanDiTConfig.from_dict({"model_config": {"model_kwargs": {"rope_dim_list": [128]}}})
    assert nested.rope_dim_list == (128,)


def test_tiny_matches_official_output(tiny_out, io):
    out = tiny_out
    err = relative_error(out, io["out"])
    max_abs = (out - io["out"]).abs().max().item()
    print(f"tiny DiT vs official fp32 output: relative L2 error {err:.3e}, max abs {max_abs:.3e}")
    assert out.shape == io["out"].shape
    assert err < 1e-5


def test_forward_is_velocity_of_condition_bit_exact(tiny, tiny_out, io):
    with torch.inference_mode():
        conditioning = tiny.condition(io["cond"], io["clip_feat"], io["sync_feat"])
        split = tiny.velocity(io["x"], io["t"], conditioning)
    assert set(conditioning) == {"text", "visual", "sync"}
    batch = io["x"].shape[0]
    assert all(v.shape[0] == batch and v.shape[-1] == tiny.config.hidden_size for v in conditioning.values())
    assert torch.equal(split, tiny_out)
    with pytest.raises(ValueError, match="conditioning batch 2 does not match latents batch 1"):
        tiny.velocity(io["x"][:1], io["t"][:1], conditioning)


def test_batch_rows_are_independent_and_scalar_t(tiny, tiny_out, io):
    """Row 1 alone equals row 1 of the batch (a runtime may regroup segments); scalar t broadcasts."""
    full = tiny_out
    with torch.inference_mode():
        row = tiny(*(io[name][1:] for name in INPUTS))
        scalar = tiny(io["x"][1:], io["t"][1], io["cond"][1:], io["clip_feat"][1:], io["sync_feat"][1:])
    torch.testing.assert_close(row, full[1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(scalar, row)


def test_empty_features_are_the_learned_vectors(tiny):
    clip, sync = tiny.empty_features(3, 40, 120)
    assert clip.shape == (3, 40, 768) and sync.shape == (3, 120, 768)
    assert torch.equal(clip[2, 17], tiny.empty_clip_feat[0]) and torch.equal(sync[0, 5], tiny.empty_sync_feat[0])
    clip, sync = tiny.empty_features(1)
    assert clip.shape[1] == tiny.config.clip_length and sync.shape[1] == tiny.config.sync_length


@pytest.mark.parametrize("audio_len, visual_len", [(250, 40), (20, 7), (16, 16), (10, 24), (33, 32)])
def test_rope_gather_equals_official_interleave_resize(audio_len, visual_len):
    """Our index-gather RoPE == resize visual to audio length, interleave, rotate, de-interleave, resize back."""
    heads, dim = 2, 16
    a = torch.randn(2, audio_len, heads, dim)
    v = torch.randn(2, visual_len, heads, dim)

    def resize(x: torch.Tensor, n: int) -> torch.Tensor:
        b, l, h, d = x.shape
        y = F.interpolate(x.reshape(b, l, h * d).transpose(1, 2), size=n, mode="nearest-exact")
        return y.transpose(1, 2).reshape(b, n, h, d)

    joint = torch.stack((a, resize(v, audio_len)), dim=2).reshape(2, 2 * audio_len, heads, dim)
    cos, sin = rope_table(torch.arange(2 * audio_len), dim, 10000.0)
    joint = apply_rope(joint, cos[:, None], sin[:, None]).reshape(2, audio_len, 2, heads, dim)
    want_a, want_v = joint[:, :, 0], resize(joint[:, :, 1], visual_len)

    rope = RopeTables.build(audio_len, visual_len, 5, dim, 10000.0, torch.device("cpu"))
    got_a = apply_rope(a, rope.self_audio[0][:, None], rope.self_audio[1][:, None])
    got_v = apply_rope(v[:, rope.visual_index], rope.self_visual[0][:, None], rope.self_visual[1][:, None])
    assert torch.equal(got_a, want_a) and torch.equal(got_v, want_v)


def test_dit_forward_script(tmp_path, io):
    spec = importlib.util.spec_from_file_location("dit_forward", REPO / "scripts" / "dit_forward.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_path = tmp_path / "out.safetensors"
    script.main([str(reference_file("hvf_tiny_config.json")), str(reference_file("hvf_tiny_weights.safetensors")),
                 str(reference_file("hvf_tiny_io.safetensors")), str(out_path)])
    assert relative_error(load_file(out_path)["out"], io["out"]) < 1e-5


def test_flops_match_counted_matmuls(tiny, io):
    """The analytic count equals torch's matmul/conv count plus the attention products it skips on CPU."""
    cfg, seconds = tiny.config, io["x"].shape[-1] / tiny.config.audio_frame_rate
    n = TokenCounts.for_seconds(cfg, seconds)
    assert (n.audio, n.visual, n.sync, n.text) == (250, 40, 120, 77)
    sample = {name: io[name][:1] for name in INPUTS}
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            conditioning = tiny.condition(sample["cond"], sample["clip_feat"], sample["sync_feat"])
        counted_condition = counter.get_total_flops()
        counter = FlopCounterMode(display=False)
        with counter:
            tiny.velocity(sample["x"], sample["t"], conditioning)
        counted_velocity = counter.get_total_flops()
    sdpa_counted = any("attention" in str(op) for op in counter.get_flop_counts()["Global"])
    c, joint = cfg.hidden_size, n.audio + n.visual
    attention = 4 * c * (cfg.depth_triple_blocks * (joint * joint + joint * n.text)
                         + cfg.depth_single_blocks * n.audio ** 2)
    assert condition_flops(cfg, seconds) == counted_condition
    assert velocity_flops(cfg, seconds) == counted_velocity + (0 if sdpa_counted else attention)


@pytest.mark.parametrize("make", [HunyuanDiTConfig.xl, HunyuanDiTConfig.xxl])
def test_flops_are_sane(make):
    cfg = make()
    params = param_count(cfg)
    step = velocity_flops(cfg, 5.0)
    print(f"{cfg.hidden_size=}: {params / 1e9:.3f} B params, "
          f"5 s: condition {condition_flops(cfg, 5.0) / 1e9:.2f} GFLOP, "
          f"velocity {step / 1e12:.3f} TFLOP, forward {forward_flops(cfg, 5.0) / 1e12:.3f} TFLOP, "
          f"segment (50 steps, CFG) {segment_flops(cfg, 5.0, 50) / 1e15:.3f} PFLOP")
    # Roughly 2 FLOPs per parameter per token: audio weights see 250 tokens, visual ones 40, + attention.
    assert params * 250 < step < 2 * params * (250 + 40) * 1.2
    assert forward_flops(cfg, 5.0) == condition_flops(cfg, 5.0) + step
    assert 2 * step < velocity_flops(cfg, 10.0) < 2.5 * step  # attention makes it superlinear
    assert segment_flops(cfg, 5.0, 50) == 2 * (condition_flops(cfg, 5.0) + 50 * step)


def test_fusion_rank_dit_reads_and_keeps_only_the_condition_projections(tmp_path):
    """The fusion rank loads just the condition tensors of a release checkpoint and gives the same
    conditioning as the whole DiT."""
    from safetensors.torch import save_file

    from foley_dist.models.foley import ModelSpec, _official_part
    from foley_dist.models.hunyuan_dit import strip_to_condition

    spec = ModelSpec.named("tiny")
    torch.manual_seed(0)
    full = HunyuanDiT(spec.dit).eval()
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "hunyuanvideo_foley.safetensors"))
    part = _official_part(spec, "dit_condition", tmp_path, torch.device("cpu"))
    assert sum(p.numel() for p in part.parameters()) < sum(p.numel() for p in full.parameters()) / 5
    assert all(p.device.type == "cpu" for p in part.parameters())  # nothing left on the meta device
    g = torch.Generator().manual_seed(1)
    text, clip, sync = (torch.randn(2, n, 768, generator=g) for n in (9, 40, 120))
    with torch.no_grad():
        a, b = part.condition(text, clip, sync), full.condition(text, clip, sync)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(part.empty_features(1, 40, 120), full.empty_features(1, 40, 120)))
    assert strip_to_condition(full).triple_blocks is None


def test_random_condition_part_draws_the_whole_dits_weights_without_building_it():
    """A fusion rank of a random model builds only the condition projections (built before the blocks,
    so the same seed gives the same weights as in the whole DiT the diffusion rank builds)."""
    from foley_dist.models.foley import ModelSpec, random_part
    from foley_dist.models.hunyuan_dit import strip_to_condition

    spec = ModelSpec.named("tiny")
    part = random_part(spec, "dit_condition", 3)
    whole = strip_to_condition(random_part(spec, "dit", 3)).state_dict()
    assert part.config == spec.dit and part.state_dict().keys() == whole.keys()
    assert all(torch.equal(v, whole[k]) for k, v in part.state_dict().items())


@pytest.mark.parametrize("part", ["dit", "dit_condition"])
def test_random_dit_cast_while_built_equals_built_then_cast(part):
    """The random DiT is cast layer by layer as it is built (no whole fp32 copy); the values are the
    fp32 initialisation rounded, bit for bit as casting the finished fp32 model."""
    from foley_dist.models.foley import ModelSpec, random_part

    spec = ModelSpec.named("tiny")
    cast = random_part(spec, part, 5, dtype=torch.bfloat16).to(torch.bfloat16).state_dict()
    ref = random_part(spec, part, 5).to(torch.bfloat16).state_dict()
    assert cast.keys() == ref.keys() and all(torch.equal(v, ref[k]) for k, v in cast.items())
    blocks = random_part(spec, "dit", 5, dtype=torch.bfloat16).triple_blocks
    assert {p.dtype for p in blocks.parameters()} == {torch.bfloat16}  # cast while built, before any .to
