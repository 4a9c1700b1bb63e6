"""The report's figures (matplotlib, Agg): each function takes labelled rows and returns PNG bytes
or None when the rows hold nothing to draw."""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
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


def _symlog_norm(worse: np.ndarray, linear_within: float):
    """A colour scale symmetric about 0, linear within ±``linear_within`` % and logarithmic beyond,
    so that +10% and +300% get different colours."""
    from matplotlib.colors import SymLogNorm

    finite = np.abs(worse[np.isfinite(worse)])
    lim = max(float(finite.max()) if finite.size else 1.0, 2 * linear_within)
    return SymLogNorm(linthresh=linear_within, linscale=0.6, vmin=-lim, vmax=lim, base=10)


def delta_heatmap(cells: pd.DataFrame, order: list[str] | None = None, linear_within: float = 2.0) -> bytes | None:
    """``cells``: variant × column with ``worse`` (% worse than FP, < 0 better), ``text``,
    ``significant`` (framed, text starred by the caller) and ``signal`` (False: the column is grey)."""
    if cells.empty:
        return None
    worse = cells.pivot_table(index="variant", columns="column", values="worse", aggfunc="mean", dropna=False)
    cols = list(worse.columns)
    text = cells.pivot_table(index="variant", columns="column", values="text", aggfunc="first").reindex(columns=cols)
    sig = cells.assign(significant=cells["significant"].astype(float)).pivot_table(
        index="variant", columns="column", values="significant", aggfunc="max").reindex(columns=cols)
    signal = cells.groupby("column")["signal"].any().reindex(cols)
    rows = [v for v in (order or []) if v in worse.index] + [v for v in worse.index if v not in (order or [])]
    worse, text, sig = worse.reindex(rows), text.reindex(rows), sig.reindex(rows)
    vals = worse.to_numpy(dtype=float)
    shown = np.ma.masked_where(~np.isfinite(vals) | ~signal.to_numpy()[None, :], vals)
    cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="#e4e7eb")
    fig, ax = plt.subplots(figsize=(1.6 + 0.95 * len(cols), 1.0 + 0.42 * len(rows)))
    im = ax.imshow(shown, cmap=cmap, norm=_symlog_norm(vals, linear_within), aspect="auto")
    labels = [c if signal[c] else f"{c}\n(no signal)" for c in cols]
    ax.set_xticks(range(len(cols)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j, c in enumerate(cols):
            _heatmap_cell(ax, i, j, text.iloc[i, j], sig.iloc[i, j] == 1, bool(signal[c]))
    bar = fig.colorbar(im, ax=ax, fraction=0.04)
    _percent_ticks(bar, im.norm.vmax, linear_within)
    bar.set_label(f"% worse than FP (symmetric log scale,\nlinear within ±{linear_within:g}%; < 0 better)", fontsize=8)
    ax.set_title("change vs FP (* and frame: significant, 95% interval)", fontsize=9)
    return _png(fig)


def _signed_percent(v: float, _pos=None) -> str:
    return "0" if v == 0 else f"{v:+g}%"


def _percent_ticks(bar, lim: float, linear_within: float) -> None:
    steps = [linear_within, 10, 30, 100, 300, 1000]
    ticks = sorted({0.0} | {sign * t for t in steps if t <= lim for sign in (1, -1)})
    bar.set_ticks(ticks)
    bar.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_signed_percent))
    bar.ax.tick_params(labelsize=7)


def _heatmap_cell(ax, i: int, j: int, text, significant: bool, signal: bool) -> None:
    if not isinstance(text, str):
        return
    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if signal else "#8a939c")
    if significant and signal:
        ax.add_patch(plt.Rectangle((j - 0.47, i - 0.44), 0.94, 0.88, fill=False, edgecolor="#1d232a", linewidth=1.3))


def quality_vs_size(points: pd.DataFrame, ylabel: str, budget_mb: float | None = None) -> bytes | None:
    """One point per variant (FP included) at its weight size with its interval: ``points`` has
    variant, method, weight_mb, quality, lo, hi and ``excluded`` (drawn hollow)."""
    pts = points.dropna(subset=["weight_mb", "quality"])
    if pts.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.4, 3.3))
    for i, (method, m) in enumerate(pts.groupby("method", sort=True)):
        color = "black" if method == FP else f"C{i}"
        err = np.vstack([(m["quality"] - m["lo"]).clip(lower=0), (m["hi"] - m["quality"]).clip(lower=0)])
        ax.errorbar(m["weight_mb"], m["quality"], yerr=np.nan_to_num(err), fmt="none", ecolor=color, alpha=0.6, capsize=3)
        face = [("white" if x else color) for x in m["excluded"]]
        ax.scatter(m["weight_mb"], m["quality"], s=40, label=method, marker="*" if method == FP else "o",
                   facecolors=face, edgecolors=color, zorder=3)
    for (x, y), dy in _stacked_label_offsets(pts).items():
        ax.annotate(pts.loc[(pts["weight_mb"] == x) & (pts["quality"] == y), "variant"].iloc[0], (x, y), fontsize=7,
                    xytext=(6, dy), textcoords="offset points", va="center")
    if budget_mb is not None:
        ax.axvline(budget_mb, color="#b3261e", linestyle=":", linewidth=1.2, label=f"budget {budget_mb:g} MB")
    ax.set_yscale("symlog", linthresh=10)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_signed_percent))
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel("weight size (MB)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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


def _stacked_label_offsets(pts: pd.DataFrame) -> dict[tuple[float, float], float]:
    """Vertical label offsets (points) so that variants of one size, whose points nearly coincide,
    get labels one above the other, the worst on top."""
    out = {}
    for _, g in pts.groupby(pts["weight_mb"].round(1)):
        g = g.sort_values("quality", ascending=False)
        for rank, (x, y) in enumerate(zip(g["weight_mb"], g["quality"])):
            out[(x, y)] = 9.0 * (len(g) - 1) / 2 - 9.0 * rank
    return out


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
