"""The README's "Adding a method" recipe, followed literally: one new file in methods/, nothing
else edited, and the method runs from the command line with its own options and defaults.

The file goes into a copy of the project, never into the checkout: other tests read the source tree
while this one runs (tests/test_layering.py parses every module), and a file that comes and goes
under them breaks them."""
import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from harness.data import EVAL_DIR

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "methods", "kernels", "conf")
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


def copy_of_project(dest: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def harness(*args, project, cwd):
    """``python -m harness`` importing the packages of ``project`` (ahead of the editable install)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(project)}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def test_one_new_file_adds_a_method(tiny_llama_dir, tmp_path):
    project = copy_of_project(tmp_path / "project")
    (project / "methods" / f"{NAME}.py").write_text(RECIPE)
    run = functools.partial(harness, project=project, cwd=tmp_path)
    common = ["model=path", f"model.path={tiny_llama_dir}", "eval=perplexity", "eval.seqlen=64",
              "eval.max_windows=1", f"eval.texts=[{EVAL_DIR / 'code_py.txt'}]", f"store_dir={tmp_path / 'store'}",
              f"cache_dir={tmp_path / 'cache'}"]
    r = run(f"method={NAME}", "method.ratio=0.8", f"hydra.run.dir={tmp_path / 'run'}", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert set(df.method) == {"fp", NAME}
    layers = pd.read_parquet(tmp_path / "run" / "layers.parquet")
    assert (layers.method == NAME).all() and (layers.weight_mse > 0).all()

    bad = run("method=awk")  # the registry's name is among the valid choices
    assert bad.returncode == 2 and NAME in bad.stderr
    wrong = run("method=rtn", "method.ratio=0.8")  # its option belongs to it alone
    assert wrong.returncode == 2 and "unknown option method.ratio for method=rtn" in wrong.stderr
