"""Studies that run many variants on one loaded model (``+experiment=<study>``), next to the
single-config flow of harness.run. Each study module exposes ``run(cfg, out_dir) -> DataFrame``
(rows in the tidy schema, tagged with an ``experiment`` column) and ``render_sections(df)``.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import OmegaConf

from harness import results
from harness.errors import HarnessError

STUDIES = {
    "salience": "harness.experiments.salience",
    "calib_matrix": "harness.experiments.calib_matrix",
}


def get(name: str):
    if name not in STUDIES:
        raise HarnessError(f"unknown study experiment.name={name!r}; choose one of: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name])


def selected(cfg) -> bool:
    return cfg.get("experiment") is not None


def run(cfg, out_dir: Path):
    return get(cfg.experiment.name).run(cfg, Path(out_dir))


def section_blocks(df) -> list[tuple]:
    """The study sections for whatever study rows ``df`` holds (none for plain runs), as blocks:
    ``("h2" | "h3" | "p", text)`` or ``("table", DataFrame)``."""
    if "experiment" not in df.columns:
        return []
    blocks: list[tuple] = []
    for name in df["experiment"].dropna().drop_duplicates():
        if name in STUDIES:
            blocks += get(name).render_sections(df)
    return blocks


def report_blocks(rows) -> list:
    """The same sections as harness.report Blocks (for ``harness.report.register_section``)."""
    from harness.report import Block

    return [Block(kind, table=payload) if kind == "table" else Block(kind, payload) for kind, payload in section_blocks(rows)]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "table":
            out += [results.markdown_table(payload), ""]
        else:
            out += [("#" * int(kind[1]) + " " if kind[0] == "h" else "") + payload, ""]
    return "\n".join(out)


def render(df, title: str) -> str:
    models = ", ".join(sorted(df["model"].dropna().unique()))
    notes = [f"> Note: {n}." for n in sorted(df["model_note"].dropna().unique()) if n]
    return "\n".join([f"# {title}", "", f"Model: {models}", *notes, "", to_markdown(section_blocks(df))]).rstrip() + "\n"


def write_outputs(df, cfg, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    results.write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    results.write(df, out_dir)
    report = render(df, title=f"Study {cfg.experiment.name}: run {out_dir.name}")
    results.write_text(out_dir / "report.md", report)
    print("\n" + report)
    print(f"[harness] wrote {out_dir}/results.csv, results.parquet, report.md")
