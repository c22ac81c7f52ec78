"""The protocol verifier's coverage table: every layout of 1..16 ranks (each grouping of the stages,
each replica count, CFG pairs where the last group is diffusion alone with an even count, the DiT's
blocks split over every divisor of that group's ranks, windows sized for the job) x every
segment count 1..30 x each seam mode, each job's programs replayed under NCCL's rules
(foley_dist.engine.protocol.verify, which raises on the first job that would deadlock). Prints one
row per world size and writes JSON.

    python scripts/verify_protocol.py --json out/verify_protocol.json [--steps 2] [--max-world 16]
"""

from __future__ import annotations

import argparse
import time

import benchio
from foley_dist.engine.autolayout import every_topology
from foley_dist.engine.protocol import ItemPlan, build_programs, code_events, verify

COSTS = {"vision": 1.0, "fusion": 0.2, "diffusion": 5.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--steps", type=int, default=2, help="sampling steps per segment (per-step messages)")
    ap.add_argument("--max-world", type=int, default=16)
    ap.add_argument("--segments", type=int, default=30)
    args = ap.parse_args()
    rows = []
    for world in range(1, args.max_world + 1):
        start, cases, ops = time.perf_counter(), 0, 0
        found = len(every_topology(world))
        for n in range(1, args.segments + 1):
            for topo in every_topology(world, n):
                cfg = bool(topo.groups[-1].partners)
                for seam in ("joint", "crossfade"):
                    items = [ItemPlan(args.steps, seam == "joint" and i > 0, cfg) for i in range(n)]
                    events = code_events(topo, items, COSTS)
                    ops += verify(events, build_programs(events)).ops
                    cases += 1
        rows.append({"world": world, "layouts": found, "cases": cases, "ops": ops,
                     "seconds": round(time.perf_counter() - start, 2)})
        print(f"  {world} ranks: {cases} cases verified", flush=True)
    total = {"world": "all", **{k: sum(r[k] for r in rows) for k in ("layouts", "cases", "ops", "seconds")}}
    benchio.emit(rows + [total], [("ranks", "world"), ("layouts", "layouts"), ("jobs verified", "cases"),
                                  ("p2p ops replayed", "ops"), ("seconds", "seconds")],
                 args.json, title=f"Protocol verifier: every layout x 1..{args.segments} segments x 2 seams, {args.steps} steps")


if __name__ == "__main__":
    main()
