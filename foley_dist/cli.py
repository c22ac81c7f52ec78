"""`foley-dist` / `python -m foley_dist`: subcommand, then hydra-style key=value overrides.

    foley-dist generate video=clip.mp4 prompt="rain on a tin roof" output=out/rain.wav
    torchrun --nproc_per_node=3 -m foley_dist generate video=clip.mp4 prompt="..."
"""

from __future__ import annotations

import os
import sys

from foley_dist import config, transport
from foley_dist.errors import FoleyError

USAGE = """usage: foley-dist COMMAND [key=value ...]

commands:
  generate   video=PATH prompt=TEXT [output=out/foley.wav seed=0 segment_seconds=5 overlap_seconds=1
             model=tiny|hunyuan_xl|hunyuan_xxl model.path=DIR layout=pipeline|single|replicated
             layout.ranks=[...] hardware=auto|cpu|gpu trace=PATH ...]
Run under torchrun for one rank per stage; without it every stage runs in this process."""


def _print_summary(report: dict, out: str, report_file: str) -> None:
    lines = [f"wrote {out} and {report_file}  (wall {report['wall_s']:.2f} s, {report['world_size']} rank(s))",
             f"{'stage':<10} {'busy s':>8}"]
    lines += [f"{name:<10} {busy:>8.2f}" for name, busy in report["stage_busy_s"].items()]
    lines.append(f"{'rank':<5} {'stages':<26} {'busy s':>8} {'wait s':>8} {'peak RSS MB':>12}")
    for r in report["ranks"]:
        lines.append(f"{r['rank']:<5} {'+'.join(r['stages']):<26} {r['busy_s']:>8.2f} {r['comm_wait_s']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    print("\n".join(lines), flush=True)


def generate(overrides: list[str]) -> None:
    from foley_dist.output import write_json_atomic
    from foley_dist.runtime import make_job, report_path, run

    cfg = config.load("generate", overrides)
    job = make_job(cfg, cfg.video, cfg.prompt, cfg.output, cfg.seed)
    report = run(cfg, [job])
    if report is not None:
        path = report_path(cfg)
        write_json_atomic(path, report)
        _print_summary(report, cfg.output, str(path))


COMMANDS = {"generate": generate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rank = os.environ.get("RANK", "0")
    try:
        COMMANDS[argv[0]](argv[1:])
        return 0
    except FoleyError as e:
        print(f"foley-dist: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except transport.PeerTimeout as e:
        print(f"foley-dist: rank {rank}: peer failure: {e}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt:
        print(f"foley-dist: rank {rank}: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        transport.shutdown()
