"""Topology validation and the static schedule, without a process group."""

from collections import Counter

import pytest

from foley_dist.engine.protocol import ItemPlan, check_job, connections
from foley_dist.engine.schedule import Topology, build_schedule, format_grid
from foley_dist.errors import FoleyError


def test_pipeline_layout_groups_and_sink():
    topo = Topology.parse(["vision", "fusion", "diffusion"], 3)
    assert [g.stages for g in topo.groups] == [("vision",), ("fusion",), ("diffusion",)]
    assert topo.sink == 2
    assert topo.stages_of(1) == ("fusion",)


def test_replicas_and_colocation():
    topo = Topology.parse(["vision+fusion", "diffusion x3"], 4)
    assert topo.groups[0].ranks == (0,) and topo.groups[1].ranks == (1, 2, 3)
    assert [topo.groups[1].owner(n) for n in range(5)] == [1, 2, 3, 1, 2]


@pytest.mark.parametrize("layout,world,needle", [
    (["vision", "diffusion"], 2, "exactly once"),
    (["fusion", "vision", "diffusion"], 3, "in the order"),
    (["vision", "fusion", "diffusion"], 2, "WORLD_SIZE is 2"),
    (["vision", "fusion", "diffusion x0"], 3, "positive integer"),
    (["vision", "audio", "diffusion"], 3, "'audio'"),
    (["diffusion", "vision", "fusion", "diffusion"], 4, "exactly once"),
])
def test_bad_layouts_name_the_problem(layout, world, needle):
    with pytest.raises(FoleyError, match=needle):
        Topology.parse(layout, world)


@pytest.mark.parametrize("layout,world", [
    (["vision", "fusion", "diffusion"], 3),
    (["vision+fusion", "diffusion x3"], 4),
    (["vision", "fusion x2", "diffusion x3"], 6),
    (["vision+fusion+diffusion"], 1),
])
def test_every_send_has_a_matching_recv_in_order(layout, world):
    topo = Topology.parse(layout, world)
    prog = build_schedule(topo, 7)
    sends = [(r, a.peer, a.item) for r, acts in prog.items() for a in acts if a.kind == "send"]
    recvs = [(a.peer, r, a.item) for r, acts in prog.items() for a in acts if a.kind == "recv"]
    assert Counter(sends) == Counter(recvs)
    for r, acts in prog.items():  # increasing item order per rank (the sink: per upstream link + collects)
        for peer in {a.peer for a in acts if a.peer is not None}:
            items = [a.item for a in acts if a.peer == peer]
            assert items == sorted(items)
        own = [a.item for a in acts if a.kind == "compute"]
        assert own == sorted(own)
    collected = [a.item for a in prog[topo.sink] if a.kind == "collect"]
    assert collected == list(range(7))
    sink = prog[topo.sink]
    for i, a in enumerate(sink):  # every result is collected after it was computed or received
        if a.kind == "collect":
            assert any(b.item == a.item and b.kind in ("compute", "recv") for b in sink[:i])
    computes = Counter(a.item for acts in prog.values() for a in acts if a.kind == "compute")
    assert all(computes[n] == len(topo.groups) for n in range(7))


def test_sink_computes_its_own_item_before_collecting_earlier_ones():
    topo = Topology.parse(["vision+fusion", "diffusion x2"], 3)
    sink = [str(a) for a in build_schedule(topo, 4)[2]]
    assert sink == ["<1@0", "C1", "<0@1", "+0", "+1", "<3@0", "C3", "<2@1", "+2", "+3"]


def test_grid_and_the_peers_each_rank_connects_to():
    topo = Topology.parse(["vision", "fusion", "diffusion"], 3)
    grid = format_grid(build_schedule(topo, 2))
    assert grid.splitlines()[0].split() == ["rank", "0:", "C0", ">0@1", "C1", ">1@1"]
    assert connections(check_job(topo, [ItemPlan()] * 2)[1]) == {"stage": [0, 2]}
    topo = Topology.parse(["vision+fusion", "diffusion x2"], 3)
    progs = check_job(topo, [ItemPlan()] * 2)
    assert connections(progs[1]) == {"stage": [0, 2]} and connections(progs[2]) == {"stage": [0, 1]}
