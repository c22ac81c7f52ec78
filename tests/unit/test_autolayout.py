"""Scheduling model: predicted makespans against hand-derived values, and the layouts it picks."""

import pytest

from foley_dist.engine.autolayout import candidate_layouts, choose_layout, period, predict_makespan
from foley_dist.engine.schedule import Topology
from foley_dist.errors import FoleyError

COSTS = {"vision": 0.12, "fusion": 0.015, "diffusion": 0.6}
# A rank holds the DiT (+VAE) and the text encoder, but not the DiT and the video encoders.
MEMORY, CAPACITY = {"vision": 6.0, "fusion": 2.0, "diffusion": 20.0}, 24.0


@pytest.mark.parametrize("m", [1, 2, 24])
def test_one_rank_per_stage_is_the_design_formula(m):
    expected = sum(COSTS.values()) + (m - 1) * max(COSTS.values())
    assert predict_makespan(["vision", "fusion", "diffusion"], COSTS, m, 3) == pytest.approx(expected)


def test_single_rank_is_the_sum_of_all_work():
    assert predict_makespan(["vision+fusion+diffusion"], COSTS, 10, 1) == pytest.approx(10 * 0.735)


def test_colocation_adds_costs_and_replicas_divide_the_period():
    topo = Topology.parse(["vision+fusion", "diffusion x3"], 4)
    assert period(topo, COSTS) == pytest.approx(0.2)
    # Rank 0 delivers item 2 at 0.405; the sink replica (rank 3) computes its own items 2,5,...,23 back
    # to back from then (sink-first: the other replicas' results are collected in between).
    assert predict_makespan(topo, COSTS, 24) == pytest.approx(0.405 + 8 * 0.6)


def test_comm_term_is_added_per_hop():
    base = predict_makespan(["vision", "fusion", "diffusion"], COSTS, 1, 3)
    assert predict_makespan(["vision", "fusion", "diffusion"], COSTS, 1, 3, comm_s=0.01) == pytest.approx(base + 0.02)


def test_sink_first_keeps_back_pressure_from_stalling_replicas():
    # Were the sink replica to collect its peers' earlier items before computing its own, it would take
    # its items late and, with two sends in flight, block rank 0 (measured 4.56 s on gloo ranks).
    # Computing first, bounded sends cost nothing: replica 3 gets item 3 at 0.48 s and runs 5 items.
    layout = ["vision", "fusion+diffusion x5"]
    assert predict_makespan(layout, COSTS, 24, 6, max_inflight=None) == pytest.approx(0.48 + 5 * 0.615)
    assert predict_makespan(layout, COSTS, 24, 6, max_inflight=2) == pytest.approx(0.48 + 5 * 0.615)


def test_candidates_cover_groupings_times_replica_counts():
    assert len(candidate_layouts(3)) == 1 + 2 * 2 + 1  # [v+f+d x3], 2 two-group cuts x 2 splits, [v,f,d]
    assert len(candidate_layouts(8)) == 1 + 2 * 7 + 21
    for lay in candidate_layouts(8, MEMORY, CAPACITY):
        assert not any("vision" in e and "diffusion" in e for e in lay)


@pytest.mark.parametrize("world,expected", [
    (3, ["vision+fusion", "diffusion x2"]),
    (4, ["vision+fusion", "diffusion x3"]),
    (6, ["vision", "fusion+diffusion x5"]),
    (8, ["vision+fusion x2", "diffusion x6"]),
])
def test_memory_bound_layouts_replicate_diffusion(world, expected):
    assert choose_layout(COSTS, world, 24, MEMORY, CAPACITY) == expected


@pytest.mark.parametrize("world", [3, 4, 8])
def test_without_memory_limit_replicating_everything_wins(world):
    assert choose_layout(COSTS, world, 24) == [f"vision+fusion+diffusion x{world}"]


def test_ties_prefer_fewer_colocated_stages():
    # One item: every layout costs the plain sum, so the one-rank-per-stage layout wins the tie.
    assert choose_layout(COSTS, 3, 1) == ["vision", "fusion", "diffusion"]


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(FoleyError, match="no layout of 1 rank"):
        choose_layout(COSTS, 1, 4, MEMORY, CAPACITY)
    with pytest.raises(FoleyError, match="each of vision, fusion, diffusion"):
        choose_layout({"vision": 1.0}, 3, 4)


def test_a_split_pipeline_costs_its_share_per_window_item():
    # rank 0 delivers items 0 and 1 at 0.135 and 0.27; each enters the window as it arrives and costs
    # 0.6 / 2 of both members, then the owner hands both to the sink (the second member)
    assert predict_makespan(["vision+fusion", "diffusion/2"], COSTS, 2, 3) == pytest.approx(0.135 + 2 * 0.3)
    # two pipelines of two ranks keep about the pace of four replicas
    replicas = predict_makespan(["vision+fusion", "diffusion x4"], COSTS, 24, 5)
    assert predict_makespan(["vision+fusion", "diffusion/2 x2"], COSTS, 24, 5) == pytest.approx(replicas, rel=0.1)


def test_split_candidates_keep_diffusion_alone_and_last():
    assert candidate_layouts(5, split=2) == [["vision+fusion", "diffusion/2 x2"], ["vision+fusion x3", "diffusion/2"],
                                             ["vision", "fusion x2", "diffusion/2"], ["vision x2", "fusion", "diffusion/2"]]
    assert choose_layout(COSTS, 5, 24, split=2) == ["vision+fusion", "diffusion/2 x2"]


def test_split_pipelines_of_three_or_more_keep_their_pace():
    # the sink (the last member) takes a window's results right after the window, so an owner never
    # holds more of them than the send bound allows: a 3-way split keeps the pace of 3 replicas
    replicas = predict_makespan(["vision+fusion", "diffusion x3"], COSTS, 12, 4)
    assert predict_makespan(["vision+fusion", "diffusion/3"], COSTS, 12, 4) == pytest.approx(replicas, rel=0.1)
    assert choose_layout(COSTS, 4, 12, split=3) == ["vision+fusion", "diffusion/3"]
