"""HumanEval suite: data, prompt shape, code extraction and sandboxed checking."""
import os
import shutil
import uuid

import pytest

from harness.config import SandboxConfig
from harness.errors import HarnessError
from harness.eval.code import (FENCE, build_prompt, checked_program, extract_program, load_problems, pass_rows,
                               reference_answer)
from harness.eval.sandbox import isolation_level, run_python

CFG = SandboxConfig()


@pytest.fixture(scope="module")
def problems():
    return load_problems(0)


def passes(problem, completion):
    return run_python(checked_program(problem, extract_program(problem, completion)), CFG).passed


def test_loads_all_164(problems):
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert [p.task_id for p in load_problems(3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_too_many_problems_is_a_user_error():
    with pytest.raises(HarnessError, match="n_problems=200 but HumanEval has 164"):
        load_problems(200)


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    for p in problems[:6]:
        assert passes(p, reference_answer(p)), p.task_id  # the full function, as the model should write it
        assert passes(p, p.canonical_solution), p.task_id  # a bare body
    p = problems[2]  # truncate_number
    assert not passes(p, "def truncate_number(number: float) -> float:\n    return number // 1.0\n")
    assert not passes(p, "")  # the stub alone returns None


def test_extract_program_shapes(problems):
    p = problems[2]
    body = "    return number % 1.0\n"
    full = "def truncate_number(number: float) -> float:\n    return number % 1.0\n"
    for reply in (body, full, "return number % 1.0\n", "```python\n" + full + "```\nThis works because...",
                  full + "\n\nExplanation follows"):
        assert passes(p, reply), reply
    # the stub's imports stay available to a restated function
    p0 = problems[0]
    restated = ("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n")
    assert passes(p0, restated)


def test_prompt_is_prefilled_with_a_fence(problems, smol_tokenizer):
    text = build_prompt(smol_tokenizer, problems[0])
    assert text.endswith("<|im_start|>assistant\n" + FENCE)
    assert problems[0].prompt in text


def test_pass_rows_record_the_sandbox_level(problems, capsys):
    rows = pass_rows(problems[:2], [reference_answer(p) for p in problems[:2]], CFG)
    assert [(r["metric"], r["value"], r["n"], r["sandbox"]) for r in rows] == [("pass@1", 1.0, 2, isolation_level())]
    assert f"in the {isolation_level()} sandbox" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_completion_writing_tmp_is_judged_by_its_asserts_alone(problems):
    """A scratch file in /tmp is no crime (the sandbox's own /tmp takes it), but it must not reach the
    host; pass or fail is the tests' verdict."""
    p = problems[2]  # truncate_number
    scratch = f"/tmp/qh-humaneval-{uuid.uuid4().hex}"

    def body(op: str) -> str:
        return f"    with open({scratch!r}, 'w') as f:\n        f.write(repr(number))\n    return number {op} 1.0\n"

    assert passes(p, body("%"))
    assert not passes(p, body("//"))
    assert not os.path.exists(scratch)
