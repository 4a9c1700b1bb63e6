"""The report's figures (matplotlib, Agg): each function takes labelled rows and returns PNG bytes
or None when the rows hold nothing to draw."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import results  # noqa: E402
from methods.fp import FP  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _geomean(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(np.exp(np.log(v).mean()))


def perplexity_grid(d: pd.DataFrame, metric: str = "ppl_token") -> bytes | None:
    """Geometric-mean perplexity over tasks by bits, one panel per group size, one line per method."""
    p = d[d["metric"] == metric]
    quant = p[p["method"] != FP]
    if quant.empty:
        return None
    agg = quant.groupby(["method", "bits", "group_size"])["value"].apply(_geomean).reset_index()
    groups = sorted(agg["group_size"].unique(), key=lambda g: (g < 0, g))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), sharey=True, squeeze=False)
    fp = p[p["method"] == FP]
    colors = {m: f"C{i}" for i, m in enumerate(sorted(agg["method"].unique()))}
    for ax, g in zip(axes[0], groups):
        for method, m in agg[agg["group_size"] == g].groupby("method"):
            m = m.sort_values("bits")
            ax.plot(m["bits"], m["value"], marker="o", label=method, color=colors[method])
        if len(fp):
            ax.axhline(_geomean(fp["value"]), color="black", linestyle="--", linewidth=1, label=FP)
        ax.set_title("per-channel" if g < 0 else f"group size {int(g)}")
        ax.set_xlabel("bits")
        ax.set_xticks(sorted(agg["bits"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{metric} (geo. mean over {p['task'].nunique()} texts)")
    return _png(fig)


def delta_heatmap(cells: pd.DataFrame, order: list[str] | None = None) -> bytes | None:
    """``cells``: variant × column with ``loss`` (vs FP, in units of the tolerance) and ``text``;
    rows in ``order`` when given."""
    if cells.empty:
        return None
    loss = cells.pivot_table(index="variant", columns="column", values="loss", aggfunc="mean")
    text = cells.pivot_table(index="variant", columns="column", values="text", aggfunc="first")
    if order:
        rows = [v for v in order if v in loss.index] + [v for v in loss.index if v not in order]
        loss, text = loss.reindex(rows), text.reindex(rows)
    fig, ax = plt.subplots(figsize=(1.3 + 1.05 * loss.shape[1], 0.9 + 0.45 * loss.shape[0]))
    vals = np.clip(loss.to_numpy(dtype=float), -3, 3)
    im = ax.imshow(vals, cmap="RdYlGn_r", vmin=-3, vmax=3, aspect="auto")
    ax.set_xticks(range(loss.shape[1]), loss.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(loss.shape[0]), loss.index, fontsize=8)
    for i in range(loss.shape[0]):
        for j in range(loss.shape[1]):
            t = text.iloc[i, j] if j < text.shape[1] else None
            if isinstance(t, str):
                ax.text(j, i, t, ha="center", va="center", fontsize=7, color="white" if abs(vals[i, j]) > 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04).set_label("loss vs FP in tolerances\n(< 0 better, clipped at ±3)", fontsize=8)
    ax.set_title("change vs FP", fontsize=9)
    return _png(fig)


def quality_scatter(points: pd.DataFrame, x: str, xlabel: str, ylabel: str, logx: bool = False) -> bytes | None:
    """One point per variant: ``points`` has variant, method, ``x`` and ``quality``."""
    pts = points.dropna(subset=[x, "quality"])
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for method, m in pts.groupby("method"):
        ax.scatter(m[x], m["quality"], label=method, s=36)
        for _, r in m.iterrows():
            ax.annotate(r["variant"], (r[x], r["quality"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.margins(x=0.18, y=0.12)
    if logx:
        ax.set_xscale("log")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def matrix(table: pd.DataFrame, title: str, fmt: str = "{:+.1f}%", cmap: str = "RdYlGn_r") -> bytes | None:
    """A labelled heatmap of a numeric DataFrame (e.g. calibration set × task)."""
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.0 * table.shape[1], 1.0 + 0.5 * table.shape[0]))
    vals = table.to_numpy(dtype=float)
    lim = np.nanmax(np.abs(vals)) if np.isfinite(vals).any() else 1.0
    im = ax.imshow(vals, cmap=cmap, vmin=-lim if (vals < 0).any() else 0, vmax=lim or 1.0, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index], fontsize=8)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            if not math.isnan(vals[i, j]):
                ax.text(j, i, fmt.format(vals[i, j]), ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def study_bars(rows: pd.DataFrame) -> bytes | None:
    """A study's rows (e.g. salience): one panel per metric, bars per task, one colour per variant."""
    if rows.empty:
        return None
    metrics = sorted(rows["metric"].unique())
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 2.8 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        m = rows[rows["metric"] == metric]
        table = m.pivot_table(index="task", columns="variant", values="value", aggfunc="last")
        err = m.pivot_table(index="task", columns="variant", values="stderr", aggfunc="last")
        err = err.reindex_like(table).astype(float)
        table.plot.bar(ax=ax, yerr=err.fillna(0).to_numpy().T if err.notna().any().any() else None, rot=20, width=0.8)
        ax.set_ylabel(f"{metric} ({'lower' if results.lower_is_better(metric) else 'higher'} is better)", fontsize=8)
        ax.set_xlabel("")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def layer_stats(per_layer: pd.DataFrame, families: list[str]) -> bytes | None:
    """Per-layer evidence: one panel per stat family (AWQ's α, loss vs RTN, GPTQ's loss, weight MSE),
    x = layer index, one line per variant. ``per_layer``: variant, layer_index and one column per family."""
    d = per_layer.dropna(subset=["layer_index"])
    families = [f for f in families if d[f].notna().any()]
    if d.empty or not families:
        return None
    fig, axes = plt.subplots(len(families), 1, figsize=(7.5, 2.4 * len(families)), sharex=True, squeeze=False)
    for ax, fam in zip(axes[:, 0], families):
        for variant, g in d.dropna(subset=[fam]).groupby("variant", sort=False):
            g = g.sort_values("layer_index")
            ax.plot(g["layer_index"], g[fam], marker=".", label=variant)
        ax.set_ylabel(fam, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1][0].set_xlabel("layer")
    return _png(fig)
