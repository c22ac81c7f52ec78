"""Pipeline benchmark: foley_dist's runtime against its scheduling model, a sequential loop and
torch.distributed.pipelining, on real gloo ranks.

Parts (--parts):
  1  foley_dist runtime with synthetic stages (fixed sleep per segment, real tensors) for each world
     size, on the layout choose_layout picks (memory-bound by --memory/--capacity), and the best layout
     without a memory limit. ideal_s replays the exact schedule that ran with the stage costs (autolayout.replay);
     formula_s is DESIGN.md's sum(t) + (M-1) * max(group cost / replicas).
  2  peers: torch.distributed.pipelining (PipelineStage + ScheduleGPipe, forward only) with the same
     synthetic stages. It has no replicas: at 3 ranks it runs [vision, fusion, diffusion] (compared with
     foley_dist on that layout); at every world size it also runs a layer split of diffusion over the
     spare ranks, which is optimistic for it (a real DiT split would cross ranks every sampling step).
     The sequential runner is every stage in one process (pipeline.execute, no process group).
  3  the real tiny model end to end on a generated clip: 1 rank, 3 ranks [vision, fusion, diffusion],
     and choose_layout's layout for 3 ranks from the 1-rank run's measured stage costs (torchrun, gloo).
  4  transport overhead: Link.send_message/recv_message (header + packed payload) against raw dist.send/recv of the
     same bytes, median one-way time of ping-pongs.
  5  one long video ("long_video" rows): a 97 s job (24 segments of 5 s, 1 s overlap), --lv-steps steps
     at --lv-step-s per segment-step (both CFG branches; each branch costs half), vision+fusion on one
     rank, diffusion on K = --lv-ranks ranks. seam=joint exchanges the overlap latents every step, and
     CFG-parallel the branch velocities, through the real Link; crossfade samples segments
     independently. Each row runs --lv-repeats times (measured_s: the median, runs_s: all);
     ideal_s = the same mode's single-rank (K = 1) time / K; every row under strict point-to-point
     mode (NCCL's rules) and on plain gloo (--lv-p2p). Also the one-way time of a per-step message
     (Link ping-pong) against the step cost.
  6  the layer split ("layer_split" rows): part 5's job (seam=joint, --lv-steps steps at --split-step-s per
     segment-step) with the DiT split over n = --split-ranks ranks in K = --split-pipelines pipelines
     (layout [vision+fusion, 'diffusion/n xK']): each member costs step / n per step and hands an
     XXL-size hidden state ([2, 250, 1536] fp32, 3 MB; --split-hidden) to the next every step, through
     the runtime's windows, protocol and Link. Efficiency is against the same job on one diffusion
     rank, measured in the same run: single-rank time / (n x K). The final latents are checked equal
     to the single-rank run's. Under --lv-p2p's first mode (strict by default).

The clock of parts 1-2 starts after a barrier: process start-up and model building are not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import benchio
from foley_dist import synthetic
from foley_dist.engine import autolayout, protocol, transport
from foley_dist.engine.message import Message
from foley_dist.engine.schedule import STAGES, Action, Topology, build_schedule


@dataclass
class Run:
    part: int
    runner: str  # foley_dist | torch_pipelining | sequential
    world_size: int
    layout: list[str]
    segments: int
    measured_s: float
    ideal_s: float
    efficiency: float  # ideal_s / measured_s
    speedup: float | None = None  # sequential measured_s / measured_s
    formula_s: float | None = None
    note: str = ""


def parse_map(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


# --- launching ranks ------------------------------------------------------------------------------

def _entry(rank: int, world: int, port: int, fn, args, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        results.put((rank, fn(*args)))
    except BaseException:
        results.put((rank, RuntimeError(f"rank {rank}:\n{traceback.format_exc()}")))


def launch(fn, world: int, *args, timeout: float = 600.0) -> list:
    """fn(*args) on `world` spawned gloo ranks; their return values by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world:
            try:
                rank, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"ranks {sorted(set(range(world)) - set(out))} did not finish in {timeout} s") from None
            if isinstance(value, BaseException):
                raise value
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]


# --- part 1: foley_dist runtime -------------------------------------------------------------------

def _rank_costs(topo: Topology, costs: dict[str, float]) -> dict[int, float]:
    return {r: sum(costs[s] for s in topo.stages_of(r)) for r in range(topo.world_size)}


def _program(layout: list[str], world: int, m: int) -> tuple[Topology, dict[int, list[Action]]]:
    topo = Topology.parse(layout, world)
    return topo, build_schedule(topo, m)


def _synthetic_rank(*args) -> synthetic.RankResult:
    return synthetic.run_rank(*args)


def run_foley(layout: list[str], world: int, costs: dict[str, float], m: int, part: int,
              seq_s: float | None, note: str = "") -> Run:
    topo, prog = _program(layout, world, m)
    res = launch(_synthetic_rank, world, layout, costs, m)
    received = res[topo.sink].received
    if received != [(n, synthetic.expected_audio_value(n), True) for n in range(m)]:
        raise RuntimeError(f"{layout}: sink received wrong items: {received}")
    measured = max(r.end_unix for r in res) - min(r.start_unix for r in res)
    ideal = autolayout.replay(prog, _rank_costs(topo, costs))
    formula = sum(costs.values()) + (m - 1) * autolayout.period(topo, costs)
    return Run(part, "foley_dist", world, layout, m, measured, ideal, ideal / measured,
               seq_s / measured if seq_s else None, formula, note)


def run_sequential(costs: dict[str, float], m: int) -> Run:
    """Every stage in this process, no process group: pipeline.execute on the one-rank layout."""
    layout = ["+".join(STAGES)]
    for k in ("RANK", "WORLD_SIZE"):
        os.environ.pop(k, None)
    res = synthetic.run_rank(layout, costs, m)
    measured = res.end_unix - res.start_unix
    ideal = m * sum(costs.values())
    return Run(1, "sequential", 1, layout, m, measured, ideal, ideal / measured, 1.0, ideal)


def part_foley(args, costs, seq: Run) -> list[Run]:
    runs = []
    for world in args.world_sizes:
        seen = set()
        for memory, note in ((args.memory, "auto, memory-bound"), (None, "auto, no memory limit")):
            layout = autolayout.choose_layout(costs, world, args.segments, memory, args.capacity)
            if tuple(layout) in seen:
                continue
            seen.add(tuple(layout))
            runs.append(run_foley(layout, world, costs, args.segments, 1, seq.measured_s, note))
            print_run(runs[-1])
    return runs


# --- part 2: torch.distributed.pipelining ---------------------------------------------------------

class _TensorStage(nn.Module):
    """Synthetic stages behind pipelining's tensors-in, tensors-out interface (names sorted)."""

    def __init__(self, stages: list[synthetic.SyntheticStage], in_names: list[str]):
        super().__init__()
        self.stages, self.in_names = nn.ModuleList(stages), in_names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        msg = Message(0, dict(zip(self.in_names, tensors)))
        for stage in self.stages:
            msg = stage(msg)
        return tuple(msg.tensors[k] for k in sorted(msg.tensors))


def pipelining_partition(costs: dict[str, float], world: int) -> list[list[tuple[str, float]]]:
    """Ranks' (stage, seconds) lists: diffusion split evenly over the ranks vision and fusion leave."""
    def split(head: list[list[tuple[str, float]]]) -> list[list[tuple[str, float]]]:
        k = world - len(head)
        return head + [[("diffusion", costs["diffusion"] / k)]] * k

    options = [split([[("vision", costs["vision"]), ("fusion", costs["fusion"])]])]
    if world >= 3:
        options.append(split([[("vision", costs["vision"])], [("fusion", costs["fusion"])]]))
    return min(options, key=lambda p: max(sum(c for _, c in r) for r in p))


def chunk_outputs(partition: list[list[tuple[str, float]]]) -> list[dict[str, tuple[int, ...]]]:
    """Each rank's output tensors: its last stage's, but diffusion chunks before the last pass on
    activations the size of the DiT's conditioning."""
    last = len(partition) - 1
    return [synthetic.OUTPUTS["fusion"] if r[-1][0] == "diffusion" and i < last else synthetic.OUTPUTS[r[-1][0]]
            for i, r in enumerate(partition)]


def _pipelining_rank(partition: list[list[tuple[str, float]]], m: int) -> tuple[float, float, list[float] | None]:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    env = transport.detect_env("cpu")
    transport.init(env, 120)
    rank, world = env.rank, env.world_size
    outs = chunk_outputs(partition)
    ins = {"segment": (1, 1)} if rank == 0 else outs[rank - 1]  # the first stage's input: the segment index
    mine = partition[rank]
    stages = [synthetic.SyntheticStage(name, sec, outputs=outs[rank] if i == len(mine) - 1 else None)
              for i, (name, sec) in enumerate(mine)]
    stage = PipelineStage(_TensorStage(stages, sorted(ins)), rank, world, env.device,
                          input_args=tuple(torch.zeros(ins[k]) for k in sorted(ins)),
                          output_args=tuple(torch.zeros(outs[rank][k]) for k in sorted(outs[rank])))
    schedule = ScheduleGPipe(stage, m)
    dist.barrier()
    start = time.time()
    with torch.no_grad():
        out = schedule.eval(torch.arange(m, dtype=torch.float32).reshape(m, 1)) if rank == 0 else schedule.eval()
    end = time.time()
    values = None
    if out is not None:  # every segment's audio, concatenated
        audio = (out[0] if isinstance(out, tuple) else out).reshape(m, -1)
        values = [float(a[0]) for a in audio]
    transport.shutdown()
    return start, end, values


def run_pipelining(costs: dict[str, float], world: int, m: int, seq_s: float | None, split: bool) -> Run:
    partition = pipelining_partition(costs, world) if split else [[(s, costs[s])] for s in STAGES]
    res = launch(_pipelining_rank, world, partition, m)
    depth = sum(len(r) for r in partition)  # every synthetic stage adds 1 to the segment index
    if res[-1][2] != [float(n + depth) for n in range(m)]:
        raise RuntimeError(f"torch pipelining returned wrong audio values: {res[-1][2]}")
    measured = max(r[1] for r in res) - min(r[0] for r in res)
    chunk = [sum(c for _, c in r) for r in partition]
    ideal = sum(chunk) + (m - 1) * max(chunk)
    layout = ["+".join(n if abs(c - costs[n]) < 1e-12 else f"{n}/{round(costs[n] / c)}" for n, c in r) for r in partition]
    note = "diffusion layer-split (optimistic: ignores per-step cross-rank traffic)" if split else "one stage per rank"
    return Run(2, "torch_pipelining", world, layout, m, measured, ideal, ideal / measured,
               seq_s / measured if seq_s else None, ideal, f"GPipe; {note}")


def part_peers(args, costs, seq: Run) -> list[Run]:
    runs = [run_pipelining(costs, 3, args.segments, seq.measured_s, split=False),
            run_foley(list(STAGES), 3, costs, args.segments, 2, seq.measured_s, "one stage per rank")]
    for r in runs:
        print_run(r)
    for world in args.world_sizes:
        runs.append(run_pipelining(costs, world, args.segments, seq.measured_s, split=True))
        print_run(runs[-1])
    return runs


# --- part 3: the real tiny model ------------------------------------------------------------------

def _generate(video: Path, out: Path, layout: list[str], world: int, steps: int, trace: Path | None) -> dict:
    """`foley-dist generate` on `world` ranks (torchrun when > 1); returns its run report."""
    topo = Topology.parse(layout, world)
    per_rank = ",".join("+".join(topo.stages_of(r)) for r in range(world))  # no 'xK' inside a CLI list
    args = [f"video={video}", f"output={out}", f"report={out.with_suffix('.json')}", f"model.steps={steps}",
            "progress=false", "hardware.threads=1", "vision.cache=off", "prompt=rain on a tin roof", "seed=1",
            f"layout.ranks=[{per_rank}]"] + ([f"trace={trace}"] if trace else [])
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"] if world > 1
           else [sys.executable]) + ["-m", "foley_dist", "generate", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return json.loads(out.with_suffix(".json").read_text())


def part_model(args, workdir: Path) -> list[Run]:
    from foley_dist.media.testclip import make_clip

    video = make_clip(workdir / "clip.mp4", seconds=args.clip_seconds, width=160, height=96, fps=24, seed=3)
    single = ["+".join(STAGES)]
    one = _generate(video, workdir / "one.wav", single, 1, args.steps, None)
    m = len(one["jobs"][0]["segments"])
    costs = {s: one["stage_busy_s"][s] / m for s in STAGES}
    print(f"tiny model, {m} segments, {args.steps} steps, 1 thread per rank: stage s/segment "
          f"{({k: round(v, 3) for k, v in costs.items()})}")
    runs = [Run(3, "sequential", 1, single, m, one["wall_s"], m * sum(costs.values()),
                m * sum(costs.values()) / one["wall_s"], 1.0, note="real tiny model, 1 process")]
    print_run(runs[-1])
    auto = autolayout.choose_layout(costs, 3, m)
    for i, (layout, note) in enumerate([(list(STAGES), "real tiny model"), (auto, "real tiny model, auto layout")]):
        if i and layout == list(STAGES):
            continue
        trace = workdir / f"trace{i}.json"
        rep = _generate(video, workdir / f"pp{i}.wav", layout, 3, args.steps, trace)
        ideal = autolayout.predict_makespan(layout, costs, m, 3)
        runs.append(Run(3, "foley_dist", 3, layout, m, rep["wall_s"], ideal, ideal / rep["wall_s"],
                        one["wall_s"] / rep["wall_s"], note=f"{note}; trace {trace}"))
        print_run(runs[-1])
    return runs


# --- part 4: transport overhead -------------------------------------------------------------------

def _pingpong(sizes: list[int], reps: int) -> list[dict]:
    env = transport.detect_env("cpu")
    transport.init(env, 120)
    peer = 1 - env.rank
    n = len(sizes) * (reps + 2)  # ping-pongs; message 2i goes 0 -> 1, 2i + 1 comes back
    order = [("send", ("msg", m), m % 2, 1 - m % 2) for m in range(2 * n)]
    link = transport.Link(env.rank, protocol.programs_from(order)[env.rank], env.device, 120, step_messages=False)
    link.connect()
    rows, item = [], 0
    for size in sizes:
        raw = torch.zeros(size, dtype=torch.uint8)
        x = torch.zeros(size // 4, dtype=torch.float32)
        times = {"raw": [], "transport": []}
        for kind in ("raw", "transport"):
            for i in range(reps + 2):  # two warm-up round trips
                dist.barrier()
                t = time.perf_counter()
                if kind == "raw":
                    if env.rank == 0:
                        dist.send(raw, peer)
                        dist.recv(raw, peer)
                    else:
                        dist.recv(raw, peer)
                        dist.send(raw, peer)
                elif env.rank == 0:
                    link.send_message(Message(item, {"x": x}, {"segment": 0}), peer)
                    link.recv_message(item + 1, peer)
                else:
                    got = link.recv_message(item, peer)
                    link.send_message(Message(item + 1, got.tensors, got.meta), peer)
                item += 2 if kind == "transport" else 0
                if i >= 2:
                    times[kind].append((time.perf_counter() - t) / 2)
        rows.append({"bytes": size, "reps": reps, "raw_s": statistics.median(times["raw"]),
                     "transport_s": statistics.median(times["transport"])})
    link.finish()
    transport.shutdown()
    return rows


def part_transport(args) -> list[dict]:
    rows = launch(_pingpong, 2, args.sizes, args.reps)[0]
    for r in rows:
        r["overhead_s"] = r["transport_s"] - r["raw_s"]
    ms = lambda key: lambda r: f"{r[key] * 1e3:.3f}"  # noqa: E731
    benchio.emit(rows, [("bytes", "bytes"), ("raw ms", ms("raw_s")), ("Link ms", ms("transport_s")),
                        ("overhead ms", ms("overhead_s")), ("ratio", lambda r: f"{r['transport_s'] / r['raw_s']:.2f}")],
                 title="Part 4: transport overhead (median one-way time of ping-pongs)")
    return rows


# --- part 5: one long video ---------------------------------------------------------------------

def _long_video_rank(layout, costs, m, steps, seam, cfg, hidden=None):
    return synthetic.run_rank(layout, costs, m, None, 2, 120.0, steps, seam, cfg, hidden)


def run_long_video(k: int, seam: str, cfg: bool, costs: dict[str, float], m: int, steps: int, split: int = 1,
                   hidden: tuple[int, ...] | None = None) -> dict:
    ranks = 2 * k if cfg else k
    entry = f"diffusion/{split}" + (f" x{k}" if k > 1 else "") if split > 1 else f"diffusion x{ranks}"
    layout = ["vision+fusion", entry]
    ranks *= split
    res = launch(_long_video_rank, ranks + 1, layout, costs, m, steps, seam, cfg, hidden)
    received = res[-1].received
    if received != [(n, synthetic.expected_audio_value(n), True) for n in range(m)]:
        raise RuntimeError(f"{layout}: sink received wrong items: {received}")
    measured = max(r.end_unix for r in res) - min(r.start_unix for r in res)
    return {"part": "long_video", "seam": seam, "diffusion_ranks": ranks, "segment_owners": k, "cfg_parallel": cfg,
            "split": split, "segments": m, "steps": steps, "step_s": costs["diffusion"], "measured_s": measured,
            "latents": res[-1].latents}


def part_layer_split(args) -> list[dict]:
    """Part 6: the long video with the DiT split over n ranks x K pipelines, against one diffusion rank."""
    costs = {"vision": args.lv_vision_s, "fusion": args.lv_fusion_s, "diffusion": args.split_step_s}
    os.environ["FOLEY_DIST_STRICT_P2P"] = "1" if args.lv_p2p[0] == "strict" else "0"
    rows, base = [], None
    for n, k in [(1, 1)] + [(n, k) for n in args.split_ranks for k in args.split_pipelines]:
        runs = [run_long_video(k, "joint", False, costs, args.lv_segments, args.lv_steps, n, args.split_hidden)
                for _ in range(args.lv_repeats)]
        latents = runs[0].pop("latents")
        base = base or (statistics.median(r["measured_s"] for r in runs), latents)
        same = all(bool((latents[i] == base[1][i]).all()) for i in base[1]) and latents.keys() == base[1].keys()
        row = {**runs[0], "part": "layer_split", "p2p": args.lv_p2p[0], "split": n, "pipelines": k, "step_s": args.split_step_s,
               "hidden": list(args.split_hidden),
               "measured_s": statistics.median(r["measured_s"] for r in runs),
               "runs_s": [round(r["measured_s"], 3) for r in runs], "latents_equal_single_rank": same}
        row.pop("latents", None)
        row["ideal_s"] = base[0] / (n * k)
        row["efficiency"] = row["ideal_s"] / row["measured_s"]
        rows.append(row)
        print(f"  split {n} x {k}: {row['measured_s']:.2f} s (efficiency {row['efficiency']:.2f}, latents equal: {same})",
              flush=True)
    benchio.emit(rows, [("p2p", "p2p"), ("step ms", lambda r: f"{r['step_s'] * 1e3:.0f}"),
                        ("hidden state", lambda r: "x".join(map(str, r["hidden"]))), ("ranks per pipeline (n)", "split"),
                        ("pipelines (K)", "pipelines"),
                        ("diffusion ranks", "diffusion_ranks"),
                        ("measured s (runs)", lambda r: f"{r['measured_s']:.2f} ({' / '.join(f'{t:.2f}' for t in r['runs_s'])})"),
                        ("ideal s", "ideal_s"), ("efficiency", "efficiency"),
                        ("latents = 1 rank", lambda r: "yes" if r["latents_equal_single_rank"] else "NO")],
                 title="Part 6: the DiT's blocks split over ranks (seam=joint)")
    return rows


def _step_pingpong(reps: int, shapes: list[tuple[int, ...]]) -> list[dict]:
    """Median one-way seconds of per-step messages (Link.send_step / recv_step, announced ahead as the
    stage does) between neighbours, and of a swap between CFG partners."""
    env = transport.detect_env("cpu")
    transport.init(env, 60)
    order = []
    for j in range(len(shapes)):
        for i in range(reps):  # item 2j + 1's tail from rank 0, item 2j + 2's back from rank 1
            order += [("send", ("tail", 3 * j + 1, i), 0, 1), ("send", ("tail", 3 * j + 2, i), 1, 0)]
        order += [("swap", ("swap", 3 * j, i), 0, 1) for i in range(reps)]
    link = transport.Link(env.rank, protocol.programs_from(order)[env.rank], env.device, 60)
    link.connect()
    rows = []
    for j, shape in enumerate(shapes):
        ping, pong = ("tail", 3 * j + 1), ("tail", 3 * j + 2)
        src = 1 - env.rank
        for i in range(reps):
            link.expect((*(pong if env.rank == 0 else ping), i), src, shape)
        x, times, swaps = torch.zeros(shape), [], []
        for i in range(reps):
            dist.barrier()
            t = time.perf_counter()
            if env.rank == 0:
                link.send_step((*ping, i), x, 1)
                link.recv_step((*pong, i), 1)
            else:
                link.send_step((*pong, i), link.recv_step((*ping, i), 0), 0)
            times.append((time.perf_counter() - t) / 2)
        for i in range(reps):
            dist.barrier()
            t = time.perf_counter()
            link.swap(("swap", 3 * j, i), x, src)
            swaps.append(time.perf_counter() - t)
        rows.append({"shape": list(shape), "bytes": 4 * torch.Size(shape).numel(), "reps": reps,
                     "one_way_s": statistics.median(times[2:]), "swap_s": statistics.median(swaps[2:])})
    link.finish()
    transport.shutdown()
    return rows


def part_long_video(args) -> tuple[list[dict], list[dict]]:
    """Part 5 under each --lv-p2p mode: `strict` runs every rank under NCCL's point-to-point rules
    (FOLEY_DIST_STRICT_P2P=1), `gloo` on plain gloo; each mode's rows are relative to its own K = 1."""
    costs = {"vision": args.lv_vision_s, "fusion": args.lv_fusion_s, "diffusion": args.lv_step_s}
    rows: list[dict] = []
    for mode in args.lv_p2p:
        os.environ["FOLEY_DIST_STRICT_P2P"] = "1" if mode == "strict" else "0"  # inherited by the spawned ranks
        for seam in args.lv_seams:
            base = None
            for k, cfg in [(k, False) for k in args.lv_ranks] + ([(1, True)] if seam == "joint" else []):
                runs = [run_long_video(k, seam, cfg, costs, args.lv_segments, args.lv_steps)
                        for _ in range(args.lv_repeats)]
                for r in runs:
                    del r["latents"]
                row = {**runs[0], "p2p": mode, "measured_s": statistics.median(r["measured_s"] for r in runs),
                       "runs_s": [round(r["measured_s"], 3) for r in runs]}
                if base is None:
                    base = row["measured_s"]
                row["ideal_s"] = base / row["diffusion_ranks"]
                row["speedup"] = base / row["measured_s"]
                row["efficiency"] = row["ideal_s"] / row["measured_s"]
                rows.append(row)
                print(f"  {mode} {seam} K={row['diffusion_ranks']} cfg={cfg}: {row['measured_s']:.2f} s "
                      f"({row['efficiency']:.2f}, {row['speedup']:.2f}x)", flush=True)
    benchio.emit(rows, [("p2p", "p2p"), ("seam", "seam"), ("diffusion ranks", "diffusion_ranks"),
                        ("CFG-parallel", lambda r: "yes" if r["cfg_parallel"] else "no"),
                        ("measured s (runs)", lambda r: f"{r['measured_s']:.2f} ({' / '.join(f'{t:.2f}' for t in r['runs_s'])})"),
                        ("ideal s", "ideal_s"), ("efficiency", "efficiency"), ("speed-up", lambda r: f"{r['speedup']:.2f}x")],
                 title="Part 5: one long video")
    overlap, latents = (1, 128, 50), (1, 128, 250)  # 1 s overlap; a whole 5 s segment (CFG velocity)
    msgs = []
    for mode in args.lv_p2p:
        os.environ["FOLEY_DIST_STRICT_P2P"] = "1" if mode == "strict" else "0"
        for r in launch(_step_pingpong, 2, 30, [overlap, latents])[0]:
            msgs.append({**r, "p2p": mode, "fraction_of_step": r["one_way_s"] / args.lv_step_s,
                         "swap_fraction_of_branch": r["swap_s"] / (args.lv_step_s / 2)})
    benchio.emit(msgs, [("p2p", "p2p"), ("shape", "shape"), ("one-way ms", lambda r: f"{r['one_way_s'] * 1e3:.3f}"),
                        ("% of a step", lambda r: f"{100 * r['fraction_of_step']:.1f}"),
                        ("swap ms", lambda r: f"{r['swap_s'] * 1e3:.3f}"),
                        ("% of a branch", lambda r: f"{100 * r['swap_fraction_of_branch']:.1f}")],
                 title="Per-step messages (median of 28 ping-pongs)")
    return rows, msgs


# --- output ---------------------------------------------------------------------------------------

RUN_COLUMNS = [("part", "part"), ("runner", "runner"), ("ranks", "world_size"), ("layout", lambda r: ", ".join(r["layout"])),
               ("measured s", "measured_s"), ("ideal s", "ideal_s"), ("efficiency", "efficiency"),
               ("speed-up", lambda r: f"{r['speedup']:.2f}x" if r["speedup"] else "-")]


def print_run(r: Run) -> None:
    """Progress line while a part runs; the part's table follows at its end."""
    print(f"  {r.runner} {r.world_size} ranks [{', '.join(r.layout)}]: {r.measured_s:.2f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write results here")
    p.add_argument("--parts", default="1,2,3,4", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--segments", type=int, default=24)
    p.add_argument("--world-sizes", default="3,4,6,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--costs", default="vision=0.12,fusion=0.015,diffusion=0.6", type=parse_map,
                   help="synthetic seconds per segment and stage")
    p.add_argument("--memory", default="vision=6,fusion=2,diffusion=20", type=parse_map,
                   help="per-stage memory for choose_layout (illustrative GB), with --capacity per rank")
    p.add_argument("--capacity", type=float, default=24.0)
    p.add_argument("--clip-seconds", type=float, default=60.0, help="part 3 clip length")
    p.add_argument("--steps", type=int, default=8, help="part 3 sampling steps")
    p.add_argument("--sizes", default="4096,262144,1048576,2949120,16777216", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--reps", type=int, default=30, help="part 4 round trips per size")
    p.add_argument("--lv-segments", type=int, default=24, help="part 5: 97 s = 24 segments of 5 s with 1 s overlap")
    p.add_argument("--lv-steps", type=int, default=50)
    p.add_argument("--lv-step-s", type=float, default=0.012, help="part 5: seconds per segment-step (both branches)")
    p.add_argument("--lv-vision-s", type=float, default=0.01)
    p.add_argument("--lv-fusion-s", type=float, default=0.002)
    p.add_argument("--lv-ranks", default="1,2,4,6,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--lv-seams", default="joint,crossfade", type=lambda s: s.split(","))
    p.add_argument("--lv-repeats", type=int, default=3, help="part 5: runs per row; measured_s is their median")
    p.add_argument("--lv-p2p", default="strict,gloo", type=lambda s: s.split(","),
                   help="part 5: point-to-point modes (strict = NCCL's rules enforced on gloo)")
    p.add_argument("--split-ranks", default="2,4", type=lambda s: [int(x) for x in s.split(",")],
                   help="part 6: ranks per split pipeline (n)")
    p.add_argument("--split-pipelines", default="1,2", type=lambda s: [int(x) for x in s.split(",")],
                   help="part 6: split pipelines (K)")
    p.add_argument("--split-step-s", type=float, default=0.077,
                   help="part 6: seconds per segment-step on one rank (default: XXL on a 50 TFLOPS workstation GPU, "
                        "the planner's estimate for the 8-16 GB cards a split is for)")
    p.add_argument("--split-hidden", default=synthetic.HIDDEN, type=lambda s: tuple(int(x) for x in s.split(",")),
                   help="part 6: shape of the hidden state handed on per step (fp32; default XXL's [2, 250, 1536])")
    args = p.parse_args()

    result: dict = {"host": {"cpus": os.cpu_count(), "torch": torch.__version__, "loadavg_start": os.getloadavg()},
                    "costs": args.costs, "runs": [], "transport": []}
    seq = None
    if {1, 2} & set(args.parts):
        seq = run_sequential(args.costs, args.segments)
        result["runs"].append(asdict(seq))
        print_run(seq)
    if 1 in args.parts:
        result["runs"] += [asdict(r) for r in part_foley(args, args.costs, seq)]
    if 2 in args.parts:
        result["runs"] += [asdict(r) for r in part_peers(args, args.costs, seq)]
    if 3 in args.parts:
        workdir = Path(tempfile.mkdtemp(prefix="bench_model_"))
        result["runs"] += [asdict(r) for r in part_model(args, workdir)]
    if 4 in args.parts:
        result["transport"] = part_transport(args)
    if 5 in args.parts:
        lv, msgs = part_long_video(args)
        result["runs"] += lv
        result["step_messages"] = msgs
    if 6 in args.parts:
        result["runs"] += part_layer_split(args)
    runs = [r for r in result["runs"] if isinstance(r.get("part"), int)]
    if runs:
        benchio.emit(runs, RUN_COLUMNS, title="Parts 1-3: pipeline runs")
    result["host"]["loadavg_end"] = os.getloadavg()
    benchio.write_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
