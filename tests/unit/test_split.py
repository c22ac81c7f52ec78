"""The layer split of the diffusion stage without a process group: layout syntax and topology, the
window schedule, block ranges, the hidden-state wire format, and the members' arithmetic against
the unsplit sampler (members on threads with in-memory queues; tests/distributed runs real ranks)."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from foley_dist.config import ModelConfig
from foley_dist.engine.protocol import window_order
from foley_dist.engine.schedule import Topology, build_schedule, format_grid, split_window
from foley_dist.errors import FoleyError
from foley_dist.models.flow import sample
from foley_dist.models.foley import ModelSpec, build_parts
from foley_dist.models.hunyuan_config import HunyuanDiTConfig
from foley_dist.models.hunyuan_cost import block_flops, block_ranges
from foley_dist.models.split import DiTWork, RelayWork, SplitRole, pack, run_window, unpack, wire_dtypes


def test_split_entry_makes_pipelines_of_n_ranks():
    topo = Topology.parse(["vision", "fusion", "diffusion/2 x2"], 6, num_items=9)
    group = topo.groups[-1]
    assert group.ranks == (2, 3, 4, 5) and group.split == 2 and group.pipelines == 2 and group.window_size == 3
    assert [group.members(n) for n in range(4)] == [(2, 3), (4, 5), (2, 3), (4, 5)]
    assert [group.owner(n) for n in range(4)] == [2, 4, 2, 4]
    # dealt round-robin, 3 per pipeline and round: neighbours side by side, all of a round in flight
    assert [group.window(n, 9) for n in (0, 1, 4, 6, 8)] == [(0, 2, 4), (1, 3, 5), (0, 2, 4), (6, 8), (6, 8)]
    assert [topo.split_role(r) for r in range(6)] == [None, None, (0, 2), (1, 2), (0, 2), (1, 2)]
    assert "split over 2" in topo.describe()


@pytest.mark.parametrize("layout,world,needle", [
    (["vision/2", "fusion", "diffusion"], 4, "diffusion alone"),
    (["vision+fusion", "diffusion/1"], 2, "N >= 2"),
    (["vision+fusion+diffusion/2"], 2, "diffusion alone"),
    (["vision+fusion", "diffusion/2", "diffusion/3"], 6, "two different splits"),
    (["vision+fusion", "diffusion/2"], 2, "needs 3 rank"),
])
def test_bad_split_entries_are_refused_with_the_fix(layout, world, needle):
    with pytest.raises(FoleyError, match=needle):
        Topology.parse(layout, world)


def test_split_and_cfg_parallel_do_not_combine():
    with pytest.raises(FoleyError, match="cfg_parallel"):
        Topology.parse(["vision+fusion", "diffusion/2 x2"], 5, cfg_parallel=True)


@pytest.mark.parametrize("split,pipelines,items,window", [(2, 1, 24, 4), (4, 1, 24, 8), (4, 2, 24, 6), (2, 2, 24, 4),
                                                         (4, 2, 5, 4), (2, 1, 3, 3)])
def test_windows_keep_every_range_busy_and_spread_evenly(split, pipelines, items, window):
    w = split_window(split, pipelines, items)
    assert w == window and split <= w <= 2 * split or w == items


def test_window_schedule_as_a_grid():
    topo = Topology.parse(["vision+fusion", "diffusion/2"], 3, num_items=3)
    grid = format_grid(build_schedule(topo, 3))
    assert grid.splitlines() == [
        "rank 0: C0           ^0@2         >0@1         C1           ^1@2         >1@1         C2           ^2@2         >2@1         ",
        "rank 1: C0@0,1@0,2@0 >0@2         >1@2         >2@2         ",
        "rank 2: C0@0,1@0,2@0 x0           x1           x2           <0@1         +0           <1@1         +1           <2@1         +2           ",
    ]


def test_window_order_is_a_wavefront():
    order = window_order([3, 3, 2], first=False)
    assert order == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0), (1, 2), (2, 1)]
    first = window_order([3, 3, 2], first=True)
    assert sorted(first) == sorted(order + [(0, 3), (1, 3), (2, 2)])  # plus each item's final exchange
    for k in range(3):  # each item's steps in order, item k one tick behind k - 1
        steps = [s for j, s in first if j == k]
        assert steps == sorted(steps) and first.index((k, 0)) > (first.index((k - 1, 0)) if k else -1)


@pytest.mark.parametrize("size", ["xxl", "xl", "tiny"])
def test_block_ranges_cover_the_dit_in_balanced_contiguous_pieces(size):
    cfg = HunyuanDiTConfig.builtin(size) if size != "tiny" else HunyuanDiTConfig.tiny()
    blocks = cfg.depth_triple_blocks + cfg.depth_single_blocks
    triple, single = block_flops(cfg, 5.0)
    cost = [triple] * cfg.depth_triple_blocks + [single] * cfg.depth_single_blocks
    for parts in range(1, min(blocks, 8) + 1):
        ranges = block_ranges(cfg, parts)
        assert [a for a, _ in ranges] == [0] + [b for _, b in ranges[:-1]] and ranges[-1][1] == blocks
        assert all(b > a for a, b in ranges)
        shares = [sum(cost[a:b]) for a, b in ranges]
        assert max(shares) - sum(cost) / parts <= max(cost) * (1 if parts < blocks else parts)
    with pytest.raises(ValueError, match="cannot split"):
        block_ranges(cfg, blocks + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_hidden_states_cross_bit_for_bit_in_any_precision(dtype):
    tensors = [torch.randn(2, 5, 8).to(dtype), torch.randn(2, 8).to(dtype), torch.randn(1, 4, 5)]
    flat = pack(tensors)
    assert flat.dtype == torch.float32 and flat.numel() == 3 + sum(t.numel() for t in tensors)
    dtypes = wire_dtypes(flat, 3)
    back = unpack(flat, [tuple(t.shape) for t in tensors], dtypes)
    assert dtypes == [dtype, dtype, torch.float32]
    assert all(b.dtype == t.dtype and torch.equal(b, t) for b, t in zip(back, tensors))


class QueueRing:
    """A member's SplitChannel over in-memory queues: (item, step) -> tensor, per ring edge."""

    def __init__(self, inbox: dict, outbox: dict):
        self.inbox, self.outbox, self.expected = inbox, outbox, set()

    def expect_split(self, item: int, step: int, numel: int) -> None:
        self.expected.add((item, step, numel))

    def recv_split(self, item: int, step: int) -> torch.Tensor:
        flat = self.inbox.setdefault((item, step), queue.Queue()).get(timeout=60)
        assert (item, step, flat.numel()) in self.expected, "received a message that was not announced"
        return flat

    def send_split(self, item: int, step: int, flat: torch.Tensor) -> None:
        self.outbox.setdefault((item, step), queue.Queue()).put(flat)


def run_members(works: list[list], roles: list[SplitRole], items: list[int]) -> list:
    """Every member's run_window on its own thread; the first member's results."""
    edges = [{} for _ in roles]  # edges[j]: what member j receives
    results, errors = {}, []

    def member(j: int) -> None:
        try:
            channel = QueueRing(edges[j], edges[(j + 1) % len(roles)])
            order = window_order([w.steps for w in works[j]], roles[j].first)
            results[j] = run_window(works[j].__getitem__, items, order, roles[j], channel)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=member, args=(j,)) for j in range(len(roles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return results[0]


@pytest.fixture(scope="module")
def tiny():
    spec = ModelSpec.named("tiny")
    return spec, build_parts(spec, ("dit",), ModelConfig(), torch.device("cpu"))["dit"]


def _conditioning(dit, seed: int, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = dit.config
    cond = dit.condition(torch.randn(2, cfg.text_length, cfg.condition_dim, generator=g),
                         torch.randn(2, 40, cfg.clip_dim, generator=g), torch.randn(2, 120, cfg.sync_feat_dim, generator=g))
    return {k: v[2 - batch:] for k, v in cond.items()}


@pytest.mark.parametrize("parts,guidance", [(2, 4.5), (3, 4.5), (2, 1.0)])
@torch.inference_mode()
def test_split_members_compute_the_unsplit_sampler_bit_for_bit(tiny, parts, guidance):
    """Three segments through `parts` members whose DiTs hold only their block range."""
    spec, dit = tiny
    from foley_dist.models.hunyuan_dit import strip_to_range
    import copy
    steps, batch = 4, 2 if guidance > 1 else 1
    ranges = block_ranges(spec.dit, parts)
    roles = [SplitRole(j, parts, a, b) for j, (a, b) in enumerate(ranges)]
    members = [strip_to_range(copy.deepcopy(dit), a, b) for a, b in ranges]
    conds = [_conditioning(dit, n, batch) for n in range(3)]
    noises = [torch.randn(1, spec.dit.audio_vae_latent_dim, 50 + 10 * n, generator=torch.Generator().manual_seed(n))
              for n in range(3)]
    expected = [sample(lambda x, t, c=c: dit.velocity(x, t, c).float(), noise, steps, guidance)
                for c, noise in zip(conds, noises)]
    dtypes = [[] for _ in roles]
    works = [[DiTWork(members[j], roles[j], c, noise, steps, guidance, torch.autograd.grad_mode.no_grad,
                      lambda step, x: x, lambda x: x, dtypes[j]) for c, noise in zip(conds, noises)]
             for j in range(parts)]
    got = run_members(works, roles, [0, 1, 2])
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert all(d == [torch.float32] * len(d) and d for d in dtypes[1:])  # read once per member, then kept


def test_relayed_items_keep_every_member_in_step(tiny):
    """An item that failed upstream exchanges one-value placeholders and still makes its overlap
    exchange at every step (the neighbours' owners expect its tails)."""
    spec, dit = tiny
    roles = [SplitRole(0, 2, 0, 1), SplitRole(1, 2, 1, 2)]
    noise = torch.zeros(1, spec.dit.audio_vae_latent_dim, 8)
    exchanged = []
    works = [[RelayWork(3, noise, lambda step, x: exchanged.append(step) or x, "first's message")],
             [RelayWork(3, noise, lambda step, x: x, "second's message")]]
    assert run_members(works, roles, [5]) == ["first's message"]
    assert exchanged == [0, 1, 2, 3]


@torch.inference_mode()
def test_no_host_sync_inside_the_split_sampling_loop(tiny, monkeypatch):
    """After each member's one read of the wire dtypes, every step only queues device work
    (test_sampling_sync.py's guard; on a GPU it also turns on torch's sync debug mode)."""
    from tests.unit.test_sampling_sync import host_reads_forbidden

    spec, dit = tiny
    ranges = block_ranges(spec.dit, 2)
    roles = [SplitRole(j, 2, a, b) for j, (a, b) in enumerate(ranges)]
    noise = torch.randn(1, spec.dit.audio_vae_latent_dim, 40)
    dtypes = [torch.float32] * 4  # already read: audio, vec, latents (and the visual stream if it crosses)
    works = [[DiTWork(dit, roles[j], _conditioning(dit, 0, 2), noise, 3, 4.5, torch.autograd.grad_mode.no_grad,
                      lambda step, x: x, lambda x: x, list(dtypes))] for j in range(2)]
    with host_reads_forbidden(monkeypatch):
        got = run_members(works, roles, [0])
    assert got[0].shape == noise.shape


def test_more_split_ranks_than_blocks_is_refused():
    from foley_dist.runtime import split_role

    spec = ModelSpec.named("tiny")  # 4 blocks
    topo = Topology.parse(["vision+fusion", "diffusion/5"], 6)
    with pytest.raises(FoleyError, match="only 4 blocks"):
        split_role(topo, 1, spec, 5.0)
    assert split_role(Topology.parse(["vision+fusion", "diffusion/4"], 5), 4, spec, 5.0) == SplitRole(3, 4, 3, 4)
