"""Decision report: ``python -m harness.report [RUN_DIR ... | --store results/store [--model M]] --out DIR``.

Writes ``DIR/report.md`` (figures beside it in ``DIR/plots/``) and one self-contained
``DIR/report.html`` (figures embedded as base64 PNG). A report is a list of blocks (headings,
paragraphs, tables, figures) rendered twice; study helpers add their own sections with
``register_section(fn)``, where ``fn(rows) -> list[Block]`` returns [] when its rows are absent.
"""
from __future__ import annotations

import argparse
import base64
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import OmegaConf

from harness import decide, results, store
from harness.config import DecisionConfig
from harness.errors import HarnessError


@dataclass
class Block:
    kind: str  # "h2" | "h3" | "p" | "table" | "figure"
    text: str = ""  # heading/paragraph text (**bold** allowed), or a figure's caption
    table: pd.DataFrame | None = None
    png: bytes | None = None
    name: str = ""  # figure file stem


SECTIONS: list[Callable[[pd.DataFrame], list[Block]]] = []


def register_section(fn: Callable[[pd.DataFrame], list[Block]]) -> Callable:
    """Add a section (e.g. a study's table) after the built-in ones; ``fn`` gets the labelled rows."""
    SECTIONS.append(fn)
    return fn


def _study_sections(rows: pd.DataFrame) -> list[Block]:
    from harness.experiments import report_blocks  # salience / calib_matrix tables (harness/experiments)

    return report_blocks(rows)


register_section(_study_sections)


# ---------------------------------------------------------------- sections

def _header(d: pd.DataFrame, runs: int) -> list[Block]:
    shas = ", ".join(sorted(d["git_sha"].dropna().astype(str).unique())) if "git_sha" in d else "?"
    calibs = sorted(d.loc[d["method"] != "fp", "calib"].dropna().astype(str).unique())
    out = [Block("p", f"{runs} run(s); git {shas}; calibration: {', '.join(calibs) or '—'}.")]
    notes = sorted(n for n in d["model_note"].dropna().astype(str).unique() if n) if "model_note" in d else []
    out += [Block("p", f"Note: {n}.") for n in notes]
    return out


def _recommendation(d: pd.DataFrame, cfg: DecisionConfig) -> list[Block]:
    dec = decide.decide(d, cfg)
    out = [Block("h2", "Recommendation")]
    out.append(Block("p", f"**Overall: {dec.overall or 'none'}** — {dec.overall_why}."))
    out.append(Block("p", f"Tolerance vs FP: perplexity-like metrics +{cfg.ppl_rel_tol:.0%} relative, scores "
                          f"−{cfg.score_abs_tol:g} absolute (or not significantly different). Ties use "
                          f"{cfg.confidence:.0%} bootstrap intervals of the difference ({cfg.n_boot} resamples, "
                          f"seed {cfg.seed}); 'no significant difference' when the interval contains 0."))
    if dec.tasks:
        t = pd.DataFrame([{"suite": p.suite, "task": p.task, "metric": p.metric, "recommended": p.variant,
                           "why": p.why} for p in dec.tasks])
        out += [Block("h3", "Per task"), Block("table", table=t)]
    if not dec.table.empty:
        v = dec.table.sort_values("bytes")
        out += [Block("h3", "Variants"), Block("table", table=pd.DataFrame({
            "variant": v["variant"], "weights": v["bytes"].map(decide.mb),
            "quant s": v["seconds"].map(lambda s: f"{s:.1f}"),
            "within tolerance": [f"{int(w)}/{int(n)}" for w, n in zip(v["within"], v["tasks"])],
            "worst vs FP": v["worst"].fillna("—")}))]
    return out


def _perplexity(d: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    out = []
    for metric in sorted(m for m in d["metric"].unique() if results.is_perplexity(m)):
        table = results.comparison(d, metric)
        if table.empty:
            continue
        p = d[d["metric"] == metric]
        seqlens = ", ".join(map(str, sorted(p["seqlen"].dropna().astype(int).unique()))) if "seqlen" in p else "?"
        out += [Block("h2", f"Perplexity ({metric}, lower is better)"),
                Block("p", f"Token-level perplexity over non-overlapping windows of {seqlens} tokens; "
                           "± standard error over windows.")]
        if figures:
            png = plots.perplexity_grid(d, metric)
            if png:
                out.append(Block("figure", "Geometric mean over texts by method × bits × group size; "
                                           "dashed: FP.", png=png, name=f"perplexity_{metric}"))
        out.append(Block("table", table=table))
        if {"windows", "tokens"} <= set(p.columns):
            keys = (["suite"] if p["suite"].nunique() > 1 else []) + ["task"]
            detail = p.drop_duplicates(subset=keys)[keys + ["windows", "tokens"]].copy()
            detail[["windows", "tokens"]] = detail[["windows", "tokens"]].astype("Int64")
            out += [Block("p", "Windows and scored tokens per text:"), Block("table", table=detail)]
    return out


def _delta_cells(d: pd.DataFrame, cfg: DecisionConfig) -> pd.DataFrame:
    fp = {tuple(r[k] for k in decide.TASK_KEY): r for _, r in d[d["method"] == "fp"].iterrows()}
    keys = d[d["method"] != "fp"].groupby(decide.TASK_KEY).ngroups
    cells = []
    for _, r in d[d["method"] != "fp"].iterrows():
        f = fp.get(tuple(r[k] for k in decide.TASK_KEY))
        if f is None:
            continue
        low = results.lower_is_better(r["metric"])
        loss = decide.loss_vs_fp(r, f)
        column = f"{r['suite']}/{r['task']}" if keys <= 20 else f"{r['suite']}/{r['metric']}"
        if keys <= 20 and d.loc[d["suite"] == r["suite"], "metric"].nunique() > 1:
            column += f" {r['metric']}"
        cells.append({"variant": r["variant"], "column": column, "low": low,
                      "loss": loss / (cfg.ppl_rel_tol if low else cfg.score_abs_tol), "change": -loss})
    c = pd.DataFrame(cells)
    if c.empty:
        return c
    c = c.groupby(["variant", "column"], as_index=False).agg(loss=("loss", "mean"), change=("change", "mean"),
                                                            low=("low", "first"))
    c["text"] = [f"{-ch * 100:+.1f}%" if low else f"{ch:+.3f}" for ch, low in zip(c["change"], c["low"])]
    return c


def _deltas(d: pd.DataFrame, cfg: DecisionConfig, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    out = []
    scores = sorted(m for m in d["metric"].unique() if not results.is_perplexity(m))
    cells = _delta_cells(d, cfg)
    if not scores and (cells.empty or not figures):
        return out
    out.append(Block("h2", "Scores vs FP per suite"))
    if figures and not cells.empty:
        out.append(Block("figure", "Change vs FP: perplexity-like metrics in % (positive = worse), scores as "
                                   "absolute differences (negative = worse). Colour: loss in units of the "
                                   "tolerance, green better than FP.", png=plots.delta_heatmap(cells, results.variant_order(d)),
                         name="deltas_heatmap"))
    for metric in scores:
        table = results.comparison(d, metric)
        if not table.empty:
            direction = "lower" if results.lower_is_better(metric) else "higher"
            out += [Block("h3", f"{metric} ({direction} is better)"), Block("table", table=table)]
    return out


def _quality_points(d: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One point per variant: mean ppl change vs FP in % when perplexity rows exist, else the mean
    score change vs FP."""
    ppl = d[d["metric"].map(results.is_perplexity)]
    use, label = (ppl, "perplexity vs FP (%, mean over texts; lower is better)") if len(ppl) else (
        d, "score vs FP (mean absolute change; higher is better)")
    fp = use[use["method"] == "fp"].set_index(decide.TASK_KEY)["value"]
    pts = []
    for variant, g in use.groupby("variant"):
        g = g.set_index(decide.TASK_KEY)
        common = g.index.intersection(fp.index)
        if not len(common):
            continue
        change = (g.loc[common, "value"] / fp.loc[common] - 1) * 100 if len(ppl) else g.loc[common, "value"] - fp.loc[common]
        first = g.iloc[0]
        pts.append({"variant": variant, "method": first["method"], "quality": float(change.mean()),
                    "quant_seconds": decide._num(first.get("quant_seconds")), "weight_mb": first["weight_bytes"] / 1e6})
    return pd.DataFrame(pts), label


def _tradeoffs(d: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    pts, label = _quality_points(d)
    if pts.empty or not figures:
        return []
    out = [Block("h2", "Quality vs cost")]
    png = plots.quality_scatter(pts, "quant_seconds", "quantization time (s)", label)
    if png:
        out.append(Block("figure", "Quality vs quantization time (one point per variant).", png=png, name="quality_vs_time"))
    png = plots.quality_scatter(pts, "weight_mb", "weight size (MB: packed codes + group scales/zeros + fp16 rest)", label)
    if png:
        out.append(Block("figure", "Quality vs model size.", png=png, name="quality_vs_size"))
    return out


def _calibration_matrix(d: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    quant = d[d["method"] != "fp"]
    fp = d[d["method"] == "fp"].set_index(decide.TASK_KEY)["value"]
    out = []
    for (method, bits, group), g in quant.groupby(["method", "bits", "group_size"]):
        calib = g["calib"].astype(str) + g["calib_samples"].map(lambda n: f" n={decide._intish(n)}")
        if calib.nunique() < 2 or fp.empty:
            continue
        g = g.assign(row=calib, col=g["task"] + " " + g["metric"])
        ref = fp.reindex(pd.MultiIndex.from_frame(g[decide.TASK_KEY])).to_numpy()
        low = g["metric"].map(results.lower_is_better).to_numpy()
        g["change"] = [(v / f - 1) * 100 if lo else (v - f) * 100 for v, f, lo in zip(g["value"], ref, low)]
        table = g.pivot_table(index="row", columns="col", values="change", aggfunc="last")
        name = f"{method} w{int(bits)} g{int(group)}"
        if not out:
            out.append(Block("h2", "Calibration matrix"))
        out.append(Block("p", f"{name}: change vs FP per calibration set (rows) and task (columns); "
                              "% for perplexity-like metrics (positive = worse), points ×100 for scores."))
        if figures:
            out.append(Block("figure", f"{name}: calibration set × task.", png=plots.matrix(
                table, f"{name}: change vs FP"), name=f"calib_matrix_{method}_w{int(bits)}_g{int(group)}"))
        out.append(Block("table", table=table.map(lambda v: "—" if pd.isna(v) else f"{v:+.2f}").reset_index()
                         .rename(columns={"row": "calibration"})))
    return out


def _studies(d: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    s = d[decide.is_study(d)]
    out = []
    for suite, g in s.groupby("suite"):
        out.append(Block("h2", f"Study: {suite}"))
        if figures:
            out.append(Block("figure", f"{suite} rows by task and variant (± stderr).", png=plots.study_bars(g),
                             name=f"study_{suite}"))
        cols = [c for c in ("variant", "task", "metric", "value", "stderr", "n") if c in g]
        t = g[cols].copy()
        t["value"] = [results.fmt_value(v, None) for v in t["value"]]
        t["stderr"] = [results.fmt_value(v, None) for v in t["stderr"]]
        out.append(Block("table", table=t))
    return out


def _provenance(d: pd.DataFrame) -> list[Block]:
    cols = [c for c in ("run_id", "variant", "calib", "calib_samples", "config_hash", "git_sha", "started_at") if c in d]
    t = d.drop_duplicates(subset=["config_hash", "variant"])[cols]
    return [Block("h2", "Runs"), Block("table", table=t.sort_values(cols[:2]))]


def build(df: pd.DataFrame, title: str = "quant-harness decision report", figures: bool = True,
          cfg: DecisionConfig | None = None) -> list[Block]:
    cfg = cfg or DecisionConfig()
    blocks = [Block("h1", title)]
    for model, rows in df.groupby("model", sort=True):
        d = decide.label_variants(rows)
        d["weight_bytes"] = d.apply(results.weight_bytes, axis=1)
        blocks.append(Block("h2" if df["model"].nunique() == 1 else "h1", f"Model: {model}"))
        blocks += _header(d, rows["config_hash"].nunique())
        main = d[~decide.is_study(d)]
        if not main.empty:
            blocks += _recommendation(main, cfg)
            blocks += _perplexity(main, figures)
            blocks += _deltas(main, cfg, figures)
            blocks += _tradeoffs(main, figures)
            blocks += _calibration_matrix(main, figures)
        blocks += _studies(d, figures)
        for section in SECTIONS:
            blocks += section(d)
        blocks += _provenance(d)
    return blocks


# ---------------------------------------------------------------- rendering

def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def to_markdown(blocks: list[Block], plots_dir: str | None = "plots") -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            cells = b.table.map(lambda v: "—" if _missing(v) else str(v).replace("|", "\\|"))
            out += [results.markdown_table(cells), ""]
        elif b.kind == "figure" and b.png and plots_dir is not None:
            out += [f"![{b.text}]({plots_dir}/{b.name}.png)", "", f"*{b.text}*", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#1d232a;line-height:1.45}h1{border-bottom:2px solid #dde3ea;padding-bottom:6px}h2{margin-top:34px;
border-bottom:1px solid #e6ebf0;padding-bottom:4px}table{border-collapse:collapse;margin:10px 0 18px;font-size:13px;
display:block;overflow-x:auto}th,td{border:1px solid #dde3ea;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f6f9}tr:nth-child(even) td{background:#fafbfc}figure{margin:12px 0 22px}img{max-width:100%;
border:1px solid #eef1f4}figcaption{font-size:13px;color:#55606b}p strong{color:#0b5d1e}"""


def _inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            body.append(b.table.to_html(index=False, border=0, na_rep="—", escape=True))
        elif b.kind == "figure" and b.png:
            data = base64.b64encode(b.png).decode()
            body.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write(blocks: list[Block], out_dir: Path, title: str) -> None:
    out_dir = Path(out_dir)
    for b in blocks:
        if b.kind == "figure" and b.png:
            results.atomic_write(out_dir / "plots" / f"{b.name}.png", lambda tmp, png=b.png: Path(tmp).write_bytes(png))
    results.write_text(out_dir / "report.md", to_markdown(blocks))
    results.write_text(out_dir / "report.html", to_html(blocks, title))


def render(df: pd.DataFrame, title: str = "quant-harness report") -> str:
    """The Markdown report without figures (what each run directory gets)."""
    return to_markdown(build(df, title, figures=False), plots_dir=None)


def write_run_outputs(df, cfg, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    results.write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    results.write(df, out_dir)
    table = results.comparison(df)
    results.write_text(out_dir / "report.md", render(df, title=f"Run {out_dir.name}"))
    stored = store.append(df, cfg.store_dir, cfg.method.name)  # last: its presence marks the run complete
    print()
    print(results.markdown_table(table) if not table.empty else "(no perplexity rows)")
    print(f"\n[harness] wrote {out_dir}/results.csv, results.parquet, report.md; stored {stored}")


def load_rows(runs: list[str], store_dir: str | None, model: str | None, method: str | None) -> pd.DataFrame:
    frames = []
    if store_dir:
        frames.append(store.load(store_dir, model=model, method=method))
    if runs:
        missing = [r for r in runs if not Path(r).exists()]
        if missing:
            raise HarnessError(f"no such run directory or file: {missing[0]}")
        df = results.read_runs(runs)
        if df.empty:
            raise HarnessError(f"no results.csv or results.parquet under {', '.join(runs)}")
        if model:
            df = df[df["model"] == model]
        frames.append(df)
    if not frames:
        raise HarnessError("give run directories or --store DIR (e.g. python -m harness.report --store results/store)")
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise HarnessError(f"no rows for model {model!r}; models present: "
                           f"{', '.join(sorted(pd.concat(frames)['model'].astype(str).unique()))}")
    return df


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories, results.csv/.parquet files, or folders of runs")
    ap.add_argument("--store", help="read the results store (e.g. results/store): the newest run per config")
    ap.add_argument("--model", help="only this model")
    ap.add_argument("--method", help="only store runs of this method (plus their FP reference rows)")
    ap.add_argument("--out", help="write report.md, report.html and plots/ into this directory")
    ap.add_argument("--title", default="quant-harness decision report")
    args = ap.parse_args(argv)
    try:
        df = load_rows(args.runs, args.store, args.model, args.method)
        blocks = build(df, args.title, figures=bool(args.out))
        print(to_markdown(blocks, plots_dir=None))
        if args.out:
            write(blocks, Path(args.out), args.title)
            print(f"[harness.report] wrote {args.out}/report.md, report.html")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
