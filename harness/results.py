"""The result schema (one tidy long table) and atomic writers."""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from methods.fp import FP

COLUMNS = [
    "run_id", "started_at", "git_sha", "model", "method", "bits", "group_size", "calib", "calib_samples",
    "calib_seqlen", "suite", "task", "metric", "value", "stderr", "n", "quant_seconds", "eval_seconds",
    "config_hash", "versions",
]
# per-suite detail columns kept next to the schema (perplexity: windows, tokens, seqlen) and what
# the model-size estimate needs (see weight_bytes)
EXTRA_COLUMNS = ["windows", "tokens", "seqlen", "source", "model_note", "symmetric", "params_total",
                 "params_quantized", "quant_groups", "calib_seed", "method_options"]
SAMPLES = "samples"  # optional per-item list of floats on a row; kept out of results.csv
# within one run a row is identified by these (the FP reference rows differ from the method's by method)
ROW_KEY = ["config_hash", "method", "suite", "task", "metric"]

# Direction of every metric, one rule: perplexity-like metrics (these names, prefixes, suffixes) are
# lower-is-better (as is the salience study's output error); every other metric (pass@1, json_valid, accuracy, ...) is higher-is-better.
LOWER_IS_BETTER_PREFIXES = ("ppl_", "nll", "kl")
LOWER_IS_BETTER_SUFFIXES = ("_nll", "_kl")  # e.g. answer_nll (harness/eval/fidelity.py)
LOWER_IS_BETTER_NAMES = ("ppl_token", "out_rel_mse")


def lower_is_better(metric: str) -> bool:
    m = str(metric)
    return (m in LOWER_IS_BETTER_NAMES or m.startswith(LOWER_IS_BETTER_PREFIXES)
            or m.endswith(LOWER_IS_BETTER_SUFFIXES))


# Descriptive metrics: the per-token fidelity statistics (harness/eval/fidelity.py: KL quantiles, same
# top token, Δp of the reference token) are reported, never judged; harness.decide keeps them out of
# every pick, vote and the no-signal list. Their direction still follows the rule above (kl_tok_* lower
# is better, top1_same_tok higher); Δp (dp_ref_tok_*) is a signed change with no better side.
DESCRIPTIVE_PREFIXES = ("kl_tok_", "top1_same_tok", "dp_ref_tok_")


def is_descriptive(metric: str) -> bool:
    return str(metric).startswith(DESCRIPTIVE_PREFIXES)


def is_perplexity(metric: str) -> bool:
    return str(metric).startswith("ppl")


@functools.cache  # the code this process loaded: HEAD may move while a long session runs
def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        if out.returncode or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> str:
    import importlib.metadata as md

    out = {}
    for pkg in ("quant-harness", "torch", "transformers", "hydra-core", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return json.dumps(out, sort_keys=True)


def to_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in COLUMNS + EXTRA_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df[COLUMNS + EXTRA_COLUMNS + [c for c in df.columns if c not in COLUMNS + EXTRA_COLUMNS]]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a hidden temp file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a shared store must be readable like any file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def split_samples(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows without the samples column, long table ROW_KEY + item + value)."""
    if SAMPLES not in df.columns:
        return df, pd.DataFrame(columns=ROW_KEY + ["item", "value"])
    long = []
    for _, r in df[df[SAMPLES].map(_has_samples)].iterrows():
        key = {k: r[k] for k in ROW_KEY}
        long += [{**key, "item": i, "value": float(v)} for i, v in enumerate(r[SAMPLES])]
    return df.drop(columns=[SAMPLES]), pd.DataFrame(long, columns=ROW_KEY + ["item", "value"])


def _has_samples(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and len(v) > 0


def attach_samples(df: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """Inverse of split_samples: a list column ``samples`` (None where a row has none)."""
    df = df.copy()
    lists = {k: g.sort_values("item")["value"].tolist() for k, g in long.groupby(ROW_KEY, sort=False)}
    df[SAMPLES] = [lists.get(tuple(r[k] for k in ROW_KEY)) for _, r in df.iterrows()]
    return df


def write(df: pd.DataFrame, run_dir: Path) -> None:
    """results.parquet + results.csv (no samples) and, when rows carry samples, samples.parquet."""
    run_dir = Path(run_dir)
    rows, long = split_samples(df)
    if not long.empty:
        atomic_write(run_dir / "samples.parquet", lambda tmp: long.to_parquet(tmp, index=False))
    atomic_write(run_dir / "results.parquet", lambda tmp: rows.to_parquet(tmp, index=False))
    atomic_write(run_dir / "results.csv", lambda tmp: rows.to_csv(tmp, index=False))


def _read_run_file(f: Path) -> pd.DataFrame:
    df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
    sidecar = f.parent / "samples.parquet"
    if sidecar.is_file() and SAMPLES not in df.columns:
        df = attach_samples(df, pd.read_parquet(sidecar))
    return df


def size_columns(model, method_cfg) -> dict:
    """What weight_bytes needs: parameter counts and how many quantization groups the targets hold."""
    from methods.targets import target_linears

    linears = target_linears(model, bool(method_cfg.quantize_lm_head))
    group = int(method_cfg.group_size)
    quantized = sum(m.weight.numel() for m in linears.values())
    groups = sum(m.out_features * (m.in_features // group if group > 0 else 1) for m in linears.values())
    return {"params_total": sum(p.numel() for p in model.parameters()), "params_quantized": quantized,
            "quant_groups": groups, "symmetric": bool(method_cfg.symmetric)}


FP_STORAGE_BITS = 16  # unquantized tensors (and the whole FP model) are counted as fp16/bf16


def weight_bytes(row) -> float:
    """Bytes of the deployed weights: packed integer codes, one fp16 scale per group (plus an
    integer zero point per group when asymmetric) and everything not quantized at 16 bits.
    A method that knows better (mixed precision) may put its own ``weight_bytes`` in its rows."""
    own = row.get("weight_bytes") if hasattr(row, "get") else None
    if own is not None and not pd.isna(own):
        return float(own)
    total, quant = row.get("params_total"), row.get("params_quantized")
    if total is None or pd.isna(total):
        return float("nan")
    if row["method"] == FP or quant is None or pd.isna(quant):
        return float(total) * FP_STORAGE_BITS / 8
    bits = float(row["bits"])
    zero_bits = 0.0 if bool(row.get("symmetric")) else bits
    group_bits = float(row.get("quant_groups") or 0) * (FP_STORAGE_BITS + zero_bits)
    return (float(quant) * bits + group_bits + (float(total) - float(quant)) * FP_STORAGE_BITS) / 8


def _result_files(paths) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix in (".csv", ".parquet"):
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob("results.parquet")) or sorted(p.rglob("results.csv")))
    return files


def read_runs(paths) -> pd.DataFrame:
    """Concatenate results of runs: each path is a run directory, a results.csv, or a folder of runs."""
    frames = [_read_run_file(f) for f in _result_files(paths)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


LAYERS_FILE = "layers.parquet"  # per-layer evidence of a run, beside its results.parquet
LAYER_KEY = ["method", "bits", "group_size", "calib", "config_hash", "layer"]  # then the method's stat columns


def read_layers(paths) -> pd.DataFrame:
    """The ``layers.parquet`` files beside the results that ``read_runs(paths)`` reads, concatenated
    (an empty frame with LAYER_KEY columns when no run has one)."""
    found = dict.fromkeys(f.parent / LAYERS_FILE for f in _result_files(paths))
    frames = [pd.read_parquet(f) for f in found if f.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LAYER_KEY)


def intish(v):
    """``32.0`` → ``32`` (counts read back from a table as floats); anything else unchanged."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def fmt_value(value: float, stderr: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    digits = 2 if abs(value) >= 10 else 3
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def variant_label(r) -> str:
    if r["method"] == FP:
        return FP
    return f"{r['method']} w{int(r['bits'])} g{int(r['group_size'])}"


# what tells variants of one method and width apart when a study varies it, in label order: the
# column, how its value is appended to each quantized variant's label (FP is one variant), and what
# rows without a value count as (None: they do not count; runs older than the column lack it)
VARIANT_DISTINCTIONS = (("calib", "{}", None), ("calib_samples", "n={}", None), ("calib_seed", "seed={}", None),
                        ("method_options", "{}", ""))
VARIANT_KEY = ["model", "variant", "suite", "task", "metric"]  # one row per key once variants are labelled


def _suffix(v, fmt: str) -> str:
    return "" if v is None or v == "" or v != v else " " + fmt.format(intish(v))


def variant_suffixes(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> pd.Series:
    """Each row's part of its variant name after ``variant_label``: the text of every one of
    VARIANT_DISTINCTIONS (those in ``skip`` aside) whose value differs among the quantized rows."""
    out = pd.Series("", index=df.index, dtype=object)
    quant = df["method"] != FP
    for col, fmt, missing in VARIANT_DISTINCTIONS:
        if col not in df or col in skip:
            continue
        values = df.loc[quant, col] if missing is None else df.loc[quant, col].astype(object).fillna(missing)
        if values.dropna().astype(str).nunique() > 1:
            out[quant] += values.map(lambda v: _suffix(v, fmt))
    return out


def variant_names(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> pd.Series:
    """Each row's variant: ``variant_label`` plus its ``variant_suffixes`` (those of ``skip`` aside)."""
    labels = pd.Series([variant_label(r) for r in df.to_dict("records")], index=df.index, dtype=object)
    return labels + variant_suffixes(df, skip)


def label_variants(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``variant`` (``variant_names``); drop repeated rows of one variant and task metric (the
    newest run wins)."""
    d = df.assign(variant=variant_names(df))
    if "started_at" in d:
        d = d.sort_values("started_at", kind="stable")
    return d.drop_duplicates(subset=VARIANT_KEY, keep="last").reset_index(drop=True)


def variant_order(d: pd.DataFrame) -> list[str]:
    """The ``variant`` values of ``d`` as reports list them: FP, then widest first; at one width the
    baseline RTN before the calibrated methods."""
    q = d[d["method"] != FP]
    rank = {v: (-int(r["bits"]), r["method"] != "rtn", r["method"], int(r["group_size"]), v)
            for v, r in zip(q["variant"], q.to_dict("records"))}
    return ([FP] if (d["method"] == FP).any() else []) + sorted(rank, key=rank.get)


def comparison(df: pd.DataFrame, metric: str = "ppl_token") -> pd.DataFrame:
    """One row per task, one column per model variant: 'value ± stderr'. FP first."""
    d = df[df["metric"] == metric]
    if d.empty:
        return pd.DataFrame()
    d = label_variants(d)
    d["cell"] = [fmt_value(v, s) for v, s in zip(d["value"], d["stderr"])]
    order = variant_order(d)
    index = (["model"] if d["model"].nunique() > 1 else []) + (["suite"] if d["suite"].nunique() > 1 else []) + ["task"]
    table = d.pivot_table(index=index, columns="variant", values="cell", aggfunc="last")
    return table[[v for v in order if v in table.columns]].reset_index().rename_axis(columns=None)
