"""Resource planner: parameter memory, FLOPs, resolution (in)dependence, layouts, refusals, the command."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from foley_dist.config import VisionConfig, load
from foley_dist.engine.schedule import Topology
from foley_dist.errors import DoesNotFit, FoleyError
from foley_dist.models.dac_vae import AudioDecoder
from foley_dist.models.foley import ModelSpec
from foley_dist.models.hunyuan_dit import HunyuanDiT
from foley_dist.models.siglip import VisualEncoder
from foley_dist.models.synchformer import SyncEncoder
from foley_dist.models.hunyuan_cost import block_ranges
from foley_dist.planning import estimates, memory_options, plan


def _cfg(*overrides: str) -> plan.PlanConfig:
    return load("plan", list(overrides))


@pytest.fixture(scope="module")
def xxl() -> ModelSpec:
    return ModelSpec.named("hunyuan_xxl")


def test_weights_are_parameter_counts_times_bytes(xxl):
    params = estimates.part_params(xxl)
    est = estimates.estimate_stages(xxl, "bf16", 5.0, 1920, 1080, 50, 4.5, params=params)
    assert est["vision"].weights == 4 * (params["visual"] + params["sync"])
    # fusion builds only the DiT's condition projections, in the DiT's precision (build_parts casts them)
    assert est["fusion"].weights == 4 * params["text"] + 2 * params["dit_condition"]
    assert params["dit_condition"] < 0.01 * params["dit"]
    assert est["diffusion"].weights == 2 * params["dit"] + 4 * params["vae"]
    assert 10.2e9 < 2 * params["dit"] < 10.35e9  # XXL DiT in bf16: ~10.3 GB
    fp32 = estimates.estimate_stages(xxl, "fp32", 5.0, 1920, 1080, 50, 4.5, params=params)
    assert fp32["diffusion"].weights - est["diffusion"].weights == 2 * params["dit"]


def test_encoder_and_decoder_flops_match_torch_flop_counter():
    spec = ModelSpec.named("tiny")
    visual, sync, vae = VisualEncoder.from_config(spec.visual), SyncEncoder(spec.sync).eval(), AudioDecoder(spec.vae).eval()
    runs = [
        (lambda: visual(torch.zeros(4, 3, spec.visual.image_size, spec.visual.image_size, dtype=torch.uint8)),
         estimates.visual_flops(spec.visual, 4)),
        (lambda: sync(torch.zeros(25, 3, spec.sync.image_size, spec.sync.image_size, dtype=torch.uint8)),
         estimates.sync_flops(spec.sync, 25)),
        (lambda: vae(torch.zeros(1, 128, 50)), estimates.vae_flops(spec.vae, 50)),
    ]
    for run, analytic in runs:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        assert analytic == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_dit_count_matches_the_module():
    spec = ModelSpec.named("tiny")
    with torch.device("meta"):
        assert estimates.part_params(spec)["dit"] == sum(p.numel() for p in HunyuanDiT(spec.dit).parameters())


@pytest.mark.parametrize("tiling,small_size", [(False, (640, 360)), (True, (3840, 2160))])
def test_only_the_decoder_grows_with_source_resolution(xxl, tiling, small_size):
    """Frames reach the encoders at model resolution; tiled encoding stops growing at MAX_TILES (4K)."""
    vision = VisionConfig(tiling=tiling)
    small = estimates.estimate_stages(xxl, "bf16", 5.0, *small_size, 50, 4.5, vision)
    large = estimates.estimate_stages(xxl, "bf16", 5.0, 7680, 4320, 50, 4.5, vision)
    for stage in ("fusion", "diffusion"):
        assert small[stage] == large[stage]
    assert small["vision"].activations == large["vision"].activations
    growth = estimates.decoder_bytes(7680, 4320) - estimates.decoder_bytes(*small_size)
    assert 0 < large["vision"].host - small["vision"].host <= growth


def test_decode_modes_at_4k(xxl):
    naive, model, tiled = (estimates.decode_memory(xxl, 5.0, 3840, 2160, m) for m in ("naive", "model", "tiled"))
    assert naive > 10 * model  # 125 full-size RGB frames vs frames scaled in the decoder
    assert model < tiled < naive


def test_memory_does_not_depend_on_duration():
    short, long = plan.make_plan(_cfg("resolution=1080p", "duration=10")), plan.make_plan(_cfg("resolution=1080p", "duration=36000"))
    assert short["stages"] == long["stages"] and long["segments"] > 100 * short["segments"]


def test_four_gpus_xxl():
    p = plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=2160p", "duration=600", "gpus=4", "gpu_memory=80GB"))
    assert Topology.parse(p["layout"], 4).world_size == 4 and p["fits"]
    assert p["precision"] == "bf16" and p["stages"]["diffusion"]["time_share"] > 0.8
    assert sum(s["time_share"] for s in p["stages"].values()) == pytest.approx(1.0)


def test_tight_memory_splits_the_stages():
    """fp32 XXL does not fit one 23 GB GPU with every stage: the layout separates the heavy stages."""
    p = plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=1080p", "duration=600", "gpus=4", "gpu_memory=23GB",
                            "precision=fp32"))
    topo = Topology.parse(p["layout"], 4)
    assert p["fits"] and all(r["gpu_bytes"] <= 23e9 for r in p["ranks"])
    assert not any({"fusion", "diffusion"} <= set(g.stages) for g in topo.groups)
    assert sum(len(g.ranks) for g in topo.groups if "diffusion" in g.stages) >= 2


PLAIN = ("weights=full", "offload=none", "split=none")  # the DiT memory options off: the plain layout only


@pytest.mark.parametrize("overrides,needle", [
    (["resolution=1080p", "duration=60", "gpus=0"], "gpus=0"),
    (["resolution=1080p", "duration=0"], "duration=0.0 must be > 0"),
    (["resolution=1080p", "duration=-5"], "must be > 0"),
    (["resolution=8kk", "duration=60"], "resolution='8kk' is not understood"),
    (["duration=60"], "pass resolution=1080p"),
    (["resolution=1080p"], "pass duration="),
    (["resolution=1080p", "duration=60", "gpu_memory=lots"], "gpu_memory='lots'"),
    (["resolution=1080p", "duration=60", "precision=fp8"], "precision='fp8'"),
    (["model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpu_memory=16GB", "precision=fp32", *PLAIN],
     "alone needs"),
    (["model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", "gpu_memory=23GB", "precision=fp32", *PLAIN],
     "no layout of 1 GPU(s) fits"),
    (["model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", "gpu_memory=2GB"],
     "no memory option fits 1 GPU(s) of 2GB; the smallest that fits is 1 GPU(s) of"),
    (["resolution=1080p", "duration=60", "weights=fp16"], "weights='fp16'"),
])
def test_impossible_configs_are_refused_in_one_line(overrides, needle):
    with pytest.raises(FoleyError) as e:
        plan.make_plan(_cfg(*overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,size", [("2160p", (3840, 2160)), ("4K", (3840, 2160)), ("1280x720", (1280, 720))])
def test_parse_resolution(text, size):
    assert plan.parse_resolution(text) == size


@pytest.mark.parametrize("text,size", [("80GB", 80e9), ("24 GiB", 24 * 2**30), ("81920MiB", 81920 * 2**20), ("40", 40e9)])
def test_parse_memory(text, size):
    assert plan.parse_memory(text) == size


def test_video_gives_resolution_and_duration(clip12):
    p = plan.make_plan(_cfg(f"video={clip12}"))
    assert (p["source"]["width"], p["source"]["height"]) == (160, 96)
    assert p["source"]["duration_s"] == pytest.approx(12.0, abs=0.1) and p["segments"] == 3
    assert plan.make_plan(_cfg(f"video={clip12}", "resolution=2160p"))["source"]["width"] == 3840  # explicit wins


def test_plan_command_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.plan_command(["model=hunyuan_xl", "resolution=1080p", "duration=120", "gpus=2", f"json={out}"]) == 0
    text = capsys.readouterr().out
    assert "layout:" in text and "diffusion" in text and str(out) in text
    data = json.loads(out.read_text())
    assert data["model"] == "hunyuan_xl" and data["gpus"] == 2 and set(data["stages"]) == {"vision", "fusion", "diffusion"}


@pytest.mark.parametrize("memory", ["8GB", "12GB"])  # a stage alone too big; no layout of the stages fits
def test_plan_command_exits_5_when_the_job_does_not_fit(memory, capsys):
    from foley_dist import cli

    code = cli.main(["plan", "model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", f"gpu_memory={memory}", *PLAIN])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 5 and len(err) == 1 and err[0].startswith("foley-dist: error:")
    assert cli.main(["plan", "model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=4"]) == 0


@pytest.mark.parametrize("model", ["hunyuan_xl", "hunyuan_xxl"])
@pytest.mark.parametrize("gpus,memory", [(1, "8GB"), (2, "8GB"), (4, "8GB"), (1, "12GB"), (1, "16GB"), (1, "24GB"), (8, "80GB")])
def test_plan_picks_the_fastest_memory_option_that_fits(model, gpus, memory):
    """The issue's GPU configurations: each fits with some option, a split with a rank left upstream
    is one whenever the GPUs allow it, the chosen one is the fastest that fits, its ranks fit, and
    plain is chosen whenever its layout is the one for GPUs of any size."""
    p = plan.make_plan(_cfg(f"model={model}", "resolution=1080p", "duration=60", f"gpus={gpus}", f"gpu_memory={memory}"))
    options = {o["option"]: o for o in p["options"]}
    base = ["plain", "fp8", "offload", "fp8+offload"]
    assert list(options) == base + [f"split{n}" + f"+{o}".replace("+plain", "") for n in range(2, gpus) for o in base]
    chosen = options[p["memory_option"]["name"]]
    assert p["fits"] and chosen["fits"] and chosen["layout"] == p["layout"]
    assert round(chosen["relative_time"], 2) == min(round(o["relative_time"], 2) for o in options.values() if o["fits"])
    assert all(r["gpu_bytes"] <= p["gpu_memory_bytes"] for r in p["ranks"])
    if options["plain"]["relative_time"] == 1.0:
        assert chosen["option"] == "plain"
    assert max(options["offload"]["dit_device_bytes"]) < max(options["fp8"]["dit_device_bytes"]) < max(options["plain"]["dit_device_bytes"])


def test_four_8gb_gpus_run_xxl_with_the_dit_split():
    """The issue's example: XXL's diffusion stage (11.3 GB) fits no 8 GB GPU; ranks holding a share of
    the blocks each do, and run faster than fp8 weights replicated on three; three GPUs as one 3-way
    split beat a 2-way split beside a replicated vision+fusion."""
    p = plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=4", "gpu_memory=8GB"))
    options = {o["option"]: o for o in p["options"]}
    assert not options["plain"]["fits"] and options["split2"]["fits"] and options["fp8"]["fits"]
    assert p["memory_option"] == {"name": "split3", "weights": "full", "offload": "none", "split": "3"}
    assert p["layout"] == ["vision+fusion", "diffusion/3"] and p["fits"]
    assert options["split3"]["relative_time"] < options["split2"]["relative_time"] < options["fp8"]["relative_time"]
    split = [r for r in p["ranks"] if r["blocks"]]
    assert [r["blocks"] for r in split] == [list(b) for b in block_ranges(ModelSpec.named("hunyuan_xxl").dit, 3)]
    assert split[0]["gpu_bytes"] != split[1]["gpu_bytes"] and all(r["gpu_bytes"] <= 8e9 for r in p["ranks"])


@pytest.mark.parametrize("fp8", [False, True])
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_split_ranks_hold_the_dit_once_between_them(xxl, n, fp8):
    """Per-rank DiT bytes of a split sum to the whole DiT less the condition projections (on the
    fusion rank), nothing duplicated; offloaded, the host holds each rank's blocks."""
    whole = memory_options.dit_bytes(xxl.dit, torch.bfloat16, fp8)
    option = memory_options.MemoryOption(fp8=fp8, split=n)
    held = [memory_options.held_bytes(xxl, "bf16", option, 5.0, j) for j in range(n)]
    assert sum(h.total for h in held) + whole.condition == whole.total
    assert held[0].embed == whole.embed and held[-1].finish == whole.finish
    offload = dataclasses.replace(option, offload=True)
    host = [memory_options.dit_memory(xxl, "bf16", offload, 5.0, j)[1] for j in range(n)]
    assert sum(host) == sum(whole.blocks)


def test_a_split_rank_is_planned_with_its_window_and_messages(xxl):
    """Beyond its blocks a split rank keeps N segments' conditioning and a hidden-state message per
    window item and direction; only the first holds the audio decoder."""
    est = estimates.estimate_stages(xxl, "bf16", 5.0, 1920, 1080, 50, 4.5)
    first, last = memory_options.diffusion_ranks(est, xxl, "bf16", memory_options.MemoryOption(split=2), 5.0)
    vae = 4 * estimates.part_params(xxl)["vae"]
    assert first.weights - vae == memory_options.dit_memory(xxl, "bf16", memory_options.MemoryOption(split=2), 5.0, 0)[0]
    edge = block_ranges(xxl.dit, 2)[0][1]
    message = memory_options.message_bytes(xxl.dit, 5.0, edge)
    assert edge > xxl.dit.depth_triple_blocks and message == 4 * (2 * (250 + 1) * 1536 + 128 * 250)
    # inside the triple-stream blocks the visual stream's 40 tokens travel too
    assert memory_options.message_bytes(xxl.dit, 5.0, 10) == 4 * (2 * (250 + 40 + 1) * 1536 + 128 * 250)
    window = 4  # up to 2N segments in flight per pipeline (schedule.split_window)
    assert last.activations == estimates.diffusion_activations(xxl, 5.0, "bf16", window, decodes=False) + window * (
        message + memory_options.message_bytes(xxl.dit, 5.0, xxl.dit.depth_triple_blocks + xxl.dit.depth_single_blocks))


def test_split_time_is_about_plain_over_n(xxl):
    """Balanced ranges: a pipeline of N takes about 1/N of plain per segment, a little more for the
    largest range and the hidden-state sends."""
    for n in (2, 4):
        t = memory_options.relative_time(xxl, 5.0, "bf16", memory_options.MemoryOption(split=n))
        assert 1 / n < t < 1.15 / n


def test_the_smallest_fit_named_on_exit_5_fits():
    with pytest.raises(FoleyError) as e:
        plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", "gpu_memory=2GB"))
    need = float(str(e.value).split("the smallest that fits is 1 GPU(s) of ")[1].split(" GB")[0])
    assert plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", f"gpu_memory={need}GB"))["fits"]
    with pytest.raises(FoleyError):
        plan.make_plan(_cfg("model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=1", f"gpu_memory={need - 0.2}GB"))


def test_the_smallest_fit_on_four_gpus_is_a_split():
    args = ("model=hunyuan_xxl", "resolution=1080p", "duration=60", "gpus=4")
    with pytest.raises(DoesNotFit) as e:
        plan.make_plan(_cfg(*args, "gpu_memory=1GB"))
    assert "with split2+fp8+offload (weights=fp8 offload=blocks split=2)" in str(e.value)
    need = float(str(e.value).split("the smallest that fits is 4 GPU(s) of ")[1].split(" GB")[0])
    options = {o["option"]: o for o in plan.make_plan(_cfg(*args, f"gpu_memory={need}GB"))["options"]}
    assert options["split2+fp8+offload"]["fits"]


def test_condition_projections_are_planned_in_the_dtype_the_runtime_builds_and_outputs():
    """Issue 17 item 10: the fusion rank's DiT part and its conditioning are in the DiT's precision."""
    from foley_dist.config import ModelConfig
    from foley_dist.engine.message import Message
    from foley_dist.models.foley import build_parts
    from foley_dist.stages import FusionStage

    spec, cpu = ModelSpec.named("tiny"), torch.device("cpu")
    params = estimates.part_params(spec)
    for precision, dtype, autocast in (("bf16", torch.bfloat16, torch.bfloat16), ("fp32", torch.float32, None)):
        parts = build_parts(spec, ("text", "dit_condition"), ModelConfig(), cpu, dtype)
        built = sum(p.numel() * p.element_size() for p in parts["dit_condition"].parameters())
        assert built == estimates.weight_bytes(params, ("dit_condition",), precision)
        feats = {"clip_feat": torch.randn(1, 40, 768), "sync_feat": torch.randn(1, 120, 768)}
        meta = {"prompt": "rain", "segment": 0}
        cond = FusionStage(spec, parts["text"], parts["dit_condition"], "noisy", autocast)(Message(0, feats, meta)).tensors
        per_element = estimates.conditioning_bytes(spec, 5.0, precision) // (2 * spec.dit.hidden_size * sum(
            getattr(estimates.TokenCounts.for_seconds(spec.dit, 5.0), k) for k in ("text", "visual", "sync")))
        assert {v.element_size() for v in cond.values()} == {per_element}


@pytest.mark.parametrize("layout,gpus,cfg_parallel,expected", [
    (["vision", "fusion", "diffusion"], 3, False, [1, 2, 1]),  # stage messages only
    # + joint overlaps between the diffusion replicas, one process group per direction
    (["vision+fusion", "diffusion", "diffusion", "diffusion"], 4, False, [3, 4, 4, 5]),
    (["vision+fusion", "diffusion", "diffusion"], 3, True, [2, 3, 3]),  # + the CFG pair's swaps (both groups)
    (["vision+fusion+diffusion"], 1, False, [0]),
    # split: upstream forks to each member; members' neighbours on both step groups; the owner sends to the sink
    (["vision+fusion", "diffusion/2"], 3, False, [2, 4, 4]),
    (["vision+fusion", "diffusion/2 x2"], 5, False, [4, 6, 3, 6, 5]),  # + the pipelines' owners' joint overlaps
])
def test_nccl_buffers_are_counted_per_connected_group_and_peer(layout, gpus, cfg_parallel, expected):
    topo = Topology.parse(layout, gpus, cfg_parallel)
    assert list(plan.nccl_links(topo, 20).values()) == expected


def test_a_multi_gpu_plan_adds_nccl_buffers_to_each_rank():
    args = ("resolution=720p", "duration=20", "gpu_memory=80GB", "model=hunyuan_xl")
    one, three = (plan.make_plan(_cfg(*args, f"gpus={n}")) for n in (1, 3))
    [alone] = one["ranks"]
    links = plan.nccl_links(Topology.parse(three["layout"], 3), three["segments"])
    for group in three["ranks"]:
        assert group["stages"] == alone["stages"]  # replicas of the whole pipeline: only the links differ
        peers = max(links[r] for r in group["ranks"])
        assert peers > 0 and group["gpu_bytes"] == alone["gpu_bytes"] + peers * estimates.NCCL_PEER_BYTES
    assert three["calibration"]["nccl_peer_bytes"] == 16 * 2**20
