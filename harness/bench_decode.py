"""`python -m harness.bench_decode`: greedy decode tokens/s of the embedded model in fp16 against
the same model with RTN-w4 QuantLinear layers (the Triton W4A16 kernel), batch 1, on a GPU.
Writes results/kernels/decode_<GPU>.csv next to the kernel benchmark (python -m kernels.bench)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_module

import methods
from harness.config import register_configs
from harness.eval.generation import decode_kwargs
from harness.models import load
from kernels.qlinear import replace_linears

OUT_DIR = Path("results/kernels")


@torch.no_grad()
def decode_tokens_per_second(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Greedy decode with a KV cache; prompt prefill excluded from the timing."""
    from transformers import DynamicCache

    kwargs = decode_kwargs(model, DynamicCache(config=model.config))  # the cache fills in place

    def step(x):
        return model(input_ids=x, use_cache=True, **kwargs).logits[:, -1:].argmax(-1)

    def sync():
        if ids.is_cuda:
            torch.cuda.synchronize()

    nxt = step(ids)
    for _ in range(2):  # untimed: the first M=1 steps autotune the kernel's decode bucket
        nxt = step(nxt)
    sync()
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        nxt = step(nxt)
    sync()
    return new_tokens / (time.perf_counter() - t0)


def bench(group_size: int, new_tokens: int) -> list[dict]:
    """The embedded default model in fp16 vs RTN-w4 QuantLinear layers (Triton kernel), batch 1."""

    register_configs()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        model_cfg = compose("config").model  # the embedded default preset (conf/model/), not a copy of it
    rows = []
    model, tok = load(model_cfg)
    ids = tok("The history of lighthouses begins", return_tensors="pt").input_ids.cuda()
    model = model.half().cuda()
    rows.append({"model": model_cfg.name, "weights": "fp16", "tokens_per_s": decode_tokens_per_second(model, ids, new_tokens)})
    cfg = SimpleNamespace(bits=4, group_size=group_size, symmetric=False, quantize_lm_head=False)
    result = methods.get("rtn").quantize(model.float().cpu(), None, cfg)
    model = replace_linears(model, result.qweights).half().cuda()
    rows.append({"model": model_cfg.name, "weights": f"w4 g{group_size} (Triton)",
                 "tokens_per_s": decode_tokens_per_second(model, ids, new_tokens)})
    return rows


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(prog="python -m harness.bench_decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128, help="decoded tokens timed per model")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: harness.bench_decode measures GPU decoding and found no CUDA device", file=sys.stderr)
        return 2
    df = pd.DataFrame(bench(args.group_size, args.tokens))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"decode_{torch.cuda.get_device_name().replace(' ', '_')}.csv"
    df.to_csv(path, index=False)
    print(df.to_string(index=False))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
