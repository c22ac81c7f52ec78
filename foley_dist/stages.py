"""Pipeline stages: plain modules with `forward(message) -> message`.

They know nothing about ranks or torch.distributed: the runtime feeds them messages, whether they
came from a peer or from the stage before in the same process. Tensors crossing each boundary:

- work item -> vision: no tensors; meta {video, start, end, segment, seed, prompt}
- vision -> fusion: `clip_feat` [1, Tv, Dv] (visual fps), `sync_feat` [1, Ts, Ds]
- fusion -> diffusion: the DiT's conditioning for [uncond; cond] (batch 2), see HunyuanDiT.condition
- diffusion -> sink: `audio` [samples] float32 mono at the model's sample rate
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from foley_dist.message import Message
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec
from foley_dist.segments import Segment
from foley_dist.video import decode_segment, sample_times


def _segment(meta: dict) -> Segment:
    return Segment(meta["segment"], meta["start"], meta["end"])


class VisionStage(nn.Module):
    """Decode the segment's frames straight at encoder resolution, then visual + sync features."""

    name = "vision"

    def __init__(self, spec: ModelSpec, visual: nn.Module, sync: nn.Module, decoder: str, device: torch.device):
        super().__init__()
        self.spec, self.visual, self.sync, self.decoder, self.device = spec, visual, sync, decoder, device

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        seg, video = _segment(msg.meta), msg.meta["video"]
        size = self.spec.visual.image_size
        frames = decode_segment(video, sample_times(seg, self.spec.visual_fps), (size, size), "resize", self.decoder)
        clip_feat = self.visual(frames.to(self.device))
        size = self.spec.sync.image_size
        frames = decode_segment(video, sample_times(seg, self.spec.sync_fps), (size, size), "center_crop", self.decoder)
        sync_feat = self.sync(frames.to(self.device))
        return Message(msg.segment, {"clip_feat": clip_feat, "sync_feat": sync_feat}, msg.meta)


class FusionStage(nn.Module):
    """Text features (negative and positive prompt, cached per prompt) + the DiT's condition projections."""

    name = "fusion"

    def __init__(self, spec: ModelSpec, text: nn.Module, dit: nn.Module, negative_prompt: str):
        super().__init__()
        self.spec, self.text, self.dit, self.negative_prompt = spec, text, dit, negative_prompt
        self._prompt_cache: dict[tuple[str, str], torch.Tensor] = {}

    def encode_prompt(self, prompt: str, negative: str) -> torch.Tensor:
        """[negative; prompt] text features; consecutive segments share a prompt, so one entry suffices."""
        if (negative, prompt) not in self._prompt_cache:
            self._prompt_cache = {(negative, prompt): self.text([negative, prompt])}
        return self._prompt_cache[(negative, prompt)]

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        clip_feat, sync_feat = msg.tensors["clip_feat"], msg.tensors["sync_feat"]
        empty_clip, empty_sync = self.dit.empty_features(1, clip_feat.shape[1], sync_feat.shape[1])
        text = self.encode_prompt(msg.meta["prompt"], msg.meta.get("model.negative_prompt", self.negative_prompt))
        cond = self.dit.condition(
            text,
            torch.cat([empty_clip.to(clip_feat), clip_feat]),
            torch.cat([empty_sync.to(sync_feat), sync_feat]),
        )
        return Message(msg.segment, cond, msg.meta)


def segment_noise(seed: int, segment: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latents for one segment: a function of (seed, segment index) only, never of the rank."""
    mixed = int(np.random.SeedSequence([seed, segment]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randn(shape, generator=torch.Generator().manual_seed(mixed))


class DiffusionStage(nn.Module):
    """Flow-matching sampling with classifier-free guidance, then the audio decoder."""

    name = "diffusion"

    def __init__(self, spec: ModelSpec, dit: nn.Module, vae: nn.Module, steps: int, guidance_scale: float,
                 device: torch.device, autocast_dtype: torch.dtype | None):
        super().__init__()
        self.spec, self.dit, self.vae = spec, dit, vae
        self.steps, self.guidance_scale, self.device, self.autocast_dtype = steps, guidance_scale, device, autocast_dtype

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        seg = _segment(msg.meta)
        frames = round(seg.seconds * self.spec.latent_rate)
        noise = segment_noise(msg.meta["seed"], seg.index, (1, self.spec.dit.audio_vae_latent_dim, frames)).to(self.device)
        cond = msg.tensors
        steps = msg.meta.get("model.steps", self.steps)  # per-item overrides from a batch manifest
        guidance_scale = msg.meta.get("model.guidance_scale", self.guidance_scale)
        if guidance_scale <= 1:  # no guidance: only the conditional half of [uncond; cond] is used
            cond = {k: v[1:] for k, v in cond.items()}

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with torch.autocast(self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                return self.dit.velocity(x, t, cond).float()

        latents = sample(velocity, noise, steps, guidance_scale)
        audio = self.vae(latents.float())[0].reshape(-1)
        return Message(msg.segment, {"audio": audio.float()}, msg.meta)
