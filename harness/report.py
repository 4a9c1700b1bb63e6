"""Decision report: ``python -m harness.report [RUN_DIR ... | --store results/store [--model M]] --out DIR``.

Writes ``DIR/report.md`` (figures beside it in ``DIR/plots/``) and one self-contained
``DIR/report.html`` (figures embedded as base64 PNG). A report is a list of blocks
(harness.blocks: headings, paragraphs, tables, figures) rendered twice. Every section reads the
one comparison frame (harness.decide.frame); studies add their own sections
(harness.experiments.section_blocks), and further sections can be added with
``register_section(fn)``, where ``fn(frame) -> list[Block]`` returns [] when its rows are absent.
Run directories that hold ``layers.parquet`` add a per-layer evidence section.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from harness import blocks, decide, experiments, results, store
from harness.blocks import Block
from harness.config import DecisionConfig
from harness.errors import HarnessError
from methods.fp import FP

SECTIONS: list[Callable[[pd.DataFrame], list[Block]]] = [experiments.section_blocks]


def register_section(fn: Callable[[pd.DataFrame], list[Block]]) -> Callable:
    """Add a section after the built-in ones; ``fn`` gets one model's comparison frame."""
    SECTIONS.append(fn)
    return fn


# ---------------------------------------------------------------- sections

def _header(f: pd.DataFrame, runs: int) -> list[Block]:
    shas = ", ".join(sorted(f["git_sha"].dropna().astype(str).unique())) if "git_sha" in f else "?"
    calibs = sorted(f.loc[f["method"] != FP, "calib"].dropna().astype(str).unique())
    out = [Block("p", f"{runs} run(s); git {shas}; calibration: {', '.join(calibs) or '—'}.")]
    notes = sorted(n for n in f["model_note"].dropna().astype(str).unique() if n) if "model_note" in f else []
    out += [Block("p", f"Note: {n}.") for n in notes]
    return out


def _tolerance_note(cfg: DecisionConfig) -> Block:
    return Block("p", f"Tolerance vs FP: perplexity-like metrics +{cfg.ppl_rel_tol:.0%} relative, scores "
                      f"−{cfg.score_abs_tol:g} absolute (or not significantly different). Ties use "
                      f"{cfg.confidence:.0%} bootstrap intervals of the difference ({cfg.n_boot} resamples, "
                      f"seed {cfg.seed}); 'no significant difference' when the interval contains 0.")


def _variants_table(table: pd.DataFrame) -> pd.DataFrame:
    v = table.sort_values("bytes")
    return pd.DataFrame({
        "variant": v["variant"], "weights": v["bytes"].map(decide.mb),
        "quant s": v["seconds"].map(lambda s: f"{s:.1f}"),
        "within tolerance": [f"{int(w)}/{int(n)}" for w, n in zip(v["within"], v["tasks"])],
        "worst vs FP": v["worst"].fillna("—")})


def _recommendation(main: pd.DataFrame, cfg: DecisionConfig) -> list[Block]:
    dec = decide.recommend(main, cfg)
    out = [Block("h2", "Recommendation"), Block("p", f"**Overall: {dec.overall or 'none'}** — {dec.overall_why}."),
           _tolerance_note(cfg)]
    if dec.tasks:
        t = pd.DataFrame([{"suite": p.suite, "task": p.task, "metric": p.metric, "recommended": p.variant,
                           "why": p.why} for p in dec.tasks])
        out += [Block("h3", "Per task"), Block("table", table=t)]
    if not dec.table.empty:
        out += [Block("h3", "Variants"), Block("table", table=_variants_table(dec.table))]
    return out


def _perplexity(main: pd.DataFrame, figures: bool) -> list[Block]:
    out = []
    for metric in sorted(m for m in main["metric"].unique() if results.is_perplexity(m)):
        table = results.comparison(main, metric)
        if not table.empty:
            out += _perplexity_metric(main[main["metric"] == metric], metric, table, figures)
    return out


def _perplexity_metric(p: pd.DataFrame, metric: str, table: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    seqlens = ", ".join(map(str, sorted(p["seqlen"].dropna().astype(int).unique()))) if "seqlen" in p else "?"
    out = [Block("h2", f"Perplexity ({metric}, lower is better)"),
           Block("p", f"Token-level perplexity over non-overlapping windows of {seqlens} tokens; "
                      "± standard error over windows.")]
    if figures:
        png = plots.perplexity_grid(p, metric)
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


def _delta_cells(main: pd.DataFrame) -> pd.DataFrame:
    """variant × column (suite/task or suite/metric) with ``loss`` in tolerances and ``text``."""
    quant = main[main["method"] != FP]
    keys = quant.groupby(decide.TASK_KEY).ngroups
    c = quant[quant["fp_value"].notna()].copy()
    if c.empty:
        return pd.DataFrame()
    several = main.groupby("suite")["metric"].nunique()
    if keys <= 20:
        c["column"] = c["suite"] + "/" + c["task"] + [f" {m}" if several[s] > 1 else "" for s, m in
                                                      zip(c["suite"], c["metric"])]
    else:
        c["column"] = c["suite"] + "/" + c["metric"]
    c = c.assign(low=c["metric"].map(results.lower_is_better), change=-c["loss"])
    c = c.groupby(["variant", "column"], as_index=False).agg(loss=("loss_tol", "mean"), change=("change", "mean"),
                                                            low=("low", "first"))
    c["text"] = [f"{-ch * 100:+.1f}%" if low else f"{ch:+.3f}" for ch, low in zip(c["change"], c["low"])]
    return c


def _deltas(main: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    scores = sorted(m for m in main["metric"].unique() if not results.is_perplexity(m))
    cells = _delta_cells(main)
    if not scores and (cells.empty or not figures):
        return []
    out = [Block("h2", "Scores vs FP per suite")]
    if figures and not cells.empty:
        out.append(Block("figure", "Change vs FP: perplexity-like metrics in % (positive = worse), scores as "
                                   "absolute differences (negative = worse). Colour: loss in units of the "
                                   "tolerance, green better than FP.",
                         png=plots.delta_heatmap(cells, results.variant_order(main)), name="deltas_heatmap"))
    for metric in scores:
        table = results.comparison(main, metric)
        if not table.empty:
            direction = "lower" if results.lower_is_better(metric) else "higher"
            out += [Block("h3", f"{metric} ({direction} is better)"), Block("table", table=table)]
    return out


def _quality_points(main: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One point per variant: mean ppl change vs FP in % when perplexity rows exist, else the mean
    score change vs FP."""
    ppl = main[main["metric"].map(results.is_perplexity)]
    use, label = (ppl, "perplexity vs FP (%, mean over texts; lower is better)") if len(ppl) else (
        main, "score vs FP (mean absolute change; higher is better)")
    pts = []
    for variant, g in use.groupby("variant"):
        common = g[g["fp_value"].notna()]
        if common.empty:
            continue
        change = (common["value"] / common["fp_value"] - 1) * 100 if len(ppl) else common["value"] - common["fp_value"]
        first = g.iloc[0]
        pts.append({"variant": variant, "method": first["method"], "quality": float(change.mean()),
                    "quant_seconds": first["quant_seconds"], "weight_mb": first["weight_bytes"] / 1e6})
    return pd.DataFrame(pts), label


def _tradeoffs(main: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    pts, label = _quality_points(main)
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


def _calibration_table(g: pd.DataFrame) -> pd.DataFrame:
    """Calibration set (rows) × task metric (columns): change vs FP, % or points ×100."""
    low = g["metric"].map(results.lower_is_better)
    change = ((g["value"] / g["fp_value"] - 1) * 100).where(low, (g["value"] - g["fp_value"]) * 100)
    g = g.assign(col=g["task"] + " " + g["metric"], change=change)
    return g.pivot_table(index="row", columns="col", values="change", aggfunc="last")


def _calibration_matrix(main: pd.DataFrame, figures: bool) -> list[Block]:
    """Per method and format run on several calibration sets or sizes: the change vs FP per
    calibration (rows) and task (columns)."""
    from harness import plots  # matplotlib only when a report is built

    if not (main["method"] == FP).any():
        return []
    out = []
    for (method, bits, group), g in main[main["method"] != FP].groupby(["method", "bits", "group_size"]):
        g = g.assign(row=g["calib"].astype(str) + g["calib_samples"].map(lambda n: f" n={results.intish(n)}"))
        if g["row"].nunique() < 2:
            continue
        table = _calibration_table(g)
        name = f"{method} w{int(bits)} g{int(group)}"
        out += [Block("h2", "Calibration matrix")] if not out else []
        out.append(Block("p", f"{name}: change vs FP per calibration set (rows) and task (columns); "
                              "% for perplexity-like metrics (positive = worse), points ×100 for scores."))
        if figures:
            out.append(Block("figure", f"{name}: calibration set × task.", png=plots.matrix(
                table, f"{name}: change vs FP"), name=f"calib_matrix_{method}_w{int(bits)}_g{int(group)}"))
        out.append(Block("table", table=table.map(lambda v: "—" if pd.isna(v) else f"{v:+.2f}").reset_index()
                         .rename(columns={"row": "calibration"})))
    return out


def _studies(f: pd.DataFrame, figures: bool) -> list[Block]:
    from harness import plots  # matplotlib only when a report is built

    out = []
    for suite, g in f[f["study"]].groupby("suite"):
        out.append(Block("h2", f"Study: {suite}"))
        if figures:
            out.append(Block("figure", f"{suite} rows by task and variant (± stderr).", png=plots.study_bars(g),
                             name=f"study_{suite}"))
        t = g[[c for c in ("variant", "task", "metric", "value", "stderr", "n") if c in g]].copy()
        t["value"] = [results.fmt_value(v, None) for v in t["value"]]
        t["stderr"] = [results.fmt_value(v, None) for v in t["stderr"]]
        out.append(Block("table", table=t))
    return out


def _provenance(f: pd.DataFrame) -> list[Block]:
    cols = [c for c in ("run_id", "variant", "calib", "calib_samples", "config_hash", "git_sha", "started_at") if c in f]
    t = f.drop_duplicates(subset=["config_hash", "variant"])[cols]
    return [Block("h2", "Runs"), Block("table", table=t.sort_values(cols[:2]))]


# ---------------------------------------------------------------- per-layer evidence (layers.parquet)

def _stat_families(layers: pd.DataFrame) -> dict[str, list[str]]:
    """The method's numeric stat columns grouped by name before ``[``: ``alpha[input_layernorm]``
    and ``alpha[v_proj]`` are one family ``alpha``."""
    families: dict[str, list[str]] = {}
    for c in layers.columns:
        if c in results.LAYER_KEY or layers[c].dtype == bool or not pd.api.types.is_numeric_dtype(layers[c]):
            continue
        families.setdefault(str(c).split("[", 1)[0], []).append(c)
    return families


def _layer_variants(layers: pd.DataFrame, f: pd.DataFrame | None) -> pd.Series:
    """The report's variant name of every layer row (by config hash and method), else its own label."""
    names = {}
    if f is not None and not f.empty:
        names = {(h, m): v for h, m, v in zip(f["config_hash"], f["method"], f["variant"])}
    own = layers.apply(results.variant_label, axis=1)
    if layers["calib"].nunique() > 1:
        own += " " + layers["calib"].astype(str)
    return pd.Series([names.get((h, m), o) for h, m, o in zip(layers["config_hash"], layers["method"], own)],
                     index=layers.index)


def _layer_index(layer: pd.Series) -> pd.Series:
    """A number per layer for sorting and plotting: the value itself, or the last integer in a name."""
    num = pd.to_numeric(layer, errors="coerce")
    digits = layer.astype(str).map(lambda s: (re.findall(r"\d+", s) or [None])[-1])
    return num.fillna(pd.to_numeric(digits, errors="coerce"))


def per_layer(layers: pd.DataFrame, f: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(one row per variant × layer with ``layer_index`` and the mean of each stat family, the
    families). Rows of one layer (e.g. RTN's per-Linear rows) and the columns of one family (AWQ's
    per-scale-group α) are averaged."""
    families = _stat_families(layers)
    d = layers.assign(variant=_layer_variants(layers, f), layer_index=_layer_index(layers["layer"]))
    for fam, cols in families.items():
        d[f"_{fam}"] = d[cols].astype(float).mean(axis=1)
    out = d.groupby(["variant", "layer", "layer_index"], dropna=False, sort=False)[[f"_{x}" for x in families]].mean()
    out = out.rename(columns=lambda c: c[1:]).reset_index()
    return out.sort_values(["variant", "layer_index"], kind="stable").reset_index(drop=True), list(families)


def _summary_cell(g: pd.DataFrame, fam: str) -> str:
    v = g[fam].dropna()
    if v.empty:
        return "—"
    top = g.loc[v.idxmax(), "layer"]
    return f"{v.mean():.3g} ({v.min():.3g} … {v.max():.3g}, max at layer {top})"


def layer_summary(pl: pd.DataFrame, families: list[str]) -> pd.DataFrame:
    """One row per variant: layers, then per stat family the mean over layers (min … max)."""
    rows = [{"variant": v, "layers": len(g), **{fam: _summary_cell(g, fam) for fam in families}}
            for v, g in pl.groupby("variant", sort=False)]
    return pd.DataFrame(rows, columns=["variant", "layers", *families])


def layer_blocks(layers: pd.DataFrame, f: pd.DataFrame | None = None, figures: bool = False) -> list[Block]:
    """"Per-layer evidence" from ``layers.parquet`` rows (results.LAYER_KEY + the method's stat
    columns): a summary per variant and, with ``figures``, each stat per layer index. ``f``
    (the comparison frame) names the variants as the rest of the report does. [] without rows."""
    if layers is None or layers.empty:
        return []
    pl, families = per_layer(layers, f)
    if not families:
        return []
    out = [Block("h2", "Per-layer evidence"),
           Block("p", "From layers.parquet in the run directories: the statistics each method reports per "
                      "quantized layer (AWQ: α and loss vs RTN per scale group, averaged per layer; GPTQ: "
                      "gptq_loss; RTN: weight_mse per Linear, averaged per layer). Each cell: mean over "
                      "layers (lowest … highest)."),
           Block("table", table=layer_summary(pl, families))]
    if figures:
        from harness import plots  # matplotlib only when a report is built

        png = plots.layer_stats(pl, families)
        if png:
            out.append(Block("figure", "Per-layer statistics by layer index, one line per variant.", png=png,
                             name="layer_stats"))
    return out


# ---------------------------------------------------------------- the report

def _model_blocks(f: pd.DataFrame, runs: int, cfg: DecisionConfig, figures: bool, layers: pd.DataFrame | None) -> list[Block]:
    out = _header(f, runs)
    main = f[~f["study"]]
    if not main.empty:
        out += _recommendation(main, cfg)
        out += _perplexity(main, figures)
        out += _deltas(main, figures)
        out += _tradeoffs(main, figures)
        out += _calibration_matrix(main, figures)
    if layers is not None and not layers.empty:
        out += layer_blocks(layers[layers["config_hash"].isin(f["config_hash"])], f, figures)
    out += _studies(f, figures)
    for section in SECTIONS:
        out += section(f)
    return out + _provenance(f)


def build(df: pd.DataFrame, title: str = "quant-harness decision report", figures: bool = True,
          cfg: DecisionConfig | None = None, layers: pd.DataFrame | None = None) -> list[Block]:
    """The report's blocks: per model, the sections above, all read from one comparison frame.
    ``layers``: per-layer rows (results.read_layers) for the per-layer evidence section."""
    cfg = cfg or DecisionConfig()
    out = [Block("h1", title)]
    for model, rows in df.groupby("model", sort=True):
        out.append(Block("h2" if df["model"].nunique() == 1 else "h1", f"Model: {model}"))
        out += _model_blocks(decide.frame(rows, cfg), rows["config_hash"].nunique(), cfg, figures, layers)
    return out


def render(df: pd.DataFrame, title: str = "quant-harness report", layers: pd.DataFrame | None = None) -> str:
    """The Markdown report without figures (what each run directory gets)."""
    return blocks.to_markdown(build(df, title, figures=False, layers=layers), plots_dir=None)


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
        layers = results.read_layers(args.runs) if args.runs else None
        report = build(df, args.title, figures=bool(args.out), layers=layers)
        print(blocks.to_markdown(report, plots_dir=None))
        if args.out:
            blocks.write(report, Path(args.out), args.title)
            print(f"[harness.report] wrote {args.out}/report.md, report.html")
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
