"""Render a run's Chrome trace (`foley-dist generate ... trace=PATH`) as a Gantt chart PNG.

One row per rank; compute spans are coloured by stage and labelled with their segment, waits on
peers (recv, send back-pressure, flush) are grey and hatched, so pipeline bubbles and the bottleneck
stage are visible at a glance. Time 0 is the first pipeline event; model building is left out unless
--setup is given, because it would dwarf the steady state.

    foley-dist plot-trace out/trace.json out/trace.png

matplotlib is an optional dependency (`pip install 'foley-dist[plot]'`): it is imported only here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from foley_dist.errors import FoleyError

STAGE_COLOURS = {"vision": "tab:blue", "fusion": "tab:orange", "diffusion": "tab:green"}
OTHER = {"comm": ("0.75", "////", "wait on peer"), "io": ("tab:purple", "", "sink (stitch + write)"),
         "setup": ("0.9", "..", "setup")}


def load_spans(trace: dict, setup: bool) -> tuple[dict[int, str], list[dict]]:
    """Row labels by rank, and the complete ("X") events to draw, in seconds from the first one."""
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    spans = [e for e in events if e.get("ph") == "X" and (setup or e.get("cat") != "setup")]
    t0 = min((e["ts"] for e in spans), default=0.0)
    out = [{"rank": e["pid"], "cat": e.get("cat", "compute"), "stage": e.get("args", {}).get("stage", e["name"]),
            "item": e.get("args", {}).get("item", -1), "start": (e["ts"] - t0) / 1e6, "dur": e["dur"] / 1e6} for e in spans]
    for s in out:
        names.setdefault(s["rank"], f"rank {s['rank']}")
    return names, out


def plot(trace: dict, out: str | Path, setup: bool = False, title: str | None = None) -> None:
    try:
        import matplotlib
    except ImportError:
        raise FoleyError("plot-trace needs matplotlib: pip install 'foley-dist[plot]' (or -e '.[plot]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names, spans = load_spans(trace, setup)
    ranks = sorted(names)
    end = max((s["start"] + s["dur"] for s in spans), default=1.0)
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(ranks) + 1.6))
    label_min = end / 60  # only label spans wide enough to hold a number
    for s in spans:
        row = ranks.index(s["rank"])
        if s["cat"] == "compute":
            colour, hatch, height = STAGE_COLOURS.get(s["stage"], "tab:gray"), "", 0.8
        else:
            colour, hatch, _ = OTHER.get(s["cat"], OTHER["comm"])
            height = 0.5
        ax.broken_barh([(s["start"], s["dur"])], (row - height / 2, height), facecolors=colour, hatch=hatch,
                       edgecolor="white" if s["cat"] == "compute" else "0.5", linewidth=0.5,
                       zorder=2 if s["cat"] == "compute" else 1)  # short compute spans stay visible
        if s["cat"] == "compute" and s["dur"] >= label_min and s["item"] >= 0:
            ax.text(s["start"] + s["dur"] / 2, row, str(s["item"]), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(ranks)), [names[r] for r in ranks])
    ax.invert_yaxis()
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds")
    order = list(STAGE_COLOURS)
    stages = sorted({s["stage"] for s in spans if s["cat"] == "compute"}, key=lambda n: order.index(n) if n in order else len(order))
    handles = [Patch(facecolor=STAGE_COLOURS.get(n, "tab:gray"), label=n) for n in stages]
    handles += [Patch(facecolor=c, hatch=h, edgecolor="0.5", label=lab) for cat, (c, h, lab) in OTHER.items()
                if any(s["cat"] == cat for s in spans)]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18 if len(ranks) > 2 else -0.3),
              ncol=len(handles), frameon=False)
    ax.set_title(title or "pipeline timeline (numbers: segment)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="foley-dist plot-trace", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="Chrome trace JSON written by trace=PATH")
    p.add_argument("out", help="PNG to write")
    p.add_argument("--setup", action="store_true", help="also draw model building")
    p.add_argument("--title")
    args = p.parse_args(argv)
    if not Path(args.trace).is_file():
        raise FoleyError(f"trace {args.trace} not found; write one with generate ... trace=PATH")
    plot(json.loads(Path(args.trace).read_text()), args.out, args.setup, args.title)
    print(f"wrote {args.out}")
    return 0
