"""The recommendation: task metrics without signal listed once and never recommended."""
from harness import blocks, report
from tests.harness.report.planted import planted_runs


def test_no_signal_metric_is_listed_once_and_never_recommended():
    md = blocks.to_markdown(report.build(planted_runs(), figures=False))
    per_task = md.split("### Per task")[1].split("###")[0]
    assert "schema_valid" not in per_task
    assert md.count("no signal at this size (n=16): all at 0 (the floor)") == 1
    assert "1 of" in md and "task metrics have no signal at this size" in md
