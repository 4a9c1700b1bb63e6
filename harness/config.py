"""Config dataclasses: the single source of every default. YAML files in conf/ only name presets.

Each dataclass is registered in Hydra's ConfigStore under ``schema/<group>/<name>``; a preset file
such as ``conf/method/rtn.yaml`` pulls its schema in through its defaults list.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    source: str = "gguf_package"  # gguf_package | path | hub
    package: Optional[str] = None  # gguf_package: the Python package that ships the file
    gguf_file: Optional[str] = None
    assemble: Optional[str] = None  # gguf_package: "module:function" writing gguf_file from chunks (cached once)
    install: Optional[str] = None  # the install command named when the package is missing
    path: Optional[str] = None  # path: a local Hugging Face model directory
    hub_id: Optional[str] = None  # hub: a model id on the Hugging Face hub
    revision: Optional[str] = None
    dtype: str = "float32"  # master weights: what methods quantize and export writes from
    # forward passes of evaluation (perplexity, fidelity, decoding, the guard): auto = bf16 where the
    # hardware runs it fast (CUDA with bf16, a CPU with AMX-BF16 or AVX512-BF16), else fp32
    compute_dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto (CUDA when torch sees one, else CPU) | cpu | cuda | cuda:N
    # none | cpu | disk: decoder layers kept in host memory or in the checkpoint's safetensors and
    # materialised on the device one at a time (harness/offloading.py)
    offload: str = "none"
    offload_dir: Optional[str] = None  # offload=disk: where changed layers go (default: the user cache)
    device_map: Optional[str] = None  # e.g. auto: spread the model over the GPUs through accelerate
    eos_token: Optional[str] = None  # set when the checkpoint's metadata gets it wrong
    pad_token: Optional[str] = None
    note: str = ""  # provenance shown in reports (e.g. "weights dequantized from a Q4_1 GGUF")


@dataclass
class CalibConfig:
    name: str = "mixed"  # every shipped traffic kind in equal shares: what the eval suites serve
    path: Optional[str] = None  # calib=file: a local .txt or .jsonl
    n_samples: int = 32
    seqlen: int = 256
    seed: int = 0


@dataclass
class ToolCallsConfig:
    """BFCL function calling (harness/eval/tool_calls.py). Defaults are the quick size."""
    # quick: parallel calls (references of 130-205 tokens) only in eval=full, where answers may be longer
    categories: list[str] = field(default_factory=lambda: ["simple", "multiple"])
    n_per_category: int = 2  # seeded sample (seed = cfg.seed); <= 0 means all (400 / 200 / 200)
    max_new_tokens: int = 96  # the simple and multiple references of the quick sample are 41-96 tokens


@dataclass
class SandboxConfig:
    """Limits for running model-written code (harness/eval/sandbox.py)."""
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024  # address space
    max_processes: int = 64
    max_file_mb: int = 16
    max_open_files: int = 64


@dataclass
class CodeSuiteConfig:
    """HumanEval (harness/eval/code.py). Defaults are the quick size; eval=full runs all problems."""
    n_problems: int = 4  # the first N of 164; <= 0 means all
    max_new_tokens: int = 256  # canonical solutions run to 220 tokens
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)


@dataclass
class JsonSuiteConfig:
    """Schema-constrained JSON answers (harness/eval/json_format.py). Defaults are the quick size."""
    n_prompts: int = 4  # the first N shipped prompts; <= 0 means all
    max_new_tokens: int = 160  # the expected objects are 36-103 tokens written compactly


@dataclass
class MultilingualConfig:
    """Perplexity + fidelity per language (harness/eval/multilingual.py). Defaults are the quick size."""
    languages: list[str] = field(default_factory=list)  # empty = every shipped language
    seqlen: int = 256
    max_windows: int = 2  # per language; <= 0 means all
    batch_size: int = 4


@dataclass
class LongContextConfig:
    """Perplexity by context length and needle retrieval (harness/eval/long_context.py). Quick size."""
    max_length: int = 1024  # largest bucket (512, 1024, ...); <= 0 means the model's limit
    tail: int = 256  # predicted tokens per target chunk
    n_targets: int = 2  # scored chunks per bucket (the same chunks in every bucket)
    needle_depths: list[float] = field(default_factory=lambda: [0.5])  # empty = no needles
    needle_repeats: int = 1  # needle prompts per (length, depth)
    needle_max_new_tokens: int = 24  # SmolLM2 restates the question before the number; digits are one token each
    needle_batch_size: int = 2
    batch_size: int = 1


@dataclass
class LmEvalConfig:
    """lm-evaluation-harness on the in-memory model (harness/eval/lm_eval_adapter.py)."""
    batch_size: int = 4
    max_length: int = 0  # 0 = lm-eval's default
    num_fewshot: Optional[int] = None
    limit: int = 0  # documents per task; <= 0 means all
    bootstrap_iters: int = 1000


@dataclass
class EvalConfig:
    name: str = "quick"
    suites: list[str] = field(default_factory=lambda: ["perplexity"])
    texts: list[str] = field(default_factory=list)  # empty = every shipped eval text
    seqlen: int = 512
    max_windows: int = 40  # per text; <= 0 means all windows
    batch_size: int = 4
    gen_batch_size: int = 16  # prompts per greedy-decoding batch (generation suites); finished rows leave it
    fidelity_top_k: int = 64  # FP log-probs cached per answer token for KL to FP (harness/eval/fidelity.py)
    code: CodeSuiteConfig = field(default_factory=CodeSuiteConfig)
    json: JsonSuiteConfig = field(default_factory=JsonSuiteConfig)
    tool_calls: ToolCallsConfig = field(default_factory=ToolCallsConfig)
    multilingual: MultilingualConfig = field(default_factory=MultilingualConfig)
    long_context: LongContextConfig = field(default_factory=LongContextConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    tasks: list[str] = field(default_factory=lambda: ["qh_everyday_mc"])  # eval=lm_eval: lm-eval task names (shipped: qh_everyday_mc)


@dataclass
class ExportConfig:
    dir: Optional[str] = None  # write a packed 4-bit grouped checkpoint here after quantizing
    format: str = "awq"  # awq (AWQ-GEMM layout) | gptq (GPTQ v1 layout, desc_act=false)
    dtype: str = "fp16"  # the unquantized tensors (embedding, norms, FP head): fp16 | bf16 | fp32


@dataclass
class ExperimentConfig:
    """A study (harness/experiments/): many variants evaluated on one loaded model."""
    name: str = ""
    eval_texts: list[str] = field(default_factory=list)  # shipped eval texts by name (e.g. prose_en); empty = eval.texts


@dataclass
class SalienceConfig(ExperimentConfig):
    """+experiment=salience (harness/experiments/salience.py): keep a fraction of every decoder
    Linear's input channels in full precision, round the rest to nearest (method.bits/group_size)."""
    name: str = "salience"
    selectors: list[str] = field(default_factory=lambda: ["activation", "weight", "random"])
    fractions: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.03])


@dataclass
class CalibMatrixConfig(ExperimentConfig):
    """+experiment=calib_matrix (harness/experiments/calib_matrix.py): each method calibrated on each
    shipped set (calib.n_samples windows), plus a sweep of window counts drawn from calib.name."""
    name: str = "calib_matrix"
    methods: list[str] = field(default_factory=lambda: ["awq", "gptq"])
    calib_sets: list[str] = field(default_factory=list)  # empty = every shipped set
    sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])


@dataclass
class SanityConfig:
    """The guard every quantized model passes before its numbers are reported (harness/sanity.py)."""
    enabled: bool = True
    max_ppl_ratio: float = 10.0  # fail when a variant's perplexity exceeds this multiple of FP's (probe or any suite)
    fp_max_vs_uniform: float = 2.0  # fail when FP's probe perplexity exceeds this multiple of the vocabulary size
    # windows of the first perplexity text scored after quantizing: one window tells broken weights
    # (10x FP and more) from working ones; the suites' own perplexities are checked afterwards anyway
    probe_windows: int = 1


@dataclass
class HarnessConfig:
    model: Any = None
    method: Any = None
    calib: Any = None
    eval: Any = None
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0
    cache_dir: str = "results/cache"
    store_dir: str = "results/store"  # every run also appends its rows here (harness/store.py)
    resume: bool = True  # in a --multirun, skip configs whose config_hash already has rows in store_dir
    reference: bool = True  # also report the FP reference rows (cached) next to a quantized method
    sanity: SanityConfig = field(default_factory=SanityConfig)
    experiment: Any = None  # a study preset (+experiment=salience|calib_matrix) fills this in
    # several variants in one session: method names or presets, e.g. variants=[fp,rtn,awq,gptq]
    # (method.* overrides apply to each); empty = the one variant `method` names
    variants: list[str] = field(default_factory=list)


@dataclass
class RegressConfig:
    """`python -m harness.regress` tolerances: when a current metric counts as a regression."""
    ppl_rel_tol: float = 0.01  # lower-is-better metrics (ppl, nll, kl): relative increase allowed
    score_stderr_tol: float = 2.0  # other metrics: drop allowed, in combined standard errors
    fail_on_missing: bool = True  # a baseline metric absent from the current results fails


@dataclass
class DecisionConfig:
    """How `python -m harness.report` recommends a variant."""
    ppl_rel_tol: float = 0.02  # "within tolerance": perplexity-like metric at most 2% above FP
    score_abs_tol: float = 0.02  # ... or a score at most 0.02 (2 points of a rate) below FP
    confidence: float = 0.95  # bootstrap interval for "no significant difference"
    n_boot: int = 2000
    seed: int = 0
    # deployment constraints that remove candidates (harness/runtimes.py holds what each runtime loads)
    max_weight_mb: Optional[float] = None  # memory budget for the weights, MB (1e6 bytes); None: no limit
    runtime: str = "any"  # any | vllm | transformers: only variants that runtime can load


def schema_nodes() -> dict[str, dict[str, object]]:
    """Hydra's schema node per group and choice, derived from the registries (never a second list):
    every registered method with its own config defaults, every calibration set, every study."""
    import methods
    from harness import calib

    return {
        "model": {"model": ModelConfig},
        "method": {name: methods.entry(name).default_config() for name in methods.available()},
        "calib": {name: CalibConfig(name=name) for name in calib.CHOICES},
        "eval": {"eval": EvalConfig},
        "experiment": {"salience": SalienceConfig, "calib_matrix": CalibMatrixConfig},
    }


# groups whose choices are the registries themselves: `method=awq` needs no preset file
REGISTRY_GROUPS = ("method", "calib")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="harness_schema", node=HarnessConfig)
    for group, nodes in schema_nodes().items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
            if group in REGISTRY_GROUPS:
                cs.store(group=group, name=name, node=node)
