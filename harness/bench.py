"""`python -m harness.bench [overrides]`: one table of where the time goes, measured in one process.

Stages: loading the model, preparing the suites, each suite on the FP model (a fresh FP cache, so it
is computed), each method's quantization (calibration capture included) and each suite on each
variant, with tokens/s where a suite counts tokens. Any harness override applies
(`python -m harness.bench eval=perplexity 'variants=[rtn,gptq]'`). With the `[peers]` extra
installed, llm-compressor's GPTQ and AWQ run on the same calibration windows and the table gives
our time ÷ theirs. Benchmark alone: two torch jobs on two cores distort every timing.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_module
from hydra.errors import HydraException

from harness import plan as plan_mod
from harness import results
from harness.cli_checks import check_group_choices
from harness.config import register_configs
from harness.errors import HarnessError
from harness.session import Session

OURS_VS_PEER = {"gptq": "llmc_gptq", "awq": "llmc_awq"}
DEFAULT_VARIANTS = "variants=[fp,rtn,awq,gptq]"


def bench_config(argv: list[str], tmp: Path):
    variants = [] if any(a.startswith("variants=") for a in argv) else [DEFAULT_VARIANTS]
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("config", overrides=[*variants, *argv, f"cache_dir={tmp}/cache", f"store_dir={tmp}/store"])
    if importlib.util.find_spec("llmcompressor") is not None:
        cfg.variants = list(cfg.variants) + [p for o, p in OURS_VS_PEER.items() if o in cfg.variants]
    return cfg


def suite_rows(stage: str, rows: list[dict]) -> list[dict]:
    """One row per suite: its seconds (the suite's eval_seconds) and tokens/s where rows count tokens."""
    out = []
    for suite, g in pd.DataFrame(rows).groupby("suite", sort=False):
        seconds = float(g["eval_seconds"].max())
        tokens = float(g["tokens"].sum()) if "tokens" in g else 0.0
        out.append({"stage": f"{stage}: {suite}", "seconds": seconds,
                    "tokens/s": tokens / seconds if tokens and seconds else None})
    return out


def measure(cfg) -> pd.DataFrame:
    plan = plan_mod.build(cfg)
    session = Session.open(cfg, plan)
    table = [{"stage": stage, "seconds": s} for stage, s in session.timings.items()]
    table += suite_rows("FP", session.fp_rows)
    for v in plan:
        if v.entry.reference:
            continue
        out = session.run_variant(v, "bench")
        table.append({"stage": f"quantize: {v.name}", "seconds": float(out.rows["quant_seconds"].iloc[0])})
        table += suite_rows(v.name, out.rows.to_dict("records"))
    return pd.DataFrame(table)


def with_peer_ratios(table: pd.DataFrame) -> pd.DataFrame:
    secs = dict(zip(table["stage"], table["seconds"]))
    table["ours / peer"] = [secs[s] / secs[f"quantize: {OURS_VS_PEER[s.split(': ')[1]]}"]
                            if s.startswith("quantize: ") and f"quantize: {OURS_VS_PEER.get(s.split(': ')[1])}" in secs
                            else None for s in table["stage"]]
    return table


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_group_choices(argv)
        with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
            table = with_peer_ratios(measure(bench_config(argv, Path(tmp))))
    except (HarnessError, HydraException) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    shown = table.map(lambda v: "" if v is None or v != v else (f"{v:.3g}" if isinstance(v, float) else v))
    print(results.markdown_table(shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
