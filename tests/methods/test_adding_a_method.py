"""The README's "Adding a method" recipe, followed literally: one new file in methods/, nothing
else edited, and the method runs from the command line with its own options and defaults."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from harness.data import EVAL_DIR

METHODS_DIR = Path(__file__).resolve().parents[2] / "methods"
NAME = "zz_throwaway_clip_rtn"

RECIPE = textwrap.dedent(f'''
    """Round-to-nearest on a shrunken range: every group's range is clipped to ``ratio`` of its max."""
    import time
    from dataclasses import dataclass

    from methods.quantizer import group_absmax
    from methods.registry import Method, MethodConfig, QuantResult, register
    from methods.targets import fake_quantize_linears, peak_rss_mb, prepare_targets


    @dataclass
    class ClipRTNConfig(MethodConfig):
        name: str = "{NAME}"
        ratio: float = 0.9  # fraction of each group's max |w| kept as its range


    @register("{NAME}", ClipRTNConfig, calibrated=False)
    class ClipRTN(Method):
        def quantize(self, model, calib, cfg) -> QuantResult:
            t0 = time.perf_counter()
            spec, linears = prepare_targets(model, cfg)
            clips = {{n: group_absmax(m.weight, spec) * cfg.ratio for n, m in linears.items()}}
            stats, qweights = fake_quantize_linears(linears, spec, clips=clips)
            return QuantResult(self.name, time.perf_counter() - t0, peak_rss_mb(), stats, qweights)
''')


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_one_new_file_adds_a_method(tiny_llama_dir, tmp_path):
    path = METHODS_DIR / f"{NAME}.py"
    path.write_text(RECIPE)
    try:
        common = ["model=path", f"model.path={tiny_llama_dir}", "eval=perplexity", "eval.seqlen=64",
                  "eval.max_windows=1", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]", f"store_dir={tmp_path / 'store'}",
                  f"cache_dir={tmp_path / 'cache'}"]
        r = harness(f"method={NAME}", "method.ratio=0.8", f"hydra.run.dir={tmp_path / 'run'}", *common, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        df = pd.read_parquet(tmp_path / "run" / "results.parquet")
        assert set(df.method) == {"fp", NAME}
        layers = pd.read_parquet(tmp_path / "run" / "layers.parquet")
        assert (layers.method == NAME).all() and (layers.weight_mse > 0).all()

        bad = harness("method=awk", cwd=tmp_path)  # the registry's name is among the valid choices
        assert bad.returncode == 2 and NAME in bad.stderr
        wrong = harness("method=rtn", "method.ratio=0.8", cwd=tmp_path)  # its option belongs to it alone
        assert wrong.returncode == 2 and "unknown option method.ratio for method=rtn" in wrong.stderr
    finally:
        path.unlink()
