"""Report blocks and their two renderers (Markdown, self-contained HTML) plus the one output writer.

A report is a list of :class:`Block` (headings, paragraphs, tables, figures). The decision report
(harness.report) and every study (harness.experiments.*.render_sections) build blocks; this module
turns them into ``report.md`` (figures beside it in ``plots/``) and ``report.html`` (figures
embedded as base64 PNG). A leaf: it imports nothing from harness but the result-file helpers.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import results

HEADINGS = ("h1", "h2", "h3")
KINDS = HEADINGS + ("p", "table", "figure")


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "figure"
    text: str = ""  # heading/paragraph text (**bold** allowed), or a figure's caption
    table: pd.DataFrame | None = None
    png: bytes | None = None
    name: str = ""  # figure file stem

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


# ---------------------------------------------------------------- Markdown

def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _markdown_cells(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(lambda v: "—" if _missing(v) else str(v).replace("|", "\\|"))


def to_markdown(blocks: list[Block], plots_dir: str | None = "plots") -> str:
    """Markdown; figures link to ``plots_dir/<name>.png`` (left out when ``plots_dir`` is None)."""
    out = []
    for b in blocks:
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
border:1px solid #eef1f4}figcaption{font-size:13px;color:#55606b}p strong{color:#0b5d1e}"""


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _html_block(b: Block) -> str | None:
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
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------- the writer

def write(blocks: list[Block], out_dir: Path, title: str, html_page: bool = True) -> list[Path]:
    """Write ``report.md`` (and, with ``html_page``, ``plots/*.png`` and ``report.html``) into
    ``out_dir``, each file atomically. Without ``html_page`` figures are left out of the Markdown
    (a run directory's report). Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    if html_page:
        for b in blocks:
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
