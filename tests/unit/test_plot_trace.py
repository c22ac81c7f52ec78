"""`foley-dist plot-trace` renders a run's Chrome trace as a Gantt PNG."""

import json

from foley_dist.cli import main
from foley_dist.engine.metrics import RankStats, Span, chrome_trace
from foley_dist.tools import plot_trace as mod


def _trace() -> dict:
    """Two ranks, [vision+fusion, diffusion], three segments, with waits and a setup span."""
    first = RankStats(0, ["vision", "fusion"], "cpu", origin_unix=100.0, spans=[Span("build", "setup", -1, 0.0, 2.0)])
    last = RankStats(1, ["diffusion"], "cpu", origin_unix=100.1, spans=[Span("build", "setup", -1, 0.0, 2.5)])
    for n in range(3):
        t = 2.0 + 0.2 * n
        first.spans += [Span("vision", "compute", n, t, 0.15), Span("fusion", "compute", n, t + 0.15, 0.03),
                        Span("send", "comm", n, t + 0.18, 0.02)]
        wait = 0.09 if n else 0.3
        last.spans += [Span("recv", "comm", n, 2.7 + 0.6 * n - wait, wait),
                       Span("diffusion", "compute", n, 2.7 + 0.6 * n, 0.5), Span("sink", "io", n, 3.2 + 0.6 * n, 0.01)]
    return chrome_trace([first, last])


def test_renders_a_gantt_png(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(_trace()))
    out = tmp_path / "trace.png"
    assert main(["plot-trace", str(trace), str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_time_starts_at_the_first_pipeline_event_unless_setup_is_asked_for():
    names, spans = mod.load_spans(_trace(), setup=False)
    assert names == {0: "rank 0 (vision+fusion)", 1: "rank 1 (diffusion)"}
    assert min(s["start"] for s in spans) == 0.0 and {s["cat"] for s in spans} == {"compute", "comm", "io"}
    first_vision = next(s for s in spans if s["stage"] == "vision" and s["item"] == 0)
    assert first_vision["start"] == 0.0
    _, with_setup = mod.load_spans(_trace(), setup=True)
    assert next(s for s in with_setup if s["stage"] == "vision" and s["item"] == 0)["start"] == 2.0


def test_missing_trace_is_a_one_line_error(tmp_path, capsys):
    assert main(["plot-trace", str(tmp_path / "nope.json"), str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err
