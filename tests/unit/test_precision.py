"""Mixed precision: the DiT under bf16 autocast (sampler state and audio decoder fp32) stays close to fp32.

Measured on the tiny model, 4 Euler steps, CFG 4.5, seeds 0-3 (CPU, torch 2.13): the sampled
latents differ from the fp32 run by a relative L2 error of 3.7e-3 to 3.8e-3 (bf16 has 8 mantissa
bits: eps 7.8e-3), and the decoded audio by 9.1e-5 to 9.4e-5. The bounds below leave ~2.5x margin on
the latents and ~10x on the audio.
"""

from __future__ import annotations

import pytest
import torch

from foley_dist.config import ModelConfig
from foley_dist.engine.message import Message
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.stages import DiffusionStage, FusionStage
from tests.reference import relative_error

LATENT_RTOL = 1e-2
AUDIO_RTOL = 1e-3
STEPS = 4


@pytest.fixture(scope="module")
def setup():
    spec, cpu = ModelSpec.named("tiny"), torch.device("cpu")
    parts = build_parts(spec, ("text", "dit", "vae"), ModelConfig(), cpu)
    g = torch.Generator().manual_seed(0)
    meta = {"job": 0, "segment": 0, "start": 0.0, "end": 5.0, "seed": 0, "prompt": "rain on a tin roof"}
    feats = Message(0, {"clip_feat": torch.randn(1, 40, 768, generator=g),
                        "sync_feat": torch.randn(1, 120, 768, generator=g)}, meta)
    cond = FusionStage(spec, parts["text"], parts["dit"], "noisy, harsh")(feats)
    return spec, parts, cond


def _run(setup, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Audio, the latents the audio decoder received, its output and one DiT layer's output."""
    spec, parts, cond = setup
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        parts["vae"].register_forward_hook(lambda m, a, out: seen.update(latents=a[0], vae_out=out)),
        parts["dit"].final_layer.linear.register_forward_hook(lambda m, a, out: seen.update(dit_out=out)),
    ]
    try:
        stage = DiffusionStage(spec, parts["dit"], parts["vae"], STEPS, 4.5, torch.device("cpu"), dtype)
        seen["audio"] = stage(cond).tensors["audio"]
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_dit_stays_within_tolerance_of_fp32(setup):
    ref, bf16 = _run(setup, None), _run(setup, torch.bfloat16)
    assert ref["dit_out"].dtype == torch.float32 and bf16["dit_out"].dtype == torch.bfloat16  # autocast is on
    assert 0 < relative_error(bf16["latents"], ref["latents"]) < LATENT_RTOL
    assert relative_error(bf16["audio"], ref["audio"]) < AUDIO_RTOL


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_sampler_state_and_audio_decoder_stay_fp32(setup):
    _, parts, _ = setup
    out = _run(setup, torch.bfloat16)
    assert out["latents"].dtype == out["vae_out"].dtype == out["audio"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in parts["vae"].parameters())
    assert all(p.dtype == torch.float32 for p in parts["dit"].parameters())  # autocast casts per op, weights stay


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_dit_weights_as_the_release(setup):
    """The release casts the whole DiT to bf16 (half the memory): the same code path on CPU with
    precision=bf16; conditioning and sampling run under autocast, the sampler and VAE stay fp32."""
    spec, parts, cond = setup
    cpu = torch.device("cpu")
    half = build_parts(spec, ("text", "dit", "vae"), ModelConfig(), cpu, dit_dtype=torch.bfloat16)
    assert {p.dtype for p in half["dit"].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in half["vae"].parameters()} == {torch.float32}
    meta = {"job": 0, "segment": 0, "start": 0.0, "end": 5.0, "seed": 0, "prompt": "rain on a tin roof"}
    g = torch.Generator().manual_seed(0)
    feats = Message(0, {"clip_feat": torch.randn(1, 40, 768, generator=g),
                        "sync_feat": torch.randn(1, 120, 768, generator=g)}, meta)
    half_cond = FusionStage(spec, half["text"], half["dit"], "noisy, harsh", torch.bfloat16)(feats)
    audio = DiffusionStage(spec, half["dit"], half["vae"], STEPS, 4.5, cpu, torch.bfloat16)(half_cond).tensors["audio"]
    ref = _run(setup, None)["audio"]
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert relative_error(audio, ref) < 10 * AUDIO_RTOL  # weights rounded to bf16 as well as activations


@pytest.mark.parametrize("precision,conv", [("fp32", "ieee"), ("bf16", "tf32")])
def test_fp32_precision_turns_tf32_convolutions_off(precision, conv):
    """Issue 17 item 8: cuDNN convolutions default to TF32 on CUDA; precision=fp32 must mean IEEE
    fp32 for them and for matmuls (the flags are process-wide: the same code on CPU sets them)."""
    from foley_dist.config import GenerateConfig
    from foley_dist.runtime import build_stages

    flags = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = [f.fp32_precision for f in flags]
    cfg = GenerateConfig(video="unused.mp4")
    cfg.hardware.precision = precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "none" if precision == "fp32" else "ieee"
        build_stages(("fusion",), cfg, ModelSpec.named("tiny"), torch.device("cpu"), {})
        assert torch.backends.cudnn.conv.fp32_precision == conv
        if precision == "fp32":
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    finally:
        for f, value in zip(flags, before):
            f.fp32_precision = value
