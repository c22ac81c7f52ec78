"""Pipeline stages: plain modules with `forward(message) -> message`.

They know nothing about ranks or torch.distributed: the runtime feeds them messages, whether they
came from a peer or from the stage before in the same process. Tensors crossing each boundary:

- work item -> vision: no tensors; meta {video, start, end, segment, seed, prompt}
- vision -> fusion: `clip_feat` [1, Tv, Dv] (visual fps), `sync_feat` [1, Ts, Ds]
- fusion -> diffusion: the DiT's conditioning for [uncond; cond] (batch 2), see HunyuanDiT.condition
- diffusion -> sink: `audio` [samples] float32 mono at the model's sample rate
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterator

import numpy as np
import torch
from torch import nn

from foley_dist import mediaguard
from foley_dist.cache import FeatureCache, cache_root, feature_key, file_identity
from foley_dist.config import VisionConfig
from foley_dist.errors import FoleyError
from foley_dist.framesampling import STATIC_THRESHOLD, adaptive_plan, fixed_plan, resample, thumbnails
from foley_dist.joint import LocalChannel, StepChannel, overlap_exchange, split_velocity, timeline_noise
from foley_dist.message import Message
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec
from foley_dist.segments import Segment
from foley_dist.tiling import MAX_TILES, encode_tiled, plan_grid
from foley_dist.video import decode_segment, iter_frames, probe, sample_times


def _segment(meta: dict) -> Segment:
    return Segment(meta["segment"], meta["start"], meta["end"])


class VisionStage(nn.Module):
    """Decode the segment's frames and encode visual + sync features, or read them from the cache.

    `vision` picks the variants (see VisionConfig): tiled high-resolution visual encoding
    (foley_dist.tiling), adaptive sync-frame sampling (foley_dist.framesampling) and the on-disk
    feature cache (foley_dist.cache); `model_id` names the weights in the cache key. Every variant
    yields the same shapes: clip_feat [1, seconds * visual_fps, D], sync_feat [1, 24 * seconds, D].
    Meta gains `cached`, `sync_frames_saved` (fraction of 25 fps sync frames not decoded) and
    `frames_skipped` (damaged or missing source frames in the segment, see foley_dist.mediaguard).
    """

    name = "vision"

    def __init__(self, spec: ModelSpec, visual: nn.Module, sync: nn.Module, decoder: str, device: torch.device,
                 vision: VisionConfig, model_id: str):
        super().__init__()
        _check_vision(vision)
        self.spec, self.visual, self.sync, self.decoder, self.device = spec, visual, sync, decoder, device
        self.vision = vision
        self.cache = None if vision.cache == "off" else FeatureCache(cache_root(vision.cache), int(vision.cache_max_gb * 2**30))
        self.cache_hits = self.cache_misses = 0
        self.settings = {  # everything besides the video and the segment bounds that the features depend on
            "model": model_id, "visual": asdict(spec.visual), "sync": asdict(spec.sync), "visual_fps": spec.visual_fps,
            "sync_fps": spec.sync_fps, "decoder": decoder, "device": device.type,
            "tiling": {"tile_size": vision.tile_size, "overlap_ratio": vision.overlap_ratio,
                       "tile_batch": vision.tile_batch, "max_tiles": MAX_TILES} if vision.tiling else None,
            "sampling": {"min_sync_fps": vision.min_sync_fps, "threshold": STATIC_THRESHOLD}
            if vision.frame_sampling == "adaptive" else "fixed",
        }

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        seg, video = _segment(msg.meta), msg.meta["video"]
        identity = (msg.meta.get("video_id") or file_identity(video)) if self.cache else None  # runtime broadcasts it
        key = feature_key(identity, seg.start, seg.end, self.settings) if self.cache else None
        hit = self.cache.get(key) if self.cache else None
        if hit is not None:
            self.cache_hits += 1
            tensors, meta = hit
            return Message(msg.segment, {k: v.to(self.device) for k, v in tensors.items()},
                           {**msg.meta, "cached": True, "sync_frames_saved": float(meta["sync_frames_saved"]),
                            "frames_skipped": int(meta.get("frames_skipped", 0))})
        skipped = [mediaguard.frames_skipped()]
        clip_feat, thumbs = self._visual_features(video, seg)
        skipped.append(mediaguard.frames_skipped())
        grid = sample_times(seg, self.spec.sync_fps)
        if thumbs is None:
            plan = fixed_plan(grid)
        else:
            plan = adaptive_plan(grid, self.spec.sync_fps, sample_times(seg, self.spec.visual_fps), thumbs,
                                 self.vision.min_sync_fps)
        size = self.spec.sync.image_size
        frames = decode_segment(video, plan.times, (size, size), "center_crop", self.decoder)
        skipped.append(mediaguard.frames_skipped())
        # both decode passes cover the segment: a damaged frame shows up in each, count it once
        frames_skipped = max(skipped[1] - skipped[0], skipped[2] - skipped[1])
        sync_feat = self.sync(resample(frames, plan).to(self.device))
        tensors = {"clip_feat": clip_feat, "sync_feat": sync_feat}
        if self.cache:
            self.cache_misses += 1
            self.cache.put(key, tensors, {"sync_frames_saved": repr(plan.saved), "frames_skipped": str(frames_skipped)})
        return Message(msg.segment, tensors, {**msg.meta, "cached": False, "sync_frames_saved": plan.saved,
                                              "frames_skipped": frames_skipped})

    def _visual_features(self, video: str, seg: Segment) -> tuple[torch.Tensor, torch.Tensor | None]:
        """clip_feat [1, T, D], plus motion thumbnails of the same frames when sampling is adaptive."""
        times, size = sample_times(seg, self.spec.visual_fps), self.spec.visual.image_size
        adaptive = self.vision.frame_sampling == "adaptive"
        if not self.vision.tiling:
            frames = decode_segment(video, times, (size, size), "resize", self.decoder)
            return self.visual(frames.to(self.device)), thumbnails(frames) if adaptive else None
        info = probe(video)
        grid = plan_grid(info.height, info.width, self.vision.tile_size, self.vision.overlap_ratio)
        thumbs: list[torch.Tensor] = []

        def frames() -> Iterator[torch.Tensor]:
            for frame in iter_frames(video, times, (grid.height, grid.width)):
                if adaptive:
                    thumbs.append(thumbnails(frame[None]))
                yield frame

        clip_feat = encode_tiled(lambda x: self.visual(x.to(self.device))[0], frames(), grid, size,
                                 self.vision.tile_batch)
        return clip_feat, torch.cat(thumbs) if adaptive else None


def _check_vision(v: VisionConfig) -> None:
    problems = []
    if v.frame_sampling not in ("fixed", "adaptive"):
        problems.append(f"vision.frame_sampling={v.frame_sampling!r} must be 'fixed' or 'adaptive'")
    if not v.min_sync_fps > 0:
        problems.append(f"vision.min_sync_fps={v.min_sync_fps} must be > 0 (default 15)")
    if v.tile_size < 1 or v.tile_batch < 1:
        problems.append(f"vision.tile_size={v.tile_size} and vision.tile_batch={v.tile_batch} must be >= 1")
    if not 0 <= v.overlap_ratio < 1:
        problems.append(f"vision.overlap_ratio={v.overlap_ratio} must be >= 0 and < 1 (default 0.2)")
    if not v.cache_max_gb > 0:
        problems.append(f"vision.cache_max_gb={v.cache_max_gb} must be > 0; use vision.cache=off to disable the cache")
    if problems:
        raise FoleyError("; ".join(problems))


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


SEAM_MODES = ("crossfade", "joint")


def segment_noise(seed: int, segment: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latents for one segment: a function of (seed, segment index) only, never of the rank."""
    mixed = int(np.random.SeedSequence([seed, segment]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randn(shape, generator=torch.Generator().manual_seed(mixed))


class DiffusionStage(nn.Module):
    """Flow-matching sampling with classifier-free guidance, then the audio decoder.

    `seam=joint` samples neighbouring segments of a job on one latent timeline (foley_dist.joint),
    exchanging overlap latents every step through `channel`, which the runtime injects (a local one
    by default). `cfg_split` evaluates the CFG branches one at a time; with a channel whose `branch`
    is set (CFG-parallel) this rank evaluates only that branch and only branch 1's rank decodes audio.
    """

    name = "diffusion"
    relays_errors = True  # the engine calls forward for an item that failed upstream (see _relay)

    def __init__(self, spec: ModelSpec, dit: nn.Module, vae: nn.Module, steps: int, guidance_scale: float,
                 device: torch.device, autocast_dtype: torch.dtype | None, seam: str = "crossfade",
                 cfg_split: bool = False):
        super().__init__()
        if seam not in SEAM_MODES:
            raise FoleyError(f"seam={seam!r} is not one of {', '.join(SEAM_MODES)}")
        self.spec, self.dit, self.vae = spec, dit, vae
        self.steps, self.guidance_scale, self.device, self.autocast_dtype = steps, guidance_scale, device, autocast_dtype
        self.seam, self.cfg_split = seam, cfg_split
        self.channel: StepChannel = LocalChannel()

    def latent_span(self, start: float, end: float) -> tuple[int, int]:
        """(offset on the job's latent timeline, length) of the segment [start, end) in latent frames."""
        return round(start * self.spec.latent_rate), round((end - start) * self.spec.latent_rate)

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        seg = _segment(msg.meta)
        span = self.latent_span(seg.start, seg.end)
        channels = self.spec.dit.audio_vae_latent_dim
        if self.seam == "joint":
            noise = timeline_noise(msg.meta["seed"], span[0], span[1], channels).to(self.device)
        else:
            noise = segment_noise(msg.meta["seed"], seg.index, (1, channels, span[1])).to(self.device)
        cond = msg.tensors
        steps = msg.meta.get("model.steps", self.steps)  # per-item overrides from a batch manifest
        guidance_scale = msg.meta.get("model.guidance_scale", self.guidance_scale)
        use_cfg = guidance_scale > 1
        if not use_cfg:  # no guidance: only the conditional half of [uncond; cond] is used
            cond = {k: v[1:] for k, v in cond.items()}
        parallel = use_cfg and self.channel.branch is not None

        def velocity(x: torch.Tensor, t: torch.Tensor, branch: int | None = None) -> torch.Tensor:
            c = cond if branch is None else {k: v[branch : branch + 1] for k, v in cond.items()}
            with torch.autocast(self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                return self.dit.velocity(x, t, c).float()

        if "error" in msg.meta:
            return self._relay(msg, span, noise, steps)
        exchange, head, tails = None, 0, []
        if self.seam == "joint":
            prev, nxt = msg.meta.get("joint_prev"), msg.meta.get("joint_next")
            exchange, head, _ = overlap_exchange(self.channel, msg.segment, span,
                                                 self.latent_span(*prev) if prev else None,
                                                 self.latent_span(*nxt) if nxt else None, tails)
        self.channel.open(msg.segment, steps, (1, channels, head) if head else None,
                          (1, channels, span[1]) if parallel else None)
        if use_cfg and (self.cfg_split or parallel):
            velocity = split_velocity(velocity, self.channel if parallel else None, msg.segment)
        latents = sample(velocity, noise, steps, guidance_scale, exchange=exchange)
        if parallel and self.channel.branch == 0:  # the partner's copy of the latents: branch 1's rank decodes
            return Message(msg.segment, {}, msg.meta)
        audio = self.vae(latents.float())[0].reshape(-1)
        out = {"audio": audio.float(), "latents": latents[0]}
        if tails:  # joint: what the next segment needs from this one, kept by the sink for resume
            out["tails"] = torch.stack(tails)
        return Message(msg.segment, out, msg.meta)

    def _relay(self, msg: Message, span: tuple[int, int], noise: torch.Tensor, steps: int) -> Message:
        """An item that failed upstream (its job has failed): under seam=joint, still take the previous
        segment's tails and hand on this one's (its noise), so neighbours never wait for messages that
        would not come; the next segments of the job finish as garbage the sink drops."""
        if self.seam == "joint":
            prev, nxt = msg.meta.get("joint_prev"), msg.meta.get("joint_next")
            exchange, head, _ = overlap_exchange(self.channel, msg.segment, span,
                                                 self.latent_span(*prev) if prev else None,
                                                 self.latent_span(*nxt) if nxt else None)
            self.channel.open(msg.segment, steps, (1, noise.shape[1], head) if head else None, None)
            for step in range(steps + 1):
                exchange(step, noise)
        return msg
