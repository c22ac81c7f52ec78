"""`foley-dist launch [torchrun options] -- generate|batch ...`: torch's elastic agent, exit codes kept.

A farm manager decides from the exit code whether to retry. Under plain torchrun every failure
becomes exit 1 plus a 50-line dump. This entry parses torchrun's own options with
`torch.distributed.run`'s parser and runs its elastic agent (`torch.distributed.run.run` ->
`elastic_launch`), then exits with the root-cause worker's code and prints that worker's one-line
message. Workers record the code and the line in TORCHELASTIC_ERROR_FILE (errors.record_failure);
the root cause is:

1. a worker killed by a signal other than SIGTERM (SIGKILL, the OOM killer), which records nothing:
   3, its peers' "peer failure" lines follow from it; the job is retryable and resumes. When several
   died so (NCCL's watchdog SIGABRTs survivors if its error handling is set to tear down), the one its
   peers' heartbeats named (engine/liveness.py), then one not killed by SIGABRT;
2. else the rank the peers' heartbeats named (each such record carries its `cause`): its own recorded
   failure if it was not itself a consequence (3, 143), else 3 with the peer's line naming it (a hung
   or SIGSTOPped rank, which the agent then terminates);
3. else the earliest recorded failure other than 143 (2 bad input, 3 peer died, 4 partial batch);
4. else a worker that exited non-zero without recording (1: a bug, its traceback is above);
5. else 143: the workers were terminated (pre-emption), retry to resume.

The launcher itself stopped by a signal exits 128 + signal (SIGTERM: 143). `--verbose` also prints
torch's full failure report and keeps its log lines. `generate` is validated here first (settings,
input video, output paths), so bad input is refused before any rank starts.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter

from foley_dist.console import say

USAGE = """usage: foley-dist launch [--verbose] [torchrun options] -- generate|batch [key=value ...]
  e.g. foley-dist launch --standalone --nproc-per-node=3 -- generate video=clip.mp4 prompt="rain"
exit codes: 0 done; 2 bad input (do not retry); 3 a rank died (retry: resumes); 4 batch partly failed
(see results); 143 terminated (retry: resumes); 1 a bug (see the traceback above)"""

PREEMPTED = 143


def _quiet_torch_logs() -> None:
    """torch's elastic loggers write their own copy of every failure; keep only ours."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def root_cause(failures: dict) -> tuple[int, int, str]:
    """(rank, exit code, one-line message) of the failure that caused the others (module docstring)."""
    recorded, died = {}, {}
    for rank, failure in sorted(failures.items()):
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        if data.get("foley_dist"):
            recorded[rank] = data["foley_dist"]
        else:
            died[rank] = failure
    named = Counter(info["cause"] for info in recorded.values() if info.get("cause") is not None)
    killed = sorted((rank not in named, f.exitcode == -signal.SIGABRT, rank) for rank, f in died.items()
                    if f.exitcode < 0 and f.exitcode != -signal.SIGTERM)
    if killed:  # its peers only noticed it: they recorded 3 after it died
        rank = killed[0][2]
        return rank, 3, f"rank {rank} was killed by {died[rank].signal_name()}; re-run the same command to resume"
    if named:
        rank = min(named, key=lambda r: (-named[r], r))
        own = recorded.get(rank)
        if own is not None and int(own["exit_code"]) not in (3, PREEMPTED):
            return rank, int(own["exit_code"]), own["message"]
        return rank, 3, min((i["time"], i["message"]) for i in recorded.values() if i.get("cause") == rank)[1]
    real = sorted((i["time"], rank, int(i["exit_code"]), i["message"]) for rank, i in recorded.items()
                  if int(i["exit_code"]) != PREEMPTED)
    if real:
        _, rank, code, message = real[0]
        return rank, code, message
    for rank, f in died.items():
        if f.exitcode > 0:
            return rank, f.exitcode, f"rank {rank} exited with code {f.exitcode} without a message (see its output above)"
    rank = min(failures)
    return rank, PREEMPTED, f"rank {rank} was terminated (SIGTERM); finished segments are kept, re-run to resume"


def _preflight(overrides: list[str]) -> int:
    """The checks every rank repeats, once before starting any: 0, or the exit code after its one line."""
    from foley_dist import config
    from foley_dist.errors import FoleyError
    from foley_dist.jobs import generate_jobs

    try:
        generate_jobs(config.load("generate", overrides))
    except FoleyError as e:
        say(f"foley-dist: error: {e}")
        return e.exit_code
    return 0


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    command = argv[split + 1 :]
    if not command or command[0] not in ("generate", "batch"):
        print(USAGE, file=sys.stderr)
        return 2
    # until torch's agent installs its own handlers (which stop the workers first), TERM just ends here
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(PREEMPTED))
    verbose = "--verbose" in argv[:split]
    options = [a for a in argv[:split] if a != "--verbose"]

    if command[0] == "generate" and (code := _preflight(command[1:])):
        return code

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from foley_dist.engine.liveness import NCCL_ENV

    for key, value in NCCL_ENV.items():  # before the agent, which sets TORCH_NCCL_ASYNC_ERROR_HANDLING=1 if unset
        os.environ.setdefault(key, value)

    args = torchrun.parse_args([*options, "-m", "foley_dist", *command])
    if not verbose:
        _quiet_torch_logs()
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        rank, code, message = root_cause(e.failures)
        if verbose:
            print(e.format_msg(), file=sys.stderr)
        say(f"foley-dist launch: exit {code} (rank {rank}): {message}")
        return code
    except SignalException as e:
        say(f"foley-dist launch: stopped by {signal.Signals(e.sigval).name}; finished segments are kept, "
            "re-run the same command to resume")
        return 128 + int(e.sigval)
    return 0
