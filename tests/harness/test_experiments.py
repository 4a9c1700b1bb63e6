"""Studies (+experiment=salience | calib_matrix) on tiny models: rows, rankings, reports, bad input."""
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from harness import experiments
from harness.config import register_configs
from harness.data import EVAL_DIR
from harness.errors import HarnessError
from harness.experiments import calib_matrix, salience
from harness import session as session_mod
from tests.conftest import tiny_model

SALIENT = list(range(8))  # planted outlier activation channels
HEAVY = list(range(4, 12))  # planted large weight columns: half of them salient


def compose_cfg(*overrides):
    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def planted_llama_dir(tmp_path_factory, smol_tokenizer):
    """A tiny Llama whose attention and MLP inputs carry 20× outliers on a few channels (norm
    weights), and whose q/k/v/gate/up weights have large columns on half of those channels."""
    model = tiny_model("llama", seed=3)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[SALIENT] *= 20
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.mlp.gate_proj, layer.mlp.up_proj):
                lin.weight[:, HEAVY] *= 3
    d = tmp_path_factory.mktemp("planted-llama")
    model.save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


def tiny_overrides(model_dir, tmp_path, *extra):
    return ["model=path", f"model.path={model_dir}", f"cache_dir={tmp_path / 'cache'}", f"store_dir={tmp_path / 'store'}",
            "calib.n_samples=8",
            "calib.seqlen=64", "eval.seqlen=128", "eval.max_windows=2", *extra]


def run_study(cfg):
    """A study as the CLI runs it: its plan through the session; the combined rows."""
    outcomes = session_mod.run(cfg, experiments.plan(cfg), "run", resume=False)
    return session_mod.combined(outcomes)[0]


def test_salience_study_ranks_activation_over_weight_over_random(planted_llama_dir, tmp_path):
    cfg = compose_cfg("+experiment=salience", *tiny_overrides(planted_llama_dir, tmp_path),
                      "experiment.fractions=[0.125]", "experiment.eval_texts=[code_py]")
    df = run_study(cfg)
    err = df[df.suite == salience.ERROR_SUITE].set_index("keep_selector")["value"]
    assert err["activation"] < err["weight"] < err["random"] < err["none"]
    ppl = df[df.metric == "ppl_token"]
    assert sorted(ppl.keep_selector) == ["activation", "all", "none", "random", "weight"]
    assert (ppl.task == "code_py").all() and ppl.value.notna().all() and (ppl.value > 1).all()
    assert df.config_hash.nunique() == 5  # one per variant
    assert set(ppl[ppl.method.str.startswith("salience_")].method) == {
        "salience_activation_12.5%", "salience_weight_12.5%", "salience_random_12.5%"}
    assert (df[df.method != "fp"].bits == 3).all()  # the preset's format

    text = experiments.render(df, "t")
    for needle in ("Salient channels kept in full precision (RTN w3 g64 elsewhere)", "Token perplexity on code_py",
                   "| activation |", "Toy: two input channels", "channel 0 contributes 4.0", "only 0.6"):
        assert needle in text
    # the decision report (python -m harness.report) carries the same study tables
    from harness import blocks, report

    decision = blocks.to_markdown(report.build(df, figures=False))
    assert "Salient channels kept in full precision" in decision and "Toy: two input channels" in decision


def test_calib_matrix_study_covers_sets_sizes_and_texts(tmp_path, tiny_llama_dir):
    cfg = compose_cfg("+experiment=calib_matrix", *tiny_overrides(tiny_llama_dir, tmp_path),
                      "experiment.calib_sets=[prose,code]", "experiment.sizes=[4,8]", "calib=prose", "calib.n_samples=4",
                      "experiment.eval_texts=[code_py,prose_en]", "eval.max_windows=1")
    df = run_study(cfg)
    ppl = df[df.metric == "ppl_token"]
    assert set(ppl.task) == {"code_py", "prose_en"}
    q = ppl[~ppl.method.isin(["fp", "rtn"])]
    got = {(m, c, int(n)) for m, c, n in zip(q.method, q.calib, q.calib_samples)}
    want = {(m, c, 4) for m in ("awq", "gptq") for c in ("prose", "code")} | {(m, "prose", 8) for m in ("awq", "gptq")}
    assert got == want
    assert len(q) == len(want) * 2  # every variant on every text
    assert (q.calib_seqlen == 64).all() and ppl.value.notna().all()
    roles = q.drop_duplicates(["method", "calib", "calib_samples"]).set_index(["method", "calib", "calib_samples"])["calib_role"]
    assert roles[("awq", "prose", 4)] == "matrix+size" and roles[("awq", "code", 4)] == "matrix"
    assert roles[("gptq", "prose", 8)] == "size"

    text = experiments.render(df, "t")
    assert "gptq: calibration windows drawn from prose (rows) × eval text" in text
    assert "| windows | code_py | prose_en | quant s |" in text
    # the calibration set × eval text matrix is the decision report's, once
    from harness import blocks, report

    decision = blocks.to_markdown(report.build(df, figures=False))
    assert decision.count("## Calibration matrix") == 1 and "| code n=4 |" in decision


@pytest.mark.parametrize("overrides, needle", [
    (["+experiment=salience", "experiment.selectors=[activation,gradient]"],
     "unknown channel selector 'gradient'; choose from: activation, weight, random"),
    (["+experiment=salience", "experiment.fractions=[1.5]"], "keep fraction 1.5 is out of range"),
    (["+experiment=salience", "method=awq"], "drop method=awq"),
    (["+experiment=calib_matrix", "experiment.methods=[awq,spqr]"], "unknown calibrated method 'spqr'"),
    (["+experiment=calib_matrix", "experiment.calib_sets=[poetry]"], "unknown calibration set 'poetry'"),
    (["+experiment=calib_matrix", "experiment.sizes=[0]"], "experiment.sizes must be positive"),
    (["+experiment=salience", "experiment.name=ablation"], "unknown study experiment.name='ablation'; choose one of: salience, calib_matrix"),
])
def test_bad_study_options_raise_one_clear_error(overrides, needle):
    cfg = compose_cfg(*overrides)
    with pytest.raises(HarnessError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        experiments.plan(cfg)


def test_unknown_eval_text_is_named_before_loading_a_model(tmp_path):
    cfg = compose_cfg("+experiment=salience", "experiment.eval_texts=[klingon]", f"cache_dir={tmp_path}")
    with pytest.raises(HarnessError, match="unknown eval text 'klingon' in experiment.eval_texts; shipped texts: code_py"):
        experiments.plan(cfg)


@pytest.mark.parametrize("args, needle", [
    (["+experiment=salience", "experiment.fractionz=[0.1]"], "unknown option experiment.fractionz"),
    (["+experiment=salience", "experiment.fractions=[0]"], "error: experiment: keep fraction 0.0 is out of range"),
])
def test_cli_bad_study_input_is_one_line(args, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness", *args, f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_salience_end_to_end_writes_results_and_report(planted_llama_dir, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "harness", "+experiment=salience", "experiment.fractions=[0.125]",
                        "experiment.selectors=[activation,random]", f"hydra.run.dir={out}",
                        *tiny_overrides(planted_llama_dir, tmp_path, "eval.max_windows=1",
                                        f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]", "experiment.eval_texts=[]")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert set(df.method) == {"fp", "rtn", "salience_activation_12.5%", "salience_random_12.5%"}
    assert (df.experiment == "salience").all()
    report = (out / "report.md").read_text()
    assert "Toy: two input channels" in report and "| random |" in report
    assert (out / "config.yaml").is_file()


# ---- rendering from synthetic study rows (no model) ----------------------------------------------

def study_rows(study, variants, tasks=("code_py", "prose_en"), **common):
    """Rows as a study writes them: one perplexity row per variant and text."""
    import pandas as pd

    base = {"experiment": study, "model": "tiny", "suite": "perplexity", "metric": "ppl_token", "stderr": 0.1,
            "n": 2, "windows": 2, "seqlen": 128, "config_hash": "h", "model_note": None, **common}
    return pd.DataFrame([{**base, **v, "task": t, "value": v["value"] + i} for v in variants
                         for i, t in enumerate(tasks)])


def test_calib_matrix_sections_are_blocks_with_the_size_sweep_only():
    from harness.blocks import Block
    from methods.fp import FP

    fmt = {"bits": 4, "group_size": 64, "calib_seqlen": 64}
    variants = [{"method": FP, "calib": "none", "calib_samples": 0, "calib_role": "baseline", "value": 10.0,
                 "quant_seconds": 0.0, "bits": 16, "group_size": -1, "calib_seqlen": 0},
                {**fmt, "method": "rtn", "calib": "none", "calib_samples": 0, "calib_role": "baseline", "value": 14.0,
                 "quant_seconds": 1.0, "calib_seqlen": 0}]
    variants += [{**fmt, "method": "awq", "calib": c, "calib_samples": n, "calib_role": role, "value": v,
                  "quant_seconds": s} for c, n, role, v, s in [("prose", 8, "matrix+size", 12.0, 5.0),
                                                               ("code", 8, "matrix", 12.5, 5.0),
                                                               ("prose", 16, "size", 11.0, 9.0)]]
    out = calib_matrix.render_sections(study_rows("calib_matrix", variants))
    assert all(isinstance(b, Block) for b in out)
    assert [b.kind for b in out] == ["h2", "p", "h3", "table"]
    assert out[0].text == "Calibration sensitivity (w4 g64)" and "python -m harness.report" in out[1].text
    sweep = out[3].table
    assert list(sweep["windows"]) == [f"{FP} (baseline)", "rtn (baseline)", "8", "16"]
    assert list(sweep["quant s"].iloc[2:]) == ["5.0", "9.0"] and sweep["quant s"].iloc[:2].isna().all()
    text = experiments.render(study_rows("calib_matrix", variants), "Study t")
    assert text.startswith("# Study t\n\nModel: tiny\n\n## Calibration sensitivity")
    assert "| rtn (baseline) | 14.00 | 15.00 | — |" in text  # a missing cell reads —, as in every report


def test_salience_sections_are_blocks():
    from harness.blocks import Block

    common = {"calib": "prose", "calib_samples": 8, "calib_seqlen": 64, "symmetric": False, "bits": 3,
              "group_size": 64, "kept_channels": 12}
    variants = [{"method": "rtn", "keep_selector": "none", "keep_fraction": 0.0, "value": 20.0},
                {"method": "salience_activation_1%", "keep_selector": "activation", "keep_fraction": 0.01, "value": 15.0},
                {"method": "salience_random_1%", "keep_selector": "random", "keep_fraction": 0.01, "value": 19.0}]
    out = salience.render_sections(study_rows("salience", variants, tasks=("code_py",), **common))
    assert all(isinstance(b, Block) for b in out) and out[0].kind == "h2"
    table = next(b.table for b in out if b.kind == "table")
    assert list(table["kept channels chosen by"]) == ["activation", "random"] and list(table.columns)[1:] == ["1%"]
    assert any(b.text == "Toy: two input channels" for b in out)
    assert salience.render_sections(study_rows("calib_matrix", variants, **common)) == []  # not its rows
