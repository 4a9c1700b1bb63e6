"""harness.blocks: the block type, its Markdown and HTML renderers and the writers."""
import pandas as pd
import pytest

from harness import blocks
from harness.blocks import Block

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 2000


def sample():
    return [blocks.h1("Title"), blocks.p("A **bold** claim."),
            blocks.table(pd.DataFrame({"variant": ["awq|w4", None], "value": [1.5, float("nan")]})),
            blocks.figure("A caption", PNG, "fig_one"), blocks.figure("No picture", None, "missing"),
            blocks.h3("Sub")]


def test_markdown_headings_tables_and_figure_links():
    md = blocks.to_markdown(sample())
    assert md.startswith("# Title\n\nA **bold** claim.\n\n| variant | value |")
    assert "| awq\\|w4 | 1.5 |" in md and "| — | — |" in md  # pipes escaped, missing cells as —
    assert "![A caption](plots/fig_one.png)" in md and "*A caption*" in md
    assert "missing" not in md  # a figure without a picture is left out
    assert md.endswith("### Sub\n")
    assert "plots/" not in blocks.to_markdown(sample(), plots_dir=None)


def test_html_is_self_contained_and_escaped():
    page = blocks.to_html(sample() + [blocks.p("<script>x</script>")], "T & co")
    assert "<title>T &amp; co</title>" in page and "<strong>bold</strong>" in page
    assert page.count("data:image/png;base64,") == 1 and "&lt;script&gt;x" in page
    assert page.count("<script>") == 1 and "src=" not in page.replace('src="data:', "")  # our inline sorter only
    assert "<table" in page and "—" in page and "sortable" in page


def test_a_row_sets_blocks_side_by_side_in_html_and_in_order_in_markdown(tmp_path):
    side = [blocks.p("Verdict."), blocks.row(blocks.table(pd.DataFrame({"a": [1]})), blocks.figure("Fig", PNG, "side"))]
    md = blocks.to_markdown(side)
    assert md.index("| a |") < md.index("![Fig](plots/side.png)")
    page = blocks.to_html(side, "T")
    assert '<div class="row"><div><table' in page and "</figure></div></div>" in page
    assert [b.kind for b in blocks.flat(side)] == ["p", "table", "figure"]
    written = blocks.write(side, tmp_path, "T")
    assert (tmp_path / "plots" / "side.png").read_bytes() == PNG and len(written) == 3


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown block kind 'h4'; choose one of: h1, h2, h3, p, table, figure, row"):
        Block("h4", "x")


def test_write_puts_figures_beside_the_report(tmp_path):
    written = blocks.write(sample(), tmp_path / "out", "T")
    assert sorted(p.name for p in written) == ["fig_one.png", "report.html", "report.md"]
    assert (tmp_path / "out" / "plots" / "fig_one.png").read_bytes() == PNG
    assert "![A caption](plots/fig_one.png)" in (tmp_path / "out" / "report.md").read_text()
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temp files


def test_write_run_is_what_every_run_directory_gets(tmp_path):
    df = pd.DataFrame([{"model": "m", "method": "rtn", "suite": "s", "task": "t", "metric": "pass@1", "value": 0.5}])
    written = blocks.write_run(df, "seed: 0\n", tmp_path / "run", sample(), "T")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"config.yaml", "results.csv", "results.parquet", "report.md"}  # no html, no plots
    assert {p.name for p in written} == {"config.yaml", "report.md"}
    assert (tmp_path / "run" / "config.yaml").read_text() == "seed: 0\n"
    assert "plots/" not in (tmp_path / "run" / "report.md").read_text()
