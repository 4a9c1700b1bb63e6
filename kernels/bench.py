"""`python -m kernels.bench`: W4A16 Triton GEMM vs torch fp16 matmul on real LLM layer shapes (GPU).

For every M (tokens in flight) and every (K, N) of the chosen models' Linear layers it prints and
writes (CSV under results/kernels/) the kernel's time, TFLOP/s, effective bandwidth (bytes the
kernel must move: activations, packed weights, zeros, scales, output), the speedup over a dense
fp16 ``x @ W.T`` and the kernel's error against the torch reference. Decode tokens/s of a whole
model with these layers: ``python -m harness.bench_decode``.

``--smoke`` runs tiny shapes through the Triton interpreter on CPU: a correctness check of this
script and the kernel, with no timing (CPU timings of the interpreter mean nothing).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

# (K, N) of each distinct Linear: q/o, k/v (GQA), gate/up, down
SHAPES = {
    "llama2-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
    "llama3-8b": [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)],
}
SMOKE_SHAPES = {"smoke": [(256, 128), (128, 264)]}
M_VALUES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SMOKE_M = (1, 5, 33)
OUT_DIR = Path("results/kernels")


class BenchError(RuntimeError):
    pass


def _parse_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def random_packed(K: int, N: int, group_size: int, device, seed: int = 0):
    """Uniform random 4-bit codes/zeros with fp16 scales, packed in the AWQ-GEMM layout."""
    from kernels.pack import pack_awq
    from methods.quantizer import QuantizedWeight, QuantSpec

    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    zero = torch.randint(0, 16, (N, K // group_size), generator=gen).float()
    scale = (torch.rand(N, K // group_size, generator=gen) * 0.02 + 1e-3).half().float()
    packed = pack_awq(QuantizedWeight(codes, scale, zero, QuantSpec(4, group_size)))
    return tuple(t.to(device) for t in packed)


def kernel_bytes(M: int, K: int, N: int, group_size: int, act_bytes: int) -> int:
    """Bytes a W4A16 GEMM must read and write at least once."""
    groups = K // group_size
    return M * K * act_bytes + K * N // 2 + groups * N // 2 + groups * N * 2 + M * N * act_bytes


def _timer(device: str):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)
    return None


def bench_shape(M: int, K: int, N: int, group_size: int, dtype, device: str, seed: int = 0) -> dict:
    from kernels.w4a16 import w4a16_matmul, w4a16_reference

    packed = random_packed(K, N, group_size, device, seed)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    y = w4a16_matmul(x, *packed, group_size)
    ref = w4a16_reference(x, *packed, group_size)
    rel_err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()
    row = {"M": M, "K": K, "N": N, "group_size": group_size, "dtype": str(dtype).removeprefix("torch."),
           "rel_err": rel_err}
    timer = _timer(device)
    if timer is None:
        return row
    w_dense = torch.randn(N, K, device=device, dtype=dtype) * 0.02
    ms = timer(lambda: w4a16_matmul(x, *packed, group_size))
    ms_fp16 = timer(lambda: x @ w_dense.t())
    act_bytes = torch.finfo(dtype).bits // 8
    row.update(ms=ms, ms_fp16=ms_fp16, speedup=ms_fp16 / ms, tflops=2 * M * N * K / (ms * 1e-3) / 1e12,
               gbps=kernel_bytes(M, K, N, group_size, act_bytes) / (ms * 1e-3) / 1e9)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(SHAPES), help=f"layer shapes of: {', '.join(SHAPES)}")
    ap.add_argument("--m", type=_parse_ints, default=None, help="comma-separated M values")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the CSV (default results/kernels)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes through the Triton interpreter on CPU, no timing")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    import pandas as pd

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # read when kernels.w4a16 is first imported
        device, shapes, ms = "cpu", SMOKE_SHAPES, args.m or SMOKE_M
        if "kernels.w4a16" in sys.modules and not sys.modules["kernels.w4a16"].INTERPRETED:
            raise BenchError("--smoke needs the Triton interpreter, but kernels.w4a16 was imported without it")
    else:
        if not torch.cuda.is_available():
            raise BenchError("kernels.bench measures GPU speed and found no CUDA device; "
                             "use --smoke for a CPU correctness run of the Triton kernel")
        device, ms = "cuda", args.m or M_VALUES
        unknown = [m for m in args.models.split(",") if m not in SHAPES]
        if unknown:
            raise BenchError(f"unknown --models {unknown[0]!r}; choose from: {', '.join(SHAPES)}")
        shapes = {m: SHAPES[m] for m in args.models.split(",")}
    dtype = getattr(torch, args.dtype)
    for K, _ in (s for v in shapes.values() for s in v):
        if args.group_size < 32 or args.group_size % 32 or K % args.group_size:
            raise BenchError(f"--group-size {args.group_size} must be a multiple of 32 dividing every K "
                             f"(K={K} here)")

    rows = []
    for model, layer_shapes in shapes.items():
        for K, N in layer_shapes:
            for M in ms:
                rows.append({"model": model, **bench_shape(M, K, N, args.group_size, dtype, device)})
    df = pd.DataFrame(rows)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter"
    df.insert(0, "device", gpu)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if args.smoke else gpu.replace(" ", "_")
    path = args.out / f"w4a16_{stem}_g{args.group_size}_{args.dtype}.csv"
    df.to_csv(path, index=False)
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        print(df.drop(columns=["device"]).to_string(index=False))
    print(f"\ndevice: {gpu}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
