"""Report blocks and their two renderers (Markdown, self-contained HTML) plus the one output writer.

A report is a list of :class:`Block` (headings, paragraphs, tables, figures, and rows that set
blocks side by side in the HTML, one after another in Markdown). The decision report
(harness.report) and every study (harness.experiments.*.render_sections) build blocks; this module
turns them into ``report.md`` (figures beside it in ``plots/``) and ``report.html`` (figures
embedded as base64 PNG; tables sort on a click on their header, by an inline script). A leaf: it
imports nothing from harness but the result-file helpers.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import results

HEADINGS = ("h1", "h2", "h3")
KINDS = HEADINGS + ("p", "table", "figure", "row")


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure" | "row"
    text: str = ""  # heading/paragraph text (**bold** allowed), or a figure's caption
    table: pd.DataFrame | None = None
    png: bytes | None = None
    name: str = ""  # figure file stem
    children: list["Block"] = field(default_factory=list)  # a row's blocks, side by side

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; choose one of: {', '.join(KINDS)}")


def h1(text: str) -> Block:
    return Block("h1", text)


def h2(text: str) -> Block:
    return Block("h2", text)


def h3(text: str) -> Block:
    return Block("h3", text)


def p(text: str) -> Block:
    return Block("p", text)


def table(df: pd.DataFrame) -> Block:
    return Block("table", table=df)


def figure(caption: str, png: bytes | None, name: str) -> Block:
    return Block("figure", caption, png=png, name=name)


def row(*children: Block) -> Block:
    return Block("row", children=list(children))


def flat(blocks: list[Block]) -> list[Block]:
    """The blocks with every row replaced by its children, in order."""
    return [c for b in blocks for c in (flat(b.children) if b.kind == "row" else [b])]


# ---------------------------------------------------------------- Markdown

def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _markdown_cells(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(lambda v: "—" if _missing(v) else str(v).replace("|", "\\|"))


def to_markdown(blocks: list[Block], plots_dir: str | None = "plots") -> str:
    """Markdown; figures link to ``plots_dir/<name>.png`` (left out when ``plots_dir`` is None)."""
    out = []
    for b in flat(blocks):
        if b.kind in HEADINGS:
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            out += [results.markdown_table(_markdown_cells(b.table)), ""]
        elif b.kind == "figure" and b.png and plots_dir is not None:
            out += [f"![{b.text}]({plots_dir}/{b.name}.png)", "", f"*{b.text}*", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#1d232a;line-height:1.45}h1{border-bottom:2px solid #dde3ea;padding-bottom:6px}h2{margin-top:34px;
border-bottom:1px solid #e6ebf0;padding-bottom:4px}table{border-collapse:collapse;margin:10px 0 18px;font-size:13px;
display:block;overflow-x:auto}th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9}tr:nth-child(even) td{background:#fafbfc}figure{margin:12px 0 22px}img{max-width:100%;
border:1px solid #eef1f4}figcaption{font-size:13px;color:#55606b}p strong{color:#0b5d1e}
.row{display:flex;gap:18px;align-items:flex-start;flex-wrap:wrap}.row>*{flex:2 1 360px;min-width:0}
.row>*:first-child{flex:3 1 600px}.row figure{margin:10px 0}.row table{font-size:12px}.row th,.row td{padding:3px 6px}
.row td:first-child{white-space:nowrap}th.sortable{cursor:pointer}"""

# sort a table on a click on its header: numbers (leading number of a cell) numerically, else as text
_SCRIPT = r"""document.querySelectorAll("table").forEach(function(t){var h=t.tHead;if(!h)return;
Array.prototype.forEach.call(h.rows[0].cells,function(th,i){th.classList.add("sortable");th.title="click to sort";
th.onclick=function(){
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),up=th.dataset.dir!=="up";th.dataset.dir=up?"up":"down";
var key=function(r){var s=r.cells[i]?r.cells[i].textContent.trim().replace(/^−/,"-"):"";
var m=s.match(/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?/i);return m?parseFloat(m[0]):s};
rows.sort(function(a,c){var x=key(a),y=key(c);var d=(typeof x==="number"&&typeof y==="number")?x-y:
String(x).localeCompare(String(y));return up?d:-d});rows.forEach(function(r){b.appendChild(r)})}})});"""


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _html_block(b: Block) -> str | None:
    if b.kind == "row":
        return '<div class="row">' + "".join(f"<div>{h}</div>" for h in map(_html_block, b.children) if h) + "</div>"
    if b.kind in HEADINGS:
        return f"<{b.kind}>{html.escape(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline(b.text)}</p>"
    if b.kind == "table":
        return b.table.to_html(index=False, border=0, na_rep="—", escape=True)
    if b.kind == "figure" and b.png:
        data = base64.b64encode(b.png).decode()
        return (f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return None


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: figures embedded, nothing loaded from outside the file."""
    body = [h for h in map(_html_block, blocks) if h is not None]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")


# ---------------------------------------------------------------- the writer

def write(blocks: list[Block], out_dir: Path, title: str, html_page: bool = True) -> list[Path]:
    """Write ``report.md`` (and, with ``html_page``, ``plots/*.png`` and ``report.html``) into
    ``out_dir``, each file atomically. Without ``html_page`` figures are left out of the Markdown
    (a run directory's report). Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    if html_page:
        for b in flat(blocks):
            if b.kind == "figure" and b.png:
                path = out_dir / "plots" / f"{b.name}.png"
                results.atomic_write(path, lambda tmp, png=b.png: Path(tmp).write_bytes(png))
                written.append(path)
    results.write_text(out_dir / "report.md", to_markdown(blocks, plots_dir="plots" if html_page else None))
    written.append(out_dir / "report.md")
    if html_page:
        results.write_text(out_dir / "report.html", to_html(blocks, title))
        written.append(out_dir / "report.html")
    return written


def write_run(df: pd.DataFrame, config_yaml: str, out_dir: Path, blocks: list[Block], title: str) -> list[Path]:
    """What every run directory gets, a plain run's or a study's: ``config.yaml``, the result
    files (harness.results.write) and ``report.md`` rendered from ``blocks``."""
    out_dir = Path(out_dir)
    results.write_text(out_dir / "config.yaml", config_yaml)
    results.write(df, out_dir)
    return [out_dir / "config.yaml"] + write(blocks, out_dir, title, html_page=False)
