"""The results store and the run-directory writer: atomic files, samples sidecar, model size."""
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness import results, store
from harness.errors import HarnessError
from tests.conftest import tiny_model


def rows(config_hash="h1", started="2026-01-01T00:00:00+00:00", value=10.0, samples=(2.0, 2.5, 2.25)):
    base = {"run_id": "r", "started_at": started, "git_sha": "abc", "model": "org/model", "calib": "prose",
            "calib_samples": 8, "calib_seqlen": 64, "config_hash": config_hash, "versions": "{}",
            "suite": "perplexity", "task": "prose_en", "metric": "ppl_token", "n": 3, "stderr": 0.5}
    return results.to_frame([
        {**base, "method": "fp", "bits": 16, "group_size": -1, "value": value, "samples": list(samples)},
        {**base, "method": "rtn", "bits": 4, "group_size": 64, "value": value + 1, "samples": None},
    ])


def test_append_is_one_complete_file_and_round_trips_samples(tmp_path):
    path = store.append(rows(), tmp_path, "rtn")
    assert path.parent == tmp_path / "org_model" / "rtn" and path.name.startswith("h1-20260101T000000")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert path.stat().st_mode & 0o044  # readable by the group/others like any file (not mkstemp's 0600)
    back = store.load(tmp_path)
    assert len(back) == 2 and back.loc[back.method == "fp", "samples"].item().tolist() == [2.0, 2.5, 2.25]
    assert back.loc[back.method == "rtn", "samples"].item() is None
    assert store.completed(tmp_path, "h1") == path and store.completed(tmp_path, "h2") is None


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        store.append(rows(), tmp_path, "rtn")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert store.completed(tmp_path, "h1") is None


def test_newest_run_per_config_unless_history(tmp_path):
    store.append(rows(value=10.0), tmp_path, "rtn")
    store.append(rows(value=11.0, started="2026-01-02T00:00:00+00:00"), tmp_path, "rtn")
    store.append(rows(config_hash="h2", value=20.0), tmp_path, "rtn")
    latest = store.load(tmp_path)
    assert sorted(latest[latest.method == "fp"].value) == [11.0, 20.0]
    assert len(store.load(tmp_path, history=True)) == 6
    assert len(store.load(tmp_path, model="org/model", method="rtn")) == 4
    with pytest.raises(HarnessError, match="no runs in the results store .* model=other"):
        store.load(tmp_path, model="other")
    with pytest.raises(HarnessError, match="results store not found"):
        store.load(tmp_path / "nope")


def test_one_file_holds_one_run(tmp_path):
    two = pd.concat([rows("a"), rows("b")], ignore_index=True)
    with pytest.raises(ValueError, match="one config_hash"):
        store.append(two, tmp_path, "rtn")


def test_run_dir_keeps_samples_out_of_csv_and_reads_them_back(tmp_path):
    df = rows()
    results.write(df, tmp_path)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert "samples" not in csv.columns and len(csv) == 2
    side = pd.read_parquet(tmp_path / "samples.parquet")
    assert side["value"].tolist() == [2.0, 2.5, 2.25] and side["item"].tolist() == [0, 1, 2]
    back = results.read_runs([tmp_path])
    assert back.loc[back.method == "fp", "samples"].item() == [2.0, 2.5, 2.25]
    assert back.loc[back.method == "rtn", "samples"].item() is None


def test_read_any_accepts_files_runs_and_stores(tmp_path):
    results.write(rows(), tmp_path / "run")
    store.append(rows(), tmp_path / "store", "rtn")
    for p in (tmp_path / "run", tmp_path / "run" / "results.csv", tmp_path / "store"):
        assert len(store.read_any(p)) == 2
    (tmp_path / "junk.txt").write_text("x")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    for bad, msg in ((tmp_path / "missing", "not found"), (tmp_path / "junk.txt", "not a .csv or .parquet"),
                     (tmp_path / "other.csv", "not a results table")):
        with pytest.raises(HarnessError, match=msg):
            store.read_any(bad)


def test_metric_direction_rule():
    for m in ("ppl_token", "ppl_word", "nll", "nll_answer", "answer_nll", "kl_to_fp", "kl", "out_rel_mse"):
        assert results.lower_is_better(m), m
    for m in ("pass@1", "json_valid", "schema_valid", "field_accuracy", "ast_match", "parse_rate", "top1_agree_fp",
              "exact_match_fp", "needle_match", "acc"):
        assert not results.lower_is_better(m), m


def test_weight_bytes_counts_codes_scales_zeros_and_the_fp16_rest():
    model = tiny_model("llama")
    cfg = OmegaConf.create({"bits": 4, "group_size": 32, "symmetric": False, "quantize_lm_head": False})
    cols = results.size_columns(model, cfg)
    linears = [m for n, m in model.named_modules() if isinstance(m, __import__("torch").nn.Linear) and n != "lm_head"]
    n_q = sum(m.weight.numel() for m in linears)
    assert cols["params_quantized"] == n_q and cols["quant_groups"] == n_q // 32
    total = sum(p.numel() for p in model.parameters())
    row = {"method": "rtn", "bits": 4, **cols}
    expected = n_q * 4 / 8 + (n_q // 32) * (2 + 0.5) + (total - n_q) * 2  # fp16 scale + 4-bit zero per group
    assert results.weight_bytes(row) == pytest.approx(expected)
    assert results.weight_bytes({**row, "symmetric": True}) == pytest.approx(expected - (n_q // 32) * 0.5)
    assert results.weight_bytes({**row, "method": "fp", "bits": 16}) == total * 2
    assert results.weight_bytes({**row, "weight_bytes": 123.0}) == 123.0  # a method's own account wins
