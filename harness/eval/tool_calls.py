"""Function calling on a fixed, seeded subset of BFCL (simple, multiple and parallel categories).

Data: the question, the tool definitions and the ``possible_answer`` ground truth as shipped in the
``bfcl-eval`` package (Apache-2.0). Only the data files are read; the package itself is never
imported (its imports pull in model SDKs we do not need).

Protocol: the tools go through the tokenizer's chat template (``tools=``), the model answers greedily,
and the answer is parsed into calls from ``<tool_call>`` tags, JSON objects or Python call syntax.
A call list matches by BFCL's AST rules (see :func:`match_calls`). Fidelity rows use the correct call
written as ``<tool_call>`` JSON as the reference answer.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.eval import SuiteOutput
from harness.eval.fidelity import metric_row
from harness.eval.generation import render_chat
from harness.eval.generation_suite import GenerationJob, evaluate_generation
from harness.eval.views import GenerationSettings, generation_settings, view

CATEGORIES = {  # category -> data file stem in bfcl_eval/data and bfcl_eval/data/possible_answer
    "simple": "BFCL_v4_simple_python",
    "multiple": "BFCL_v4_multiple",
    "parallel": "BFCL_v4_parallel",
}
INSTALL_HINT = "pip install --no-deps bfcl-eval"


@dataclass
class Problem:
    id: str
    category: str
    messages: list  # chat turns of the (single-turn) question
    functions: list  # BFCL function descriptions
    ground_truth: list  # [{name: {param: [allowed values]}}], one entry per expected call


# ---------------------------------------------------------------- data

def bfcl_data_dir() -> Path:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"the tool_calls suite needs the BFCL data package; run: {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not d.is_dir():
        raise HarnessError(f"bfcl-eval is installed but has no data directory ({d}); reinstall: {INSTALL_HINT}")
    return d


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise HarnessError(f"BFCL data file missing: {path}; reinstall: {INSTALL_HINT}")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(categories, n_per_category: int, seed: int, data_dir: Path | None = None) -> list[Problem]:
    """``n_per_category`` problems of each category, drawn with ``random.Random(seed)`` (<= 0: all)."""
    d = data_dir or bfcl_data_dir()
    bad = [c for c in categories if c not in CATEGORIES]
    if bad or not categories:
        raise HarnessError(f"unknown tool_calls category {bad[0] if bad else '(none)'!r}; choose from: {', '.join(CATEGORIES)}")
    out = []
    for cat in categories:
        stem = CATEGORIES[cat]
        answers = {r["id"]: r["ground_truth"] for r in _read_jsonl(d / "possible_answer" / f"{stem}.json")}
        rows = [r for r in _read_jsonl(d / f"{stem}.json") if r["id"] in answers]
        if 0 < n_per_category < len(rows):
            rows = sorted(random.Random(f"{seed}:{cat}").sample(rows, n_per_category), key=lambda r: _id_key(r["id"]))
        out += [Problem(r["id"], cat, r["question"][0], r["function"], answers[r["id"]]) for r in rows]
    return out


def _id_key(pid: str):
    head, _, num = pid.rpartition("_")
    return (head, int(num)) if num.isdigit() else (pid, 0)


_JSON_SCHEMA_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}


def to_json_schema(node):
    """BFCL's parameter types ("dict", "float", "tuple", "any") renamed to JSON Schema's."""
    if isinstance(node, dict):
        out = {k: to_json_schema(v) for k, v in node.items()}
        if isinstance(node.get("type"), str):
            out["type"] = _JSON_SCHEMA_TYPES.get(node["type"], node["type"])
        return out
    if isinstance(node, list):
        return [to_json_schema(v) for v in node]
    return node


def chat_tools(functions: list) -> list[dict]:
    """BFCL function descriptions as the OpenAI-style tool list that chat templates expect."""
    return [{"type": "function", "function": {"name": f["name"], "description": f.get("description", ""),
                                              "parameters": to_json_schema(f["parameters"])}} for f in functions]


def _first_allowed(allowed: list):
    return next(a for a in allowed if a != "")


def _concrete(value):
    """A ground-truth value with the allowed-value lists inside dicts resolved to their first entry."""
    if isinstance(value, dict):
        return {k: _concrete(_first_allowed(v)) for k, v in value.items() if any(a != "" for a in v)}
    if isinstance(value, list):
        return [_concrete(v) if isinstance(v, dict) else v for v in value]
    return value


def reference_answer(problem: Problem) -> str:
    """The correct call(s) as ``<tool_call>`` JSON: each parameter's first allowed value; a parameter
    that may be omitted ("" listed first) and is not required is left out."""
    blocks = []
    for call in problem.ground_truth:
        (name, params), = call.items()
        required = set(_describe(problem.functions, name)["parameters"].get("required", []))
        args = {k: _concrete(_first_allowed(v)) for k, v in params.items()
                if v and (v[0] != "" or k in required) and any(a != "" for a in v)}
        blocks.append("<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>")
    return "\n".join(blocks)


# ---------------------------------------------------------------- parsing

_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")


def _as_calls(obj) -> list[dict] | None:
    """Accept {"name", "arguments"|"parameters"}, {name: {args}} or a list of those."""
    if isinstance(obj, list):
        calls = [c for o in obj for c in (_as_calls(o) or [])]
        return calls or None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("name"), str):
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if isinstance(args, dict) and "properties" in args and args.get("type") in ("object", "dict"):
            return None  # the tool's own definition echoed back, not a call
        return [{obj["name"]: args}] if isinstance(args, dict) else None
    if isinstance(obj.get("function"), dict):
        return _as_calls(obj["function"])
    if isinstance(obj.get("tool_calls"), list):
        return _as_calls(obj["tool_calls"])
    if len(obj) == 1:
        (name, args), = obj.items()
        if isinstance(args, dict):
            return [{name: args}]
    return None


def _json_values(text: str):
    """Every top-level JSON object or array in ``text``, left to right."""
    dec = json.JSONDecoder()
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                obj, end = dec.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            yield obj
            i = end
        else:
            i += 1


def _ast_value(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node)  # a variable or expression: BFCL compares it as its source text


def _call_name(func) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([func.id, *reversed(parts)])


def _python_calls(text: str) -> list[dict] | None:
    """``f(a=1)``, ``[f(a=1), g(b=2)]`` or one call per line; keyword arguments only, as BFCL asks."""
    for candidate in (text, *text.splitlines()):
        candidate = candidate.strip()
        if not candidate or "(" not in candidate:
            continue
        try:
            tree = ast.parse(candidate, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        body = tree.body
        nodes = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
        calls = []
        for node in nodes:
            name = _call_name(node.func) if isinstance(node, ast.Call) else None
            if name is None or node.args:
                calls = []
                break
            calls.append({name: {kw.arg: _ast_value(kw.value) for kw in node.keywords if kw.arg}})
        if calls:
            return calls
    return None


def parse_calls(text: str) -> list[dict] | None:
    """The calls in a model answer as ``[{name: {param: value}}]``, or None when none can be read."""
    tagged = _TAG.findall(text)
    if tagged:
        calls = [c for block in tagged for obj in _json_values(block) for c in (_as_calls(obj) or [])]
        if not calls:  # e.g. SmolLM2's own convention: <tool_call>[f(a=1)]</tool_call>
            calls = [c for block in tagged for c in (_python_calls(block) or [])]
        if calls:
            return calls
    plain = _FENCE.sub("", text)
    for obj in _json_values(plain):
        calls = _as_calls(obj)
        if calls:
            return calls
    return _python_calls(plain)


# ---------------------------------------------------------------- BFCL AST matching

PYTHON_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
                "dict": dict, "any": str}
_STRIP = re.compile(r"[ ,./\-_*^]")


def normalize_string(s: str) -> str:
    """BFCL's string standardisation: drop spaces and ,./-_*^, lower-case, single quotes to double."""
    return _STRIP.sub("", s).lower().replace("'", '"')


def _norm(v):
    return normalize_string(v) if isinstance(v, str) else v


def _answer_type(allowed: list):
    return next((type(a) for a in allowed if a != ""), None)


def _type_ok(value, expected: type, item_type: type | None, allowed: list) -> tuple[bool, bool]:
    """(valid, is_variable). A value of the ground truth's own type (e.g. a variable name written as a
    string where a number is declared) is accepted as a variable, as BFCL does. A list's items must
    have the declared item type (or the type of that alternative's items; ints are not floats here)
    for some alternative; an alternative that is not a list ("" for optional) bounds no item. A list
    that fails the item check is rejected, as BFCL's ``type_checker`` does."""
    answer_type = _answer_type(allowed)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if item_type is None:
            return True, is_variable
        for alt in allowed:
            if not isinstance(alt, list):
                return True, is_variable
            alt_type = _answer_type(alt)
            if all(type(v) is item_type or (alt_type is not None and type(v) is alt_type) for v in value):
                return True, is_variable
        return False, False
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, False


def _dict_ok(value: dict, alternatives: list) -> bool:
    for alt in alternatives:
        if alt == "" or not isinstance(alt, dict):
            continue
        if all(k in alt and _norm(v) in [_norm(a) for a in alt[k]] for k, v in value.items()) and \
                all(k in value or "" in allowed for k, allowed in alt.items()):
            return True
    return False


def _value_ok(value, expected: type, item_type, allowed: list) -> bool:
    """BFCL's value checks. A list alternative that is a string is compared item by character, as
    BFCL's ``list_checker`` does: so "" (optional) matches an empty list, here and for lists of dicts."""
    if expected is dict:
        return _dict_ok(value, allowed)
    if expected is list and item_type is dict:
        return any(isinstance(alt, (list, str)) and len(alt) == len(value) and all(_dict_ok(v, [a]) for v, a in zip(value, alt))
                   for alt in allowed)
    if expected is str:
        return normalize_string(value) in [normalize_string(a) for a in allowed if isinstance(a, str)]
    if expected is list:
        return [_norm(v) for v in value] in [[_norm(a) for a in alt] for alt in allowed if isinstance(alt, (list, str))]
    return value in allowed


def match_call(func: dict, call: dict, expected: dict) -> str | None:
    """None when ``call`` ({name: args}) satisfies ``expected`` ({name: {param: allowed}}) under the
    description ``func``; otherwise the reason it fails."""
    (name, args), = call.items()
    (want_name, allowed_by_param), = expected.items()
    if name != want_name and name != want_name.replace(".", "_"):  # some templates forbid "." in names
        return f"wrong function name {name!r} (expected {want_name!r})"
    if not isinstance(args, dict):
        return "arguments are not a mapping"
    props = func["parameters"].get("properties", {})
    for p in func["parameters"].get("required", []):
        if p not in args:
            return f"missing required argument {p!r}"
    for p, value in args.items():
        if p not in props or p not in allowed_by_param:
            return f"unexpected argument {p!r}"
        decl = props[p]
        expected_type = PYTHON_TYPES.get(decl.get("type"), str)
        item_type = PYTHON_TYPES.get(decl.get("items", {}).get("type")) if decl.get("type") in ("array", "tuple") else None
        if isinstance(value, tuple) and decl.get("type") == "tuple":  # only there, as BFCL: a tuple is no "array"
            value = list(value)
        if expected_type is float and type(value) is int:  # Python's implicit int -> float, as BFCL allows
            value = float(value)
        allowed = allowed_by_param[p]
        valid, is_variable = _type_ok(value, expected_type, item_type, allowed)
        if not valid:
            return f"argument {p!r} has type {type(value).__name__}, expected {decl.get('type')}"
        ok = value in allowed if is_variable else _value_ok(value, expected_type, item_type, allowed)
        if not ok:
            return f"argument {p!r}={value!r} is not one of {allowed!r}"
    for p, allowed in allowed_by_param.items():
        if p not in args and "" not in allowed:
            return f"missing argument {p!r}"
    return None


def _describe(functions: list, name: str) -> dict | None:
    return next((f for f in functions if f["name"] == name), None)


def match_calls(functions: list, calls: list[dict] | None, ground_truth: list[dict]) -> str | None:
    """BFCL's AST check of a parsed answer: the same number of calls as expected, and every expected
    call matched by a distinct model call (any order; for each expected call the first unmatched call
    that satisfies it, as BFCL's no-order checker does). None means a match; otherwise the reason."""
    if not calls:
        return "no call could be parsed"
    if len(calls) != len(ground_truth):
        return f"{len(calls)} calls, expected {len(ground_truth)}"
    used: set[int] = set()
    for expected in ground_truth:
        func = _describe(functions, next(iter(expected)))
        if func is None:
            raise HarnessError(f"BFCL ground truth names a function missing from its descriptions: {next(iter(expected))}")
        reasons = []
        for i, call in enumerate(calls):
            if i in used:
                continue
            why = match_call(func, call, expected)
            if why is None:
                used.add(i)
                break
            reasons.append(why)
        else:
            return reasons[0] if len(reasons) == 1 else f"no call matches {next(iter(expected))!r} ({reasons[0]})"
    return None



# ---------------------------------------------------------------- suite

TOOL_SYSTEM_PROMPT = (
    "You are a function-calling assistant. You can call these functions:\n<tools>\n{tools}\n</tools>\n"
    "To call functions, reply only with one <tool_call></tool_call> block per call, each holding a JSON object "
    '{{"name": <function name>, "arguments": {{<argument name>: <value>, ...}}}}.'
)


def tool_prompt(tok, messages: list, functions: list) -> str:
    """The rendered prompt with the tools passed through the chat template's ``tools=``. A template
    that ignores ``tools`` (SmolLM2's, for one) renders the same text as without them; then the tools
    go into a system message in the Hermes ``<tool_call>`` convention, so the model sees them anyway."""
    tools = chat_tools(functions)
    with_tools = render_chat(tok, messages, tools=tools)
    if with_tools != render_chat(tok, messages):
        return with_tools
    system = TOOL_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools))
    return render_chat(tok, [{"role": "system", "content": system}, *messages])


@dataclass
class ToolCallData:
    problems: list[Problem]
    prompts: list[str]
    references: list[str]


def match_rows(problems: list[Problem], answers: list[str]) -> list[dict]:
    """``ast_match`` per category and over all problems, and the share of answers with a readable call."""
    parsed = [parse_calls(a) for a in answers]
    hits = [match_calls(p.functions, calls, p.ground_truth) is None for p, calls in zip(problems, parsed)]
    rows = []
    for cat in dict.fromkeys(p.category for p in problems):
        rows.append(metric_row(cat, "ast_match", [float(h) for h, p in zip(hits, problems) if p.category == cat],
                               binary=True))
    rows.append(metric_row("all", "ast_match", [float(h) for h in hits], binary=True))
    rows.append(metric_row("all", "parse_rate", [float(calls is not None) for calls in parsed], binary=True))
    return rows


@dataclass
class ToolCallsSettings:
    categories: list[str]
    n_per_category: int  # <= 0 means all
    max_new_tokens: int
    seed: int  # the run's seed: which problems are drawn
    generation: GenerationSettings


class ToolCallsSuite:
    name = "tool_calls"

    def check_installed(self) -> None:
        bfcl_data_dir()

    def settings(self, cfg) -> ToolCallsSettings:
        return view(ToolCallsSettings, cfg.eval.tool_calls, seed=cfg.seed, generation=generation_settings(cfg))

    def prepare(self, tok, s: ToolCallsSettings) -> ToolCallData:
        problems = load_problems(s.categories, s.n_per_category, s.seed)
        return ToolCallData(problems, [tool_prompt(tok, p.messages, p.functions) for p in problems],
                            [reference_answer(p) for p in problems])

    def evaluate(self, model, tok, data: ToolCallData, s: ToolCallsSettings, reference=None) -> SuiteOutput:
        job = GenerationJob("all", data.prompts, data.references, s.max_new_tokens, desc="tool calls")
        return evaluate_generation(model, tok, job, lambda answers: match_rows(data.problems, answers), s.generation,
                                   reference, outputs_key="answers")


SUITE = ToolCallsSuite()
