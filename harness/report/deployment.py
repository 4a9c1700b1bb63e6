"""The deployment section: weight bytes per variant, which runtime loads it as exported
(harness/runtimes.py), and the constraints that remove candidates."""
from __future__ import annotations

import math

import pandas as pd

from harness import decide, results, runtimes
from harness.blocks import Block
from harness.config import DecisionConfig
from methods.fp import FP


def _deployment_row(r, dec: decide.Decision, fp_bytes: float) -> dict:
    load = runtimes.loadable(r["method"], int(r["bits"]), int(r["group_size"]), decide.is_symmetric(r))
    b = float(r["weight_bytes"])
    meets = "reference" if r["method"] == FP else ("no: " + dec.excluded[r["variant"]] if r["variant"] in dec.excluded
                                                  else "yes")
    return {"variant": r["variant"], "weights": decide.mb(b),
            "of FP": f"{b / fp_bytes:.0%}" if fp_bytes and math.isfinite(b) else "—",
            **{rt: fmt or "—" for rt, fmt in load.items()}, "meets constraints": meets}


def _not_loadable_notes(firsts: dict) -> list[str]:
    """One sentence per distinct reason, naming the variants it applies to."""
    reasons: dict[str, list[str]] = {}
    for r in firsts.values():
        for rt in runtimes.RUNTIMES:
            why = runtimes.why_not(r["method"], int(r["bits"]), int(r["group_size"]), decide.is_symmetric(r), rt)
            if why and r["variant"] not in reasons.setdefault(why, []):
                reasons[why].append(r["variant"])
    return [f"{why} ({', '.join(variants)})." for why, variants in reasons.items()]


def deployment(main: pd.DataFrame, dec: decide.Decision, cfg: DecisionConfig) -> list[Block]:
    """Weight bytes per variant, which runtime loads it (harness/runtimes.py), and the constraints."""
    firsts = {v: g.iloc[0] for v, g in main.groupby("variant", sort=False)}
    order = [v for v in results.variant_order(main) if v in firsts]
    fp_bytes = float(firsts[FP]["weight_bytes"]) if FP in firsts else math.nan
    t = pd.DataFrame([_deployment_row(firsts[v], dec, fp_bytes) for v in order])
    out = [Block("h2", "Deployment"),
           Block("p", f"Constraints: {decide.constraints_text(cfg)} (set with `--max-weight-mb MB` and "
                      f"`--runtime {'|'.join(runtimes.CHOICES)}`, or DecisionConfig.max_weight_mb / .runtime); a "
                      "variant that fails them is never recommended. Weights: packed codes + one fp16 scale and "
                      "integer zero per group + the unquantized rest at 16 bits. A runtime cell names the "
                      "checkpoint format it loads the variant as; this harness exports AWQ-GEMM at 4 bits. "
                      "The runtimes' constraints are a cited table in harness/runtimes.py."),
           Block("table", table=t)]
    notes = _not_loadable_notes(firsts)
    return out + ([Block("p", "Not loadable as exported: " + " ".join(notes))] if notes else [])
