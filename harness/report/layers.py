"""Per-layer evidence from ``layers.parquet`` rows: stat families averaged per layer, a summary per
variant and, with figures, each stat by layer index."""
from __future__ import annotations

import re

import pandas as pd

from harness import results
from harness.blocks import Block


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
    own = results.variant_names(layers)
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
