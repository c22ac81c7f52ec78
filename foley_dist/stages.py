"""Pipeline stages: plain modules with `forward(message) -> message`.

They know nothing about ranks or torch.distributed: the runtime feeds them messages, whether they
came from a peer or from the stage before in the same process. Tensors crossing each boundary:

- work item -> vision: no tensors; meta {video, start, end, segment, seed, prompt}
- vision -> fusion: `clip_feat` [1, Tv, Dv] (visual fps), `sync_feat` [1, Ts, Ds], `siglip_times` /
  `sync_times` (float64 source times of the frames used); meta `latent_frames` (the audio length)
- fusion -> diffusion: the DiT's conditioning for [uncond; cond] (batch 2), see HunyuanDiT.condition
- diffusion -> sink: `audio` [samples] float32 mono at the model's sample rate

With `dump`, every stage also forwards its inputs and adds its outputs under `dump.` keys, and the
sink writes them per segment (the reproduction interface, README "Reproducing the release").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from foley_dist.config import VisionConfig
from foley_dist.engine.message import Message
from foley_dist.engine.protocol import window_order
from foley_dist.errors import FoleyError
from foley_dist.media import mediaguard
from foley_dist.media.cache import FeatureCache, cache_root, feature_key, file_identity
from foley_dist.media.frameprep import FramePrep, Recipe, resolve_workers
from foley_dist.media.framesampling import STATIC_THRESHOLD, adaptive_plan, fixed_plan, resample, thumbnails
from foley_dist.media.preprocess import SIGLIP_RESIZES
from foley_dist.media.segments import Segment
from foley_dist.media.tiling import MAX_TILES, encode_tiled, plan_grid
from foley_dist.media.video import decode_segment, iter_frames, probe, sample_times
from foley_dist.models.checkpoint import load_state_dict
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec
from foley_dist.models.joint import LocalChannel, StepChannel, overlap_exchange, split_velocity, timeline_noise
from foley_dist.models.split import DiTWork, ItemWork, RelayWork, SplitRole, run_window

PREPROCESS_MODES = ("release", "fast")
DUMP = "dump."  # prefix of tensors that only travel to be written by the sink (dump=DIR)


def dumped(msg: Message) -> dict[str, torch.Tensor]:
    return {k: v for k, v in msg.tensors.items() if k.startswith(DUMP)}


def latent_frames(sync_frames: int, sync_fps: float, latent_rate: int) -> int:
    """The release's latent length: int(audio_len_in_s * 50), audio_len_in_s = sync frames picked / 25."""
    return int(sync_frames / sync_fps * latent_rate)


def _segment(meta: dict) -> Segment:
    return Segment(meta["segment"], meta["start"], meta["end"])


class VisionStage(nn.Module):
    """Decode the segment's frames and encode visual + sync features, or read them from the cache.

    `vision` picks the variants (see VisionConfig): tiled high-resolution visual encoding
    (foley_dist.media.tiling), adaptive sync-frame sampling (foley_dist.media.framesampling) and the on-disk
    feature cache (foley_dist.media.cache); `model_id` names the weights in the cache key. Every variant
    yields the same shapes: clip_feat [1, seconds * visual_fps, D], sync_feat [1, 24 * seconds, D].
    Meta gains `cached`, `sync_frames_saved` (fraction of 25 fps sync frames not decoded),
    `frames_skipped` (damaged or missing source frames in the segment, see foley_dist.media.mediaguard),
    and on the release path `host_wait_s` / `encode_s`: seconds this stage waited for the host's frame
    preparation / spent in the encoders (the run report tells host-bound from device-bound with them).
    Release-path frames are prepared by `vision.workers` threads (foley_dist.media.frameprep); `upcoming`
    tells the stage which segments this rank encodes next, so it decodes one ahead.
    """

    name = "vision"

    def __init__(self, spec: ModelSpec, visual: nn.Module, sync: nn.Module, decoder: str, device: torch.device,
                 vision: VisionConfig, model_id: str, sync_autocast: torch.dtype | None = None, dump: bool = False):
        super().__init__()
        _check_vision(vision)
        self.spec, self.visual, self.sync, self.decoder, self.device = spec, visual, sync, decoder, device
        self.vision, self.sync_autocast, self.dump = vision, sync_autocast, dump
        self.cache = None if vision.cache == "off" else FeatureCache(cache_root(vision.cache), int(vision.cache_max_gb * 2**30))
        self.cache_hits = self.cache_misses = 0
        self.settings = {  # everything besides the video and the segment bounds that the features depend on
            "model": model_id, "preprocess": vision.preprocess, "visual": asdict(spec.visual), "sync": asdict(spec.sync), "visual_fps": spec.visual_fps,
            "sync_fps": spec.sync_fps, "decoder": decoder, "device": device.type,
            **({"siglip_resize": vision.siglip_resize} if vision.siglip_resize != "pil" else {}),
            "tiling": {"tile_size": vision.tile_size, "overlap_ratio": vision.overlap_ratio,
                       "tile_batch": vision.tile_batch, "max_tiles": MAX_TILES} if vision.tiling else None,
            "sampling": {"min_sync_fps": vision.min_sync_fps, "threshold": STATIC_THRESHOLD}
            if vision.frame_sampling == "adaptive" else "fixed",
        }
        self.prep = FramePrep(Recipe(spec.visual_fps, spec.sync_fps, spec.visual.image_size, spec.sync.image_size,
                                     vision.siglip_resize), resolve_workers(vision.workers)) \
            if vision.preprocess == "release" else None
        self._upcoming: list[dict] = []

    def upcoming(self, metas: list[dict]) -> None:
        """The work items this rank's vision stage runs, in order: each forward decodes the next one ahead."""
        self._upcoming = list(metas)

    def close(self) -> None:
        if self.prep is not None:
            self.prep.close()

    def _key(self, meta: dict) -> str | None:
        if not self.cache:
            return None
        identity = meta.get("video_id") or file_identity(meta["video"])  # the runtime broadcasts it
        return feature_key(identity, meta["start"], meta["end"], self.settings)

    def _prefetch_after(self, meta: dict) -> None:
        """Decode the segment after `meta` in this rank's order, unless the cache already holds it."""
        spans = [(m["video"], m["start"], m["end"]) for m in self._upcoming]
        here = (meta["video"], meta["start"], meta["end"])
        if self.prep is None or here not in spans or spans.index(here) + 1 == len(spans):
            return
        nxt = self._upcoming[spans.index(here) + 1]
        key = self._key(nxt)
        if key is None or not self.cache.path(key).exists():
            self.prep.prefetch(nxt["video"], nxt["start"], nxt["end"])

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        seg, video = _segment(msg.meta), msg.meta["video"]
        key = self._key(msg.meta)
        hit = self.cache.get(key) if self.cache else None
        if hit is not None:
            self.cache_hits += 1
            tensors, meta = hit
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
            return self._out(msg, tensors, {"cached": True, "sync_frames_saved": float(meta["sync_frames_saved"]),
                                            "latent_frames": int(meta["latent_frames"]),
                                            "frames_skipped": int(meta.get("frames_skipped", 0))})
        if self.vision.preprocess == "release":
            self._prefetch_after(msg.meta)
            tensors, meta = self._release_features(video, seg)
        else:
            tensors, meta = self._fast_features(video, seg)
        if self.cache:
            self.cache_misses += 1
            self.cache.put(key, tensors, {k: repr(v) for k, v in meta.items()})
        return self._out(msg, tensors, {"cached": False, **meta})

    def _out(self, msg: Message, tensors: dict[str, torch.Tensor], meta: dict) -> Message:
        if self.dump:
            tensors = {**tensors, **{DUMP + k: v for k, v in tensors.items()}}
        return Message(msg.segment, tensors, {**msg.meta, **meta})

    def _release_features(self, video: str, seg: Segment) -> tuple[dict[str, torch.Tensor], dict]:
        """The release's frames and transforms (foley_dist.media.preprocess), prepared by `self.prep`; meta
        carries the latent length the release derives from the sync frame count."""
        waited = time.perf_counter()
        frames = self.prep.get(video, seg.start, seg.end)
        waited = time.perf_counter() - waited
        if len(frames.sync) < self.spec.sync.window:
            raise FoleyError(f"{video}: segment [{seg.start}, {seg.end}) s has {len(frames.sync)} frames at "
                             f"{self.spec.sync_fps:g} fps, fewer than one {self.spec.sync.window}-frame Synchformer "
                             "window; the video (or its last segment) is too short")
        encode = time.perf_counter()
        clip_feat = self.visual(frames.visual.to(self.device))
        with torch.autocast(self.device.type, self.sync_autocast or torch.float32, enabled=self.sync_autocast is not None):
            sync_feat = self.sync(frames.sync.to(self.device), pad_tail=False).float()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # encode_s: the encoders' time, not their launch
        tensors = {"clip_feat": clip_feat, "sync_feat": sync_feat,
                   "siglip_times": torch.tensor(frames.visual_times, dtype=torch.float64),
                   "sync_times": torch.tensor(frames.sync_times, dtype=torch.float64)}
        return tensors, {"sync_frames_saved": 0.0, "frames_skipped": frames.frames_skipped,
                         "latent_frames": latent_frames(len(frames.sync), self.spec.sync_fps, self.spec.latent_rate),
                         "host_wait_s": round(waited, 4), "encode_s": round(time.perf_counter() - encode, 4)}

    def _fast_features(self, video: str, seg: Segment) -> tuple[dict[str, torch.Tensor], dict]:
        """Frames scaled while decoding, at k / fps from the segment start (vision.preprocess=fast)."""
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
        with torch.autocast(self.device.type, self.sync_autocast or torch.float32, enabled=self.sync_autocast is not None):
            sync_feat = self.sync(resample(frames, plan).to(self.device)).float()
        tensors = {"clip_feat": clip_feat, "sync_feat": sync_feat,
                   "siglip_times": torch.tensor(sample_times(seg, self.spec.visual_fps), dtype=torch.float64),
                   "sync_times": torch.tensor(plan.times, dtype=torch.float64)}
        return tensors, {"sync_frames_saved": plan.saved, "latent_frames": round(seg.seconds * self.spec.latent_rate),
                         "frames_skipped": frames_skipped}

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
    if v.preprocess not in PREPROCESS_MODES:
        problems.append(f"vision.preprocess={v.preprocess!r} must be 'release' or 'fast'")
    elif v.preprocess == "release" and (v.tiling or v.frame_sampling != "fixed"):
        problems.append("vision.tiling and vision.frame_sampling=adaptive work on frames scaled while decoding: "
                        "add vision.preprocess=fast")
    if v.workers < 0:
        problems.append(f"vision.workers={v.workers} must be >= 0 (0 = the cores this rank may use)")
    if v.siglip_resize not in SIGLIP_RESIZES:
        problems.append(f"vision.siglip_resize={v.siglip_resize!r} must be 'pil' (release-exact) or 'torch'")
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

    def __init__(self, spec: ModelSpec, text: nn.Module, dit: nn.Module, negative_prompt: str,
                 autocast_dtype: torch.dtype | None = None, dump: bool = False):
        super().__init__()
        self.spec, self.text, self.dit, self.negative_prompt = spec, text, dit, negative_prompt
        self.autocast_dtype, self.dump = autocast_dtype, dump
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
        device = clip_feat.device
        with torch.autocast(device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            cond = self.dit.condition(
                text,
                torch.cat([empty_clip.to(clip_feat), clip_feat]),
                torch.cat([empty_sync.to(sync_feat), sync_feat]),
            )
        if self.dump:  # the release's text features: row 0 the negative prompt, row 1 the prompt
            cond = {**cond, **dumped(msg), DUMP + "uncond_text_feat": text[:1], DUMP + "text_feat": text[1:]}
        return Message(msg.segment, cond, msg.meta)


SEAM_MODES = ("crossfade", "joint")


def segment_noise(seed: int, segment: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Initial latents for one segment: a function of (seed, segment index) only, never of the rank."""
    mixed = int(np.random.SeedSequence([seed, segment]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randn(shape, generator=torch.Generator().manual_seed(mixed))


class DiffusionStage(nn.Module):
    """Flow-matching sampling with classifier-free guidance, then the audio decoder.

    `seam=joint` samples neighbouring segments of a job on one latent timeline (foley_dist.models.joint),
    exchanging overlap latents every step through `channel`, which the runtime injects (a local one
    by default). `cfg_split` evaluates the CFG branches one at a time; with a channel whose `branch`
    is set (CFG-parallel) this rank evaluates only that branch and only branch 1's rank decodes audio.
    With `split` set (layout 'diffusion/N'), `dit` holds only this rank's block range and the stage
    samples windows of items with the other members of its split pipeline (foley_dist.models.split).
    """

    name = "diffusion"
    relays_errors = True  # the engine calls forward for an item that failed upstream (see _relay)

    def __init__(self, spec: ModelSpec, dit: nn.Module, vae: nn.Module, steps: int, guidance_scale: float,
                 device: torch.device, autocast_dtype: torch.dtype | None, seam: str = "crossfade",
                 cfg_split: bool = False, noise_dir: str | None = None, dump: bool = False):
        super().__init__()
        if seam not in SEAM_MODES:
            raise FoleyError(f"seam={seam!r} is not one of {', '.join(SEAM_MODES)}")
        self.spec, self.dit, self.vae = spec, dit, vae
        self.steps, self.guidance_scale, self.device, self.autocast_dtype = steps, guidance_scale, device, autocast_dtype
        self.seam, self.cfg_split, self.noise_dir, self.dump = seam, cfg_split, noise_dir, dump
        self.channel: StepChannel = LocalChannel()
        self.split: SplitRole | None = None  # set by the runtime on a split pipeline's member (layout 'diffusion/N')
        self._wire_dtypes: list[torch.dtype] = []  # the hidden states' dtypes, read from the first message

    def latent_span(self, start: float, end: float) -> tuple[int, int]:
        """(offset on the job's latent timeline, length) of the segment [start, end) in latent frames."""
        return round(start * self.spec.latent_rate), round((end - start) * self.spec.latent_rate)

    @property
    def windowed(self) -> bool:
        """A split pipeline's member works on windows of items (engine.pipeline calls forward_window)."""
        return self.split is not None

    def _prepare(self, msg: Message, sample_noise: bool = True
                 ) -> tuple[tuple[int, int], torch.Tensor, dict[str, torch.Tensor], int, float]:
        """(latent span, initial noise (zeros unless `sample_noise`), conditioning, steps, guidance scale)."""
        seg = _segment(msg.meta)
        span = self.latent_span(seg.start, seg.end)
        alone = not (msg.meta.get("joint_prev") or msg.meta.get("joint_next"))
        if self.seam != "joint" or alone:  # the release's length (set by the vision stage); joint segments with
            span = (span[0], msg.meta.get("latent_frames", span[1]))  # neighbours keep the shared timeline's
        channels = self.spec.dit.audio_vae_latent_dim
        if not sample_noise:
            noise = torch.zeros(1, channels, span[1], device=self.device)
        elif self.noise_dir:
            noise = read_noise(self.noise_dir, seg.index, (1, channels, span[1])).to(self.device)
        elif self.seam == "joint":
            noise = timeline_noise(msg.meta["seed"], span[0], span[1], channels).to(self.device)
        else:
            noise = segment_noise(msg.meta["seed"], seg.index, (1, channels, span[1])).to(self.device)
        cond = {k: v for k, v in msg.tensors.items() if not k.startswith(DUMP)}
        steps = msg.meta.get("model.steps", self.steps)  # per-item overrides from a batch manifest
        guidance_scale = msg.meta.get("model.guidance_scale", self.guidance_scale)
        if guidance_scale <= 1:  # no guidance: only the conditional half of [uncond; cond] is used
            cond = {k: v[1:] for k, v in cond.items()}
        return span, noise, cond, steps, guidance_scale

    def _autocast(self):
        return torch.autocast(self.device.type, self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None)

    @torch.inference_mode()
    def forward(self, msg: Message) -> Message:
        if self.split is not None:
            return self.forward_window([msg], [lambda: msg])[0]
        span, noise, cond, steps, guidance_scale = self._prepare(msg)
        use_cfg = guidance_scale > 1
        parallel = use_cfg and self.channel.branch is not None

        def velocity(x: torch.Tensor, t: torch.Tensor, branch: int | None = None) -> torch.Tensor:
            c = cond if branch is None else {k: v[branch : branch + 1] for k, v in cond.items()}
            with self._autocast():
                return self.dit.velocity(x, t, c).float()

        if "error" in msg.meta:
            return self._relay(msg, span, noise, steps, parallel)
        tails: list[torch.Tensor] = []
        exchange, head = self._overlaps(msg, span, tails)
        channels = noise.shape[1]
        self.channel.open(msg.segment, steps, (1, channels, head) if head else None,
                          (1, channels, span[1]) if parallel else None)
        if use_cfg and (self.cfg_split or parallel):
            velocity = split_velocity(velocity, self.channel if parallel else None, msg.segment)
        latents = sample(velocity, noise, steps, guidance_scale, exchange=exchange)
        if parallel and self.channel.branch == 0:  # the partner's copy of the latents: branch 1's rank decodes
            return Message(msg.segment, {}, msg.meta)
        return self._result(msg, latents, tails, noise)

    def _result(self, msg: Message, latents: torch.Tensor, tails: list[torch.Tensor], noise: torch.Tensor) -> Message:
        # The release's trim, audio[:, :int(audio_len_in_s * 48000)], slices the channel axis and keeps
        # all latent_frames * hop samples; so do we.
        audio = self.vae(latents.float())[0].reshape(-1).float()
        out = {"audio": audio, "latents": latents[0]}
        if tails:  # joint: what the next segment needs from this one, kept by the sink for resume
            out["tails"] = torch.stack(tails)
        if self.dump:
            out.update(dumped(msg))
            out.update({DUMP + "noise": noise, DUMP + "latents": latents, DUMP + "audio": audio[None]})
        return Message(msg.segment, out, msg.meta)

    @torch.inference_mode()
    def forward_window(self, items: list[Message], take: list[Callable[[], Message]]) -> list[Message]:
        """A split pipeline member's part of a window (models/split.py) of work `items`, whose
        messages `take` delivers as each enters: the first member returns the items' audio, the
        others their messages unchanged (the schedule drops them)."""
        msgs: list[Message | None] = [None] * len(items)

        def start(k: int) -> ItemWork:
            msgs[k] = take[k]()
            return self._split_work(msgs[k])

        steps = [m.meta.get("model.steps", self.steps) for m in items]  # known before the messages come
        order = window_order(steps, self.split.first)
        results = run_window(start, [m.segment for m in items], order, self.split, self.channel)
        return [m if r is None else r for r, m in zip(results, msgs)]

    def _split_work(self, msg: Message) -> ItemWork:
        """The item's work on this member. Every member sees the same message, so all agree on whether
        the item relays (it failed upstream) and on every message size; only the first member samples
        the noise, and if that fails it computes on zeros (so the members stay in step) and reports
        the error instead of the audio."""
        first, problem = self.split.first, None
        try:
            span, noise, cond, steps, guidance_scale = self._prepare(msg, sample_noise=first)
        except FoleyError as e:
            span, noise, cond, steps, guidance_scale = self._prepare(msg, sample_noise=False)
            problem = f"diffusion: {e}"
        tails: list[torch.Tensor] = []
        exchange, head = self._overlaps(msg, span, tails) if first else (None, 0)
        if first:
            self.channel.open(msg.segment, steps, (1, noise.shape[1], head) if head else None, None)
        exchange = exchange or (lambda step, x: x)
        if "error" in msg.meta:
            return RelayWork(steps, noise, exchange, msg)
        finish = ((lambda x: self._result(msg, x, tails, noise)) if problem is None
                  else (lambda x: Message(msg.segment, {}, {**msg.meta, "error": problem})))
        return DiTWork(self.dit, self.split, cond, noise, steps, guidance_scale, self._autocast, exchange, finish,
                       self._wire_dtypes)

    def _overlaps(self, msg: Message, span: tuple[int, int], kept: list[torch.Tensor] | None = None):
        """seam=joint: the per-step overlap exchange with the neighbouring segments and the head's frame
        count (see models/joint.overlap_exchange); (None, 0) otherwise."""
        if self.seam != "joint":
            return None, 0
        prev, nxt = msg.meta.get("joint_prev"), msg.meta.get("joint_next")
        exchange, head, _ = overlap_exchange(self.channel, msg.segment, span, self.latent_span(*prev) if prev else None,
                                             self.latent_span(*nxt) if nxt else None, kept)
        return exchange, head

    def _relay(self, msg: Message, span: tuple[int, int], noise: torch.Tensor, steps: int, parallel: bool) -> Message:
        """An item that failed upstream (its job has failed): still make every per-step exchange of the
        protocol — take the previous segment's tails and hand on this one's (its noise), swap dummy
        velocities with a CFG partner — so no peer waits for messages that would not come; the next
        segments of the job finish as garbage the sink drops."""
        exchange, head = self._overlaps(msg, span)
        if exchange is None and not parallel:
            return msg
        self.channel.open(msg.segment, steps, (1, noise.shape[1], head) if head else None, noise.shape if parallel else None)
        for step in range(steps + 1):
            if exchange is not None:
                exchange(step, noise)
            if parallel and step < steps:
                self.channel.swap(msg.segment, step, torch.zeros_like(noise))
        return msg


def read_noise(folder: str, segment: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Segment `segment`'s initial latents from FOLDER/segNNN.safetensors (key "noise"), shape-checked."""
    path = Path(folder) / f"seg{segment:03d}.safetensors"
    if not path.is_file():
        raise FoleyError(f"noise file {path} not found; noise=DIR needs seg000.safetensors, seg001... (key 'noise')")
    tensors = load_state_dict(path)
    noise = tensors.get("noise")
    if noise is None or tuple(noise.shape) != tuple(shape):
        got = "no 'noise' tensor" if noise is None else f"noise {list(noise.shape)}"
        raise FoleyError(f"{path}: {got}, expected key 'noise' of shape {list(shape)} for this segment")
    return noise.float()
