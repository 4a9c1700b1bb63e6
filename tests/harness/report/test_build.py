"""The decision report built from a fixture store: sections, figures, HTML; the command line."""
import re

from harness import report, results
from tests.harness.report.planted import planted_runs
from tests.harness.result_rows import fixture_store  # noqa: F401  (fixture)


def test_report_sections_and_self_contained_html(fixture_store, tmp_path, capsys):
    out = tmp_path / "rep"
    assert report.main(["--store", str(fixture_store), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Recommendation", "### Per task", "### Variants", "## Deployment", "## Perplexity (ppl_token",
                    "## Scores vs FP per suite", "### pass@1 (higher is better)", "## Quality vs cost",
                    "## Study: salience", "## Runs"):
        assert heading in md, heading
    assert "Per-layer evidence" not in md  # a store holds no layers.parquet
    for png in re.findall(r"\]\((plots/[^)]+\.png)\)", md):
        assert (out / png).stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png"))) >= 5
    assert not re.search(r'src="(?!data:)', html)  # nothing loaded from outside the file
    assert "<table" in html and "Overall:" in html
    assert html.count("<script>") == 1 and '<div class="row">' in html  # sortable tables; verdict row
    assert md.split("\n\n")[2].startswith("**Ship ")  # the verdict right under the model heading
    assert "Overall:" in capsys.readouterr().out


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert report.main(["--store", str(tmp_path / "nostore")]) == 2
    assert report.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error:") for e in err)
    assert "no such run directory" in err[0] and "results store not found" in err[1] and "--store" in err[2]


def test_memory_budget_flag_removes_the_larger_variant(tmp_path, capsys):
    runs = tmp_path / "runs"
    results.write(planted_runs(), runs)
    assert report.main([str(runs), "--max-weight-mb", "0.82"]) == 0
    md = capsys.readouterr().out
    assert "exceeds the 0.82 MB budget" in md and "**Ship rtn w4 g128**" in md
    assert f"{report.EXCLUDED_MARK} awq w4 g64" in md
    assert report.main([str(runs), "--max-weight-mb", "0"]) == 2
    assert "--max-weight-mb must be > 0" in capsys.readouterr().err
