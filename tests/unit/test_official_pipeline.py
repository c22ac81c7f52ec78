"""Every step of the release's own pipeline, reproduced on its tiny random release folder
(tests/data/reference/official_pipeline: the clip, the release's outputs, how each was made).

The release folder is written by our generator (foley_dist.models.release_folder) from the manifest
and must equal the reference release byte for byte. Timestamps and token ids must match exactly,
tensors to a relative error < 1e-4 (the reference's own thread-count noise is ~4e-6). The
Synchformer features are checked end to end (tests/distributed/test_release_exact.py): its
real-size visual branch takes about a minute on one CPU thread.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from foley_dist.cli import main as cli_main
from foley_dist.config import ModelConfig
from foley_dist.errors import FoleyError
from foley_dist.media.preprocess import siglip_frame, sync_frame
from foley_dist.media.video import release_picks
from foley_dist.models.clap import TextEncoder
from foley_dist.models.dac_vae import AudioDecoder
from foley_dist.models.flow import flow_schedule, sample
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.models.hunyuan_config import HunyuanDiTConfig
from foley_dist.models.siglip import VisualEncoder, normalize_frames
from foley_dist.stages import latent_frames
from tests.reference import OFFICIAL, relative_error

TOL = 1e-4
CLIP = OFFICIAL / "clip.mp4"
META = json.loads((OFFICIAL / "meta.json").read_text())
PROMPT, NEGATIVE = META["prompt"], META["negative_prompt"]


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(OFFICIAL / "expected.safetensors")


@pytest.fixture(scope="module")
def frames() -> dict[str, list]:
    """One pass over the clip with both of the release's rates (8 fps SigLIP2, 25 fps Synchformer)."""
    out = {"siglip_times": [], "sync_times": [], "siglip": [], "sync": []}
    for t, rgb, (n_visual, n_sync) in release_picks(CLIP, 0.0, 15.0, (8, 25)):
        out["siglip_times"] += [t] * n_visual
        out["siglip"] += [siglip_frame(rgb, 512)] * n_visual
        out["sync_times"] += [t] * n_sync
        out["sync"] += [sync_frame(rgb, 224)] * n_sync
    return out


def test_generated_release_is_byte_identical_to_the_reference(release_dir):
    files = META["release"]["files"]
    for name, want in files.items():
        digest = hashlib.sha256((release_dir / name).read_bytes()).hexdigest()
        assert digest == want["sha256"], f"{name} differs from the reference release"
    assert len(files) == 13


def test_frame_picks_are_the_release_picks(frames, expected):
    """Exact timestamps, quirks included: accumulated 1/25 targets skip the frames at 0.24 s and
    0.72 s and take the one at 0.28 s twice, so 59 of 60 frames are picked."""
    for key in ("siglip_times", "sync_times"):
        assert torch.equal(torch.tensor(frames[key], dtype=torch.float64), expected[key]), key
    sync = [round(t, 2) for t in frames["sync_times"]]
    assert len(sync) == 59 and 0.24 not in sync and 0.72 not in sync and sync.count(0.28) == 2
    assert latent_frames(len(sync), 25, 50) == META["latent_length"] == 118


def test_preprocessing_matches_the_release_inputs(frames, expected):
    """Per-frame channel means of the normalised encoder inputs (float64) equal the release's."""
    siglip = normalize_frames(torch.stack(frames["siglip"]))  # ToTensor + Normalize(0.5, 0.5)
    assert siglip.shape == (19, 3, 512, 512)
    # float64 means: only their summation order (torch version, CPU vector width) may differ; a pixel one
    # level off moves its frame's mean by 1e-7 relative or more, far above this bound
    torch.testing.assert_close(siglip.double().mean(dim=(2, 3)), expected["siglip_pixel_mean"], rtol=1e-12, atol=0)
    sync = torch.stack(frames["sync"]).float().mul_(1.0 / 255).sub_(0.5).div_(0.5)  # as SyncEncoder.forward
    assert sync.shape == (59, 3, 224, 224)
    torch.testing.assert_close(sync.double().mean(dim=(2, 3)), expected["sync_pixel_mean"], rtol=1e-12, atol=0)


def test_siglip2_and_clap_features(release_dir, frames, expected):
    visual = VisualEncoder.from_pretrained_dir(release_dir / "siglip2")
    assert relative_error(visual(torch.stack(frames["siglip"])), expected["clip_feat"]) < TOL
    text = TextEncoder.from_pretrained_dir(release_dir / "clap", fixed_length=False)
    tokens = text.tokenize([NEGATIVE, PROMPT])  # one padded batch, as the release tokenizes
    assert torch.equal(tokens["input_ids"], expected["text_input_ids"])
    assert torch.equal(tokens["attention_mask"], expected["text_attention_mask"])
    feats = text([NEGATIVE, PROMPT])
    assert relative_error(feats[:1], expected["uncond_text_feat"]) < TOL
    assert relative_error(feats[1:], expected["text_feat"]) < TOL


def test_dit_sampler_and_vae(release_dir, expected):
    spec = ModelSpec.named("hunyuan_xxl", release_dir / "config.yaml")
    cfg = ModelConfig(name="hunyuan_xxl", path=str(release_dir), config=str(release_dir / "config.yaml"))
    parts = build_parts(spec, ("dit", "vae"), cfg, torch.device("cpu"))
    dit, vae = parts["dit"], parts["vae"]
    clip, sync = expected["clip_feat"], expected["sync_feat"]
    empty_clip, empty_sync = dit.empty_features(1, clip.shape[1], sync.shape[1])
    cond = dit.condition(torch.cat([expected["uncond_text_feat"], expected["text_feat"]]),
                         torch.cat([empty_clip, clip]), torch.cat([empty_sync, sync]))
    noise = load_file(OFFICIAL / "noise.safetensors")["noise"]
    timesteps, _ = flow_schedule(6)
    torch.testing.assert_close(timesteps, expected["timesteps"], rtol=1e-6, atol=0)  # float32 linspace: ulp rounding
    with torch.inference_mode():
        first = dit.velocity(torch.cat([noise, noise]), timesteps[0].repeat(2), cond)
        latents = sample(lambda x, t: dit.velocity(x, t, cond), noise, 6, 4.5)
        audio = vae(latents)
    assert relative_error(first[:1], expected["first_step_pred_uncond"]) < TOL
    assert relative_error(first[1:], expected["first_step_pred_cond"]) < TOL
    assert relative_error(latents, expected["latents"]) < TOL
    assert audio.shape == (1, 118 * 960) and relative_error(audio, expected["audio"]) < TOL


def test_converted_vae_keeps_its_hyperparameters(release_dir, tmp_path, expected):
    """The release writes the VAE as {"state_dict", "metadata": {"kwargs"}}; the converter keeps the
    kwargs, so the .safetensors copy loads (it is preferred over the .pth) and decodes identically."""
    src = release_dir / "vae_128d_48k.pth"
    cli_main(["convert", str(src), str(tmp_path / "vae_128d_48k.safetensors")])
    pth, st = AudioDecoder.from_official(src), AudioDecoder.from_official(tmp_path / "vae_128d_48k.safetensors")
    assert pth.config == st.config and st.config.decoder_dim == 64
    with torch.inference_mode():
        assert torch.equal(pth(expected["latents"]), st(expected["latents"]))


def test_xl_reads_its_own_checkpoint_name(release_dir, tmp_path):
    """XL's DiT is hunyuanvideo_foley_xl.pth in the release; XXL's hunyuanvideo_foley.pth."""
    config = str(release_dir / "config.yaml")
    spec = ModelSpec.named("hunyuan_xl", config)
    cfg = ModelConfig(name="hunyuan_xl", path=str(tmp_path), config=config)
    shutil.copy(release_dir / "hunyuanvideo_foley.pth", tmp_path / "hunyuanvideo_foley.pth")
    with pytest.raises(FoleyError, match="no hunyuanvideo_foley_xl.safetensors or hunyuanvideo_foley_xl.pth"):
        build_parts(spec, ("dit",), cfg, torch.device("cpu"))
    (tmp_path / "hunyuanvideo_foley.pth").rename(tmp_path / "hunyuanvideo_foley_xl.pth")
    dit = build_parts(spec, ("dit",), cfg, torch.device("cpu"))["dit"]
    assert dit.config.hidden_size == 64 and not any(p.is_meta for p in dit.parameters())


def test_builtin_configs_are_the_release_architectures():
    assert HunyuanDiTConfig.builtin("xl") == HunyuanDiTConfig.xl() == ModelSpec.named("hunyuan_xl").dit
    assert HunyuanDiTConfig.builtin("xxl") == HunyuanDiTConfig.xxl() == ModelSpec.named("hunyuan_xxl").dit
    assert ModelSpec.named("hunyuan_xl").dit_file == "hunyuanvideo_foley_xl"


def test_bad_config_yaml_is_one_line(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("model_config:\n  model_kwargs:\n    hidden_size: 64\n    num_heads: 3\n")
    with pytest.raises(FoleyError, match="hidden_size 64 is not divisible by num_heads 3"):
        HunyuanDiTConfig.from_file(bad)
    bad.write_text("model_config:\n  model_kwargs:\n    depth_tripel_blocks: 1\n")
    with pytest.raises(FoleyError, match="unknown model_kwargs \\['depth_tripel_blocks'\\]"):
        HunyuanDiTConfig.from_file(bad)
