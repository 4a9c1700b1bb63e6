"""harness/bench.py: the stage-timing table on a tiny model."""
from harness import bench
from harness.data import EVAL_DIR


def test_bench_times_every_stage_and_counts_tokens(tiny_llama_dir, capsys):
    rc = bench.main(["model=path", f"model.path={tiny_llama_dir}", "eval=perplexity", "eval.seqlen=64",
                     "eval.max_windows=2", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]", "calib=code",
                     "calib.n_samples=2", "calib.seqlen=32", "variants=[fp,rtn,gptq]"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    stages = [ln.split("|")[1].strip() for ln in table[2:]]
    assert stages[:3] == ["load model", "prepare suites", "FP: perplexity"]
    assert stages[3:] == ["quantize: rtn", "rtn: perplexity", "quantize: gptq", "gptq: perplexity"]
    tokens_per_s = [ln.split("|")[3].strip() for ln in table[2:] if "perplexity" in ln]
    assert all(float(t) > 0 for t in tokens_per_s)


def test_bench_bad_override_is_one_line(capsys):
    for argv, needle in ((["variants=[fp,awk]"], "unknown method in variants 'awk'"),
                         (["method=awk"], "unknown method 'awk'"), (["eval.nope=1"], "eval.nope")):
        assert bench.main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
