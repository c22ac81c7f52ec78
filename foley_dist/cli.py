"""`foley-dist` / `python -m foley_dist`: a command, then hydra-style key=value overrides.

    foley-dist generate video=clip.mp4 prompt="rain on a tin roof" output=out/rain.wav
    torchrun --nproc_per_node=3 -m foley_dist generate video=clip.mp4 prompt="..."
    torchrun --nproc_per_node=3 -m foley_dist batch manifest=jobs.jsonl output_root=out/batch
    foley-dist plan resolution=2160p duration=600 gpus=4 gpu_memory=80GB model=hunyuan_xxl

Exit codes: 0 success; 2 bad input or configuration (one line on stderr); 3 a peer rank failed or
timed out; 4 a batch finished but some items failed (see its results file); 143 SIGTERM (pre-emption:
finished work is kept, re-run the same command to resume); 130 Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from foley_dist import config
from foley_dist.console import say
from foley_dist.engine import transport
from foley_dist.errors import FoleyError, record_failure

USAGE = """usage: foley-dist COMMAND [key=value ...]

commands:
  generate  video=PATH prompt=TEXT [output=out/foley.wav seed=0 segment_seconds=5 overlap_seconds=1 mux=false
            model=tiny|hunyuan_xl|hunyuan_xxl model.path=DIR model.steps=50 layout=pipeline|single|replicated
            layout.ranks=[...] hardware=auto|cpu|gpu trace=PATH ...]
  batch     manifest=jobs.jsonl|jobs.csv [output_root=out/batch results=PATH ...same settings as generate]
  launch    [--verbose] [torchrun options] -- generate|batch ...   torch's elastic agent; exits with the
            failing rank's code (2, 3, 4, 143) and prints its one line instead of torchrun's report
  plan      video=PATH | resolution=2160p duration=120 [gpus=4 gpu_memory=80GB model=hunyuan_xxl precision=bf16 json=PATH
            weights=auto|full|fp8 offload=auto|none|blocks]
            per-stage memory, FLOPs and time share, DiT memory option (fp8 / block offload), layout, whether it fits
  convert   [--fp8] IN.pth OUT.safetensors   a release checkpoint as safetensors (memory-mapped, no pickle; --fp8: fp8 DiT blocks)
  plot-trace TRACE.json OUT.png [--setup --title T]   a run's trace as a Gantt chart (needs the plot extra)
Run under torchrun for one rank per stage; without it every stage runs in this process. See README.md."""


class BatchIncomplete(Exception):
    """A batch finished but some items failed (exit 4): the message says where the results are."""


class Preempted(Exception):
    """SIGTERM (Slurm pre-emption, torchrun shutdown): stop now; finished segments are on disk."""

    exit_code = 143  # what peers read from this rank's end (engine/liveness.py)


def _on_sigterm(signum, frame) -> None:
    raise Preempted()


def _print_summary(report: dict, written: str) -> None:
    lines = [f"wrote {written}  (wall {report['wall_s']:.2f} s, {report['world_size']} rank(s))",
             f"segments: {report['segments_resumed']} resumed from an earlier run, {report['segments_cached']} from the "
             f"feature cache; damaged or missing video frames skipped: {report['frames_skipped']}",
             f"{'stage':<10} {'busy s':>8}"]
    lines += [f"{name:<10} {busy:>8.2f}" for name, busy in report["stage_busy_s"].items()]
    lines.append(f"{'rank':<5} {'stages':<26} {'busy s':>8} {'wait s':>8} {'peak RSS MB':>12}")
    for r in report["ranks"]:
        lines.append(f"{r['rank']:<5} {'+'.join(r['stages']):<26} {r['busy_s']:>8.2f} {r['comm_wait_s']:>8.2f} {r['peak_rss_mb']:>12.0f}")
    say("\n".join(lines), sys.stdout)


def generate(overrides: list[str]) -> int:
    from foley_dist.audio.output import write_json_atomic
    from foley_dist.jobs import generate_jobs, report_path

    cfg = config.load("generate", overrides)
    jobs = generate_jobs(cfg)  # validates the input before the heavy model imports
    from foley_dist.api import FoleyPipeline

    results = FoleyPipeline(cfg).run_jobs(jobs)
    if results is None:
        return 0  # not the sink rank
    (result,) = results
    if result.status["status"] != "done":
        raise FoleyError(result.status["reason"])
    report_file = Path(report_path(cfg))
    write_json_atomic(report_file, {**result.report, "status": result.status})
    muxed = f" + {result.status['muxed']}" if "muxed" in result.status else ""
    _print_summary(result.report, f"{cfg.output}{muxed} and {report_file}")
    return 0


def batch(overrides: list[str]) -> int:
    from foley_dist.api import FoleyPipeline
    from foley_dist.audio.output import write_json_atomic, write_jsonl_atomic
    from foley_dist.audio.sink import skip_finished_jobs
    from foley_dist.jobs import batch_jobs, run_outputs

    cfg = config.load("batch", overrides)
    root = Path(cfg.output_root)
    journal = root / ".finished.jsonl"
    jobs, rejected = batch_jobs(cfg)
    results_file = Path(cfg.results or root / "results.jsonl")
    run_outputs({"results": str(results_file), "report": cfg.report or str(root / "report.json"), "trace": cfg.trace},
                jobs, [cfg.manifest])
    jobs, earlier = skip_finished_jobs(jobs, journal)
    results = FoleyPipeline(cfg).run_jobs(jobs, journal) if jobs else None
    if int(os.environ.get("RANK", 0)) != int(os.environ.get("WORLD_SIZE", 1)) - 1:
        return 0  # not the sink (last) rank: the sink writes the results
    status = {i: r.status for i, r in enumerate(results or [])}
    report = results[0].report if results else None
    rows = [{"video": j.video, "output": j.output, "key": j.key, "status": "done", "from_earlier_run": True} for j in earlier]
    rows += [{"video": r.video, "output": r.output, "status": "failed", "reason": r.reason} for r in rejected]
    rows += [{"video": j.video, "output": j.output, "key": j.key, **status.get(i, {"status": "failed", "reason": "not finished"})}
             for i, j in enumerate(jobs)]
    write_jsonl_atomic(results_file, rows)
    if report is not None:
        write_json_atomic(cfg.report or root / "report.json", report)
    failed = [r for r in rows if r["status"] != "done"]
    lines = [f"batch: {len(rows) - len(failed)} of {len(rows)} item(s) done ({len(earlier)} by earlier runs), "
             f"{len(failed)} failed; results in {results_file}"]
    if report is not None:
        lines.append(f"segments: {report['segments_resumed']} resumed from an earlier run, "
                     f"{report['segments_cached']} from the feature cache; damaged or missing video frames "
                     f"skipped: {report['frames_skipped']}")
    lines += [f"  failed: {r['video'] or '?'} -> {r['output'] or '?'}: {r['reason']}" for r in failed]
    say("\n".join(lines), sys.stdout)
    if failed:
        raise BatchIncomplete(f"{len(failed)} of {len(rows)} batch item(s) failed; see {results_file}")
    return 0


def plan(overrides: list[str]) -> int:
    from foley_dist.planning.plan import plan_command

    return plan_command(overrides)


def convert(args: list[str]) -> int:
    from foley_dist.tools.convert_checkpoint import main as convert_main

    return convert_main(args)


def plot_trace(args: list[str]) -> int:
    from foley_dist.tools.plot_trace import main as plot_main

    return plot_main(args)


def launch(argv: list[str]) -> int:
    from foley_dist.launch import main as launch_main

    return launch_main(argv)


COMMANDS = {"generate": generate, "batch": batch, "plan": plan, "plot-trace": plot_trace, "convert": convert}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "launch":
        return launch(argv[1:])  # torch's agent installs its own signal handlers
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    rank = os.environ.get("RANK", "0")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except FoleyError as e:
        return record_failure(e.exit_code, f"foley-dist: error: {e}")
    except BatchIncomplete as e:
        return record_failure(4, f"foley-dist: batch incomplete: {e}")
    except transport.PeerTimeout as e:
        return record_failure(3, f"foley-dist: rank {rank}: peer failure: {e}")
    except Preempted:
        return record_failure(143, f"foley-dist: rank {rank}: terminated (SIGTERM); finished segments are kept, "
                                   "re-run to resume")
    except KeyboardInterrupt:
        return record_failure(130, f"foley-dist: rank {rank}: interrupted")
    finally:
        transport.shutdown()
