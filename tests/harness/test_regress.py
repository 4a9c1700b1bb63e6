"""`python -m harness.regress`: exit 1 on a degraded metric, 0 on the baseline itself, 2 on bad input."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness import regress, results

REPO = Path(__file__).resolve().parents[2]
BASELINE = REPO / "results" / "baselines" / "smollm2-135m-nightly.csv"


def run(*args):
    return regress.main([str(a) for a in args])


def nightly_methods():
    conf = OmegaConf.load(REPO / "conf" / "experiment" / "nightly.yaml")
    return set(str(conf.hydra.sweeper.params.method).split(","))


BASELINES = sorted(BASELINE.parent.glob("smollm2-135m-nightly*.csv"))  # what `make nightly` passes


@pytest.mark.parametrize("path", BASELINES, ids=[p.stem for p in BASELINES])
def test_checked_in_baseline_passes_against_itself(capsys, path):
    base = pd.read_csv(path)
    assert "fp" in set(base.method) <= nightly_methods() and (base.model == "smollm2-135m").all()
    assert len(set(base.compute_dtype)) == 1
    assert run("--baseline", *BASELINES, "--current", path) == 0
    out = capsys.readouterr().out
    assert "REGRESSED" not in out and f"{len(base)} ok" in out


@pytest.mark.parametrize("factor, code", [(1.05, 1), (1.005, 0), (0.9, 0)])
def test_injected_perplexity_change(tmp_path, capsys, factor, code):
    cur = pd.read_csv(BASELINE)
    worst = sorted(set(cur.method) - {"fp"})[0]  # any quantized method of the baseline
    hit = (cur.method == worst) & cur.metric.map(results.lower_is_better)
    cur.loc[hit, "value"] *= factor
    cur.to_csv(tmp_path / "cur.csv", index=False)
    assert run("--baseline", BASELINE, "--current", tmp_path / "cur.csv") == code
    table = capsys.readouterr().out
    regressed = [ln for ln in table.splitlines() if ln.startswith("|") and "REGRESSED" in ln]
    assert len(regressed) == (int(hit.sum()) if code else 0)
    assert all(f"{worst} w" in ln for ln in regressed)
    if factor < 1:
        assert "improved" in table
    # a looser tolerance lets the 5% rise through
    assert run("--baseline", BASELINE, "--current", tmp_path / "cur.csv", "--ppl-rel-tol", "0.06") == 0


def score_rows(value, stderr=0.05):
    return pd.DataFrame([{"model": "m", "method": "awq", "bits": 4, "group_size": 64, "calib": "prose", "suite": "code",
                          "task": "humaneval", "metric": "pass@1", "value": value, "stderr": stderr, "n": 40}])


@pytest.mark.parametrize("current, code", [(0.35, 1), (0.45, 0), (0.6, 0)])
def test_scores_use_stderr_units(tmp_path, current, code):
    score_rows(0.5).to_csv(tmp_path / "base.csv", index=False)
    score_rows(current).to_csv(tmp_path / "cur.csv", index=False)
    # combined stderr 0.0707: a 0.15 drop is 2.1 se (regression), a 0.05 drop 0.7 se (noise)
    assert run("--baseline", tmp_path / "base.csv", "--current", tmp_path / "cur.csv") == code


def test_recovery_threshold_beside_the_stderr_rule(tmp_path, capsys):
    score_rows(0.5).to_csv(tmp_path / "base.csv", index=False)
    score_rows(0.45).to_csv(tmp_path / "cur.csv", index=False)
    args = ["--baseline", tmp_path / "base.csv", "--current", tmp_path / "cur.csv"]
    assert run(*args) == 0  # 0.7 combined standard errors: noise by the stderr rule
    assert run(*args, "--min-recovery", "0.95") == 1  # but recovery 0.45 / 0.5 = 0.9 < 0.95
    assert run(*args, "--min-recovery", "0.85") == 0
    row = regress.diff(score_rows(0.5), score_rows(0.45), regress.RegressConfig(), 0.95).iloc[0]
    assert (row["tolerance rule"], row["recovery"], row["recovery rule"], row["status"]) == ("ok", "0.900", "REGRESSED",
                                                                                            "REGRESSED")
    assert run(*args, "--min-recovery", "1.5") == 2 and "--min-recovery must be in (0, 1]" in capsys.readouterr().err


def test_missing_metric_fails_unless_allowed(tmp_path):
    cur = pd.read_csv(BASELINE)
    cur = cur[cur.method != "rtn"]
    cur.to_csv(tmp_path / "cur.csv", index=False)
    assert run("--baseline", BASELINE, "--current", tmp_path / "cur.csv") == 1
    assert run("--baseline", BASELINE, "--current", tmp_path / "cur.csv", "--allow-missing") == 0


def test_save_baseline_round_trip(tmp_path):
    assert run("--current", BASELINE, "--save-baseline", tmp_path / "b.csv") == 0
    assert run("--baseline", tmp_path / "b.csv", "--current", BASELINE) == 0


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "/nonexistent.csv", "--current", str(BASELINE)], "baseline not found: /nonexistent.csv"),
    (["--baseline", str(BASELINE), "--current", "/nonexistent/run"], "current not found"),
    (["--baseline", str(BASELINE), "--current", str(REPO / "README.md")], "not a .csv or .parquet"),
    (["--current", str(BASELINE)], "give --baseline FILE"),
])
def test_bad_input_is_one_line(args, needle):
    r = subprocess.run([sys.executable, "-m", "harness.regress", *args], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_descriptive_token_statistics_are_never_gated(tmp_path):
    def rows(dp):
        descriptive = score_rows(dp, stderr=float("nan")).assign(metric="dp_ref_tok_mean")
        return pd.concat([score_rows(0.5), descriptive], ignore_index=True)

    rows(0.0).to_csv(tmp_path / "base.csv", index=False)
    rows(-0.3).to_csv(tmp_path / "cur.csv", index=False)  # a large shift of a signed statistic
    table = regress.diff(pd.read_csv(tmp_path / "base.csv"), pd.read_csv(tmp_path / "cur.csv"),
                         OmegaConf.structured(regress.RegressConfig))
    assert list(table["metric"]) == ["pass@1"] and not regress.failed(table)


def test_another_compute_dtype_is_one_line_not_a_wall_of_regressions(tmp_path, capsys):
    cur = pd.read_csv(BASELINE)
    assert set(cur.compute_dtype) == {"fp32"}
    cur["compute_dtype"] = "bf16"  # the same numbers: still refused, a bf16 run is not judged by an fp32 baseline
    cur.to_csv(tmp_path / "cur.csv", index=False)
    assert run("--baseline", BASELINE, "--current", tmp_path / "cur.csv") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "computed in fp32" in err[0] and "in bf16" in err[0] and "model.compute_dtype=fp32" in err[0]


def test_of_several_baselines_the_one_in_the_current_compute_dtype_judges(tmp_path, capsys):
    fp32 = pd.read_csv(BASELINE)
    bf16 = fp32.copy()
    bf16["compute_dtype"] = "bf16"
    ppl = bf16.metric.map(results.lower_is_better) & (bf16.method != "fp")
    bf16.loc[ppl, "value"] *= 1.2  # its own numbers: a bf16 run matching them passes, fp32's would fail it
    bf16.to_csv(tmp_path / "base-bf16.csv", index=False)
    both = [BASELINE, tmp_path / "base-bf16.csv"]
    for order in (both, both[::-1]):
        assert run("--baseline", *order, "--current", tmp_path / "base-bf16.csv") == 0
        assert run("--baseline", *order, "--current", BASELINE) == 0
    capsys.readouterr()
    worse = bf16.copy()
    worse.loc[ppl, "value"] *= 1.05
    worse.to_csv(tmp_path / "cur.csv", index=False)
    assert run("--baseline", *both, "--current", tmp_path / "cur.csv") == 1
    fp16 = fp32.assign(compute_dtype="fp16")
    fp16.to_csv(tmp_path / "fp16.csv", index=False)
    capsys.readouterr()
    assert run("--baseline", *both, "--current", tmp_path / "fp16.csv") == 2  # no baseline in its dtype
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in fp16" in err[0]
