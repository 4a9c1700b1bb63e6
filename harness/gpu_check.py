"""One command for a CUDA machine (``make gpu-check``): the GPU path end to end, one summary table.

Steps, each a subprocess with its own time limit (460 s in all, inside the 8-minute budget):
kernel tests without the Triton interpreter; ``python -m kernels.bench`` (CSV under results/kernels/
with the GPU's name); the embedded model on cuda for fp/rtn/awq/gptq w4 g64 with perplexity; an
AWQ export read back by ``harness.serving_check`` (logits against the harness's own numbers); decode
tokens/s fp16 vs W4 (``harness.bench_decode``). On a machine without CUDA it stops at once.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

EXIT_NO_CUDA = 3


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: int


def steps(work: Path) -> list[Step]:
    py = sys.executable
    export = work / "awq-w4g64"
    offline = ["eval=perplexity", "model.device=cuda", f"store_dir={work / 'store'}"]
    return [
        Step("kernel tests (compiled Triton)", [py, "-m", "pytest", "-q", "tests/kernels"], 100),
        Step("kernels.bench", [py, "-m", "kernels.bench"], 60),
        Step("fp/rtn/awq/gptq w4 g64 on cuda", [py, "-m", "harness", "variants=[fp,rtn,awq,gptq]", *offline,
                                               f"hydra.run.dir={work / 'run'}"], 150),
        Step("export AWQ w4 g64", [py, "-m", "harness", "method=awq", *offline, "eval.max_windows=1",
                                   f"export.dir={export}", f"hydra.run.dir={work / 'export-run'}"], 60),
        Step("serving_check (reader vs runtimes)", [py, "-m", "harness.serving_check", str(export)], 45),
        Step("decode fp16 vs W4", [py, "-m", "harness.bench_decode"], 45),
    ]


def run_step(step: Step, log_dir: Path) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # the real kernel launch (tests/kernels/conftest.py defaults to 1)
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = log_dir / (step.name.split(" ")[0].replace("/", "_") + ".log")
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            rc = subprocess.run(step.argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=step.limit_s).returncode
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {step.limit_s}s"
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:] or [""]
    return {"step": step.name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
            "last line": tail[0][:100], "log": str(log)}


def table(rows: list[dict]) -> str:
    cols = ["step", "status", "seconds", "last line"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for logs and the export (default: a temp dir)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device found (torch.cuda.is_available() is False); run it on a GPU machine")
        return EXIT_NO_CUDA
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {torch.cuda.get_device_name()}; logs in {work}", flush=True)
    rows = []
    for step in steps(work):
        rows.append(run_step(step, work))
        print(f"  {step.name}: {rows[-1]['status']} in {rows[-1]['seconds']}s", flush=True)
    print(table(rows))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
