"""Agreement of our tool_calls AST scorer (``harness.eval.tool_calls.match_calls``) with bfcl-eval's
own ``ast_checker`` on seeded cases built from BFCL's simple / multiple / parallel data.

Not part of CI: bfcl-eval's own dependencies (numpy 1.x, model SDKs, torch via sentence-transformers)
do not fit the project venv, where bfcl-eval is installed with ``--no-deps`` for its data files only.
So the script runs in two venvs, in two modes:

``generate`` (project venv; imports ``harness``)
    builds the cases and scores them with our scorer, writing one JSON line per case: the
    function descriptions, the ground truth, the calls (already parsed: ``[{name: {arg: value}}]``,
    the form both scorers take), our verdict and our reason.
``check`` (bfcl venv; stdlib + ``bfcl_eval`` only, never imports ``harness``)
    scores the same calls with ``bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker``
    (``Language.PYTHON``), prints category x kind with n and agreement, and lists every disagreement
    with both scorers' reasons.

Case kinds, per category (counts are options; each case draws its problem with ``random.Random``
seeded by ``--seed``, category and kind):

- ``correct``: a ground-truth possible answer as calls: for each parameter a randomly chosen allowed
  value (inside dicts too), an optional parameter (``""`` allowed, not required) left out half the
  time, parallel calls shuffled.
- ``wrong_value``: one argument of one call changed to a value of the same type that is not allowed
  (number + 1 or x 2, a string with a word prepended, a boolean flipped, a list with one item changed
  or appended, a dict with one value changed).
- ``missing_required``: one required argument of one call dropped.
- ``wrong_name``: one call's function name changed (in ``multiple``, to another function offered in
  the same problem, with the same arguments; elsewhere the name with ``_v2`` appended).
- ``wrong_type``: one argument of one call given another type (number -> its string, string -> an
  integer, boolean -> "true"/"false", list -> its items joined into a string, dict -> its JSON text).
- ``wrong_item_type``: in a problem with a list argument of scalars, one item of it given another
  type: an integral float written as an int (``[1, 3]`` for ``[1.0, 3.0]``, as JSON output often has
  it) where there is one, else an int as its string or a string as an integer.
- ``underscored_name``: a correct answer of a problem whose function names contain ".", with every
  "." written as "_" (some chat templates forbid "." in names). BFCL accepts this only for models whose
  config sets ``underscore_to_dot`` (OpenAI-style models), so these cases are checked as model
  ``--bfcl-underscore-model``; every other case as ``--bfcl-model``, a model that keeps names as they
  are. Our scorer accepts both spellings.

Commands (from the repository root)::

    python3.11 -m venv /tmp/bfcl-venv
    /tmp/bfcl-venv/bin/pip install bfcl-eval==2026.3.23          # with its full dependencies
    .venv/bin/python -m harness.tools.bfcl_agreement generate --out /tmp/bfcl_cases.jsonl
    /tmp/bfcl-venv/bin/python harness/tools/bfcl_agreement.py check /tmp/bfcl_cases.jsonl

or both steps at once (``run`` = ``generate``, then ``check`` in the other venv through a subprocess)::

    .venv/bin/python -m harness.tools.bfcl_agreement run --bfcl-python /tmp/bfcl-venv/bin/python

``check`` exits 1 when any case disagrees, 0 otherwise.

Known differences, by design, that the default cases do not exercise: our scorer accepts "." or "_"
in each call's name independently, BFCL one spelling per model config, so one answer that mixes the
two spellings is valid for us and for neither BFCL config. Both scorers assign parallel calls
greedily (each expected call takes the first unmatched call that satisfies it), so an answer whose
calls omit optional arguments can be rejected by both although a matching order exists.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

KINDS = ("correct", "wrong_value", "missing_required", "wrong_name", "wrong_type", "wrong_item_type", "underscored_name")
CATEGORY_NAMES = ("simple", "multiple", "parallel")
BFCL_TEST_CATEGORY = {"simple": "simple_python", "multiple": "multiple", "parallel": "parallel"}
DEFAULT_COUNTS = {"correct": 35, "wrong_value": 15, "missing_required": 15, "wrong_name": 15, "wrong_type": 15,
                  "wrong_item_type": 10, "underscored_name": 6}  # per category: 111 x 3 = 333 cases


class NotApplicable(Exception):
    """The mutation cannot be applied to this problem (e.g. no required argument to drop)."""


# ---------------------------------------------------------------- case generation (our side)

def _pick(rng: random.Random, allowed: list):
    return rng.choice([a for a in allowed if a != ""])


def _concrete_value(rng: random.Random, decl: dict, chosen):
    """A chosen allowed value made concrete: dicts hold {key: [allowed]} in BFCL's ground truth."""
    if isinstance(chosen, dict):
        return _concrete_dict(rng, chosen)
    if isinstance(chosen, list) and chosen and all(isinstance(v, dict) for v in chosen):
        return [_concrete_dict(rng, d) for d in chosen]
    return copy.deepcopy(chosen)


def _concrete_dict(rng: random.Random, alt: dict) -> dict:
    out = {}
    for k, allowed in alt.items():
        values = [a for a in allowed if a != ""]
        if not values or ("" in allowed and rng.random() < 0.5):
            continue
        out[k] = copy.deepcopy(rng.choice(values))
    return out


def possible_call(rng: random.Random, func: dict, expected: dict) -> dict:
    """One call that the ground truth ``expected`` ({name: {param: allowed}}) allows."""
    (name, allowed_by_param), = expected.items()
    required = set(func["parameters"].get("required", []))
    props = func["parameters"].get("properties", {})
    args = {}
    for p, allowed in allowed_by_param.items():
        has_value = any(a != "" for a in allowed)
        if "" in allowed and p not in required and (not has_value or rng.random() < 0.5):
            continue
        if not has_value:
            raise NotApplicable(f"required parameter {p!r} has no allowed value")
        args[p] = _concrete_value(rng, props.get(p, {}), _pick(rng, allowed))
    return {name: args}


def possible_calls(rng: random.Random, problem) -> list[dict]:
    calls = [possible_call(rng, _describe(problem.functions, next(iter(gt))), gt) for gt in problem.ground_truth]
    rng.shuffle(calls)
    return calls


def _describe(functions: list, name: str) -> dict:
    return next(f for f in functions if f["name"] == name)


def _norm(v):
    from harness.eval.tool_calls import normalize_string
    return normalize_string(v) if isinstance(v, str) else v


def _changed(rng: random.Random, value, allowed: list):
    """A value of the same type as ``value`` that is none of ``allowed`` (compared as BFCL does)."""
    def is_allowed(v):
        if isinstance(v, str):
            return _norm(v) in [_norm(a) for a in allowed if isinstance(a, str)]
        if isinstance(v, list):
            return [_norm(x) for x in v] in [[_norm(x) for x in a] for a in allowed if isinstance(a, list)]
        return v in allowed

    if isinstance(value, bool):
        candidates = [not value]
    elif isinstance(value, int):
        candidates = [value + 1, value * 2 + 3, -value - 7]
    elif isinstance(value, float):
        candidates = [value + 1.0, value * 2 + 0.5, -value - 7.25]
    elif isinstance(value, str):
        candidates = [f"wrong {value}", f"{value} extra", "zzz unrelated"]
    elif isinstance(value, list):
        if value and not isinstance(value[0], dict):
            i = rng.randrange(len(value))
            candidates = [value[:i] + [_changed(rng, value[i], [])] + value[i + 1:], value + [value[0]], value[1:]]
        elif value:
            candidates = [value[:-1] + [_changed(rng, value[-1], [])], value[1:]]
        else:
            candidates = [["zzz"]]
    elif isinstance(value, dict):
        if not value:
            raise NotApplicable("empty dict argument")
        k = rng.choice(sorted(value))
        candidates = [{**value, k: _changed(rng, value[k], [])}]
    else:
        raise NotApplicable(f"cannot change a {type(value).__name__}")
    for c in candidates:
        if not is_allowed(c):
            return c
    raise NotApplicable("every candidate value is allowed")


def _item_retyped(rng: random.Random, value):
    """A list of scalars with one item given another type: an integral float as an int (JSON ``3``
    for ``3.0``), any other item as :func:`_retyped` does."""
    scalar = [i for i, v in enumerate(value) if isinstance(v, (str, int, float))] if isinstance(value, list) else []
    if not scalar or len(scalar) != len(value):
        raise NotApplicable("not a list of scalars")
    i = rng.choice(scalar)
    item = value[i]
    new = int(item) if type(item) is float and item.is_integer() else _retyped(item)
    return value[:i] + [new] + value[i + 1:]


def _retyped(value):
    """``value`` given another JSON type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 42
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    raise NotApplicable(f"cannot retype a {type(value).__name__}")


def mutate(rng: random.Random, kind: str, problem, calls: list[dict]) -> tuple[list[dict], str]:
    """``calls`` (a correct answer of ``problem``) turned wrong in the way ``kind`` names; returns the
    mutated calls and a one-line description of the change."""
    calls = copy.deepcopy(calls)
    order = list(range(len(calls)))
    rng.shuffle(order)
    for i in order:  # the first call (in random order) that the mutation applies to
        (name, args), = calls[i].items()
        func = _describe(problem.functions, name)
        if kind == "wrong_name":
            others = [f["name"] for f in problem.functions if f["name"] != name]
            new = rng.choice(others) if problem.category == "multiple" and others else name + "_v2"
            calls[i] = {new: args}
            return calls, f"call {name!r} renamed to {new!r}"
        if kind == "underscored_name":  # every call, as a model whose template forbids "." writes them
            if not any("." in next(iter(c)) for c in calls):
                break
            calls = [{n.replace(".", "_"): a} for c in calls for n, a in c.items()]
            return calls, "every '.' in function names written as '_'"
        if kind == "missing_required":
            present = [p for p in func["parameters"].get("required", []) if p in args]
            if not present:
                continue
            p = rng.choice(present)
            del args[p]
            return calls, f"{name}: required {p!r} dropped"
        if kind == "wrong_item_type":  # prefer a float list with integral items: JSON ints for floats
            lists = [p for p in sorted(args) if isinstance(args[p], list) and args[p]
                     and all(isinstance(v, (str, int, float)) for v in args[p])]
            if not lists:
                continue
            integral = [p for p in lists if any(type(v) is float and v.is_integer() for v in args[p])]
            p = rng.choice(integral or lists)
            old, args[p] = args[p], _item_retyped(rng, args[p])
            return calls, f"{name}: {p} {old!r} -> {args[p]!r}"
        if not args:
            continue
        p = rng.choice(sorted(args))
        try:
            if kind == "wrong_value":
                allowed = _allowed_for(problem, name, p, args)
                new = _changed(rng, args[p], allowed)
            elif kind == "wrong_type":
                new = _retyped(args[p])
            else:
                raise ValueError(f"unknown mutation {kind!r}")
        except NotApplicable:
            continue
        old, args[p] = args[p], new
        return calls, f"{name}: {p} {old!r} -> {new!r}"
    raise NotApplicable(f"{kind} does not apply to {problem.id}")


def _allowed_for(problem, name: str, p: str, args: dict) -> list:
    """Every value allowed for ``p`` by any ground-truth call of ``name`` (so that a changed value in
    a parallel answer cannot land on a sibling call's value by accident)."""
    out = []
    for g in problem.ground_truth:
        if next(iter(g)) == name:
            out += g[name].get(p, [])
    return out


def generate(counts: dict, seed: int) -> list[dict]:
    from harness.eval.tool_calls import load_problems, match_calls

    cases = []
    for cat in CATEGORY_NAMES:
        problems = load_problems([cat], 0, seed)
        for kind in KINDS:
            rng = random.Random(f"{seed}:{cat}:{kind}")
            pool = problems[:]
            rng.shuffle(pool)
            made = 0
            for problem in pool:
                if made == counts[kind]:
                    break
                try:
                    calls = possible_calls(rng, problem)
                    if kind == "correct":
                        note = "a possible answer"
                    else:
                        calls, note = mutate(rng, kind, problem, calls)
                except NotApplicable:
                    continue
                why = match_calls(problem.functions, calls, problem.ground_truth)
                cases.append({"case": f"{cat}/{kind}/{made}", "category": cat, "kind": kind, "problem": problem.id,
                              "change": note, "functions": problem.functions, "ground_truth": problem.ground_truth,
                              "calls": calls, "ours": why is None, "ours_reason": why})
                made += 1
            if made < counts[kind]:
                raise SystemExit(f"only {made} {kind} cases could be built for {cat} (asked {counts[kind]})")
    return cases


def write_cases(cases: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- BFCL side (bfcl venv)

def bfcl_verdicts(cases: list[dict], model: str, underscore_model: str) -> None:
    """Adds ``bfcl`` (valid) and ``bfcl_reason`` to each case, from bfcl_eval's ast_checker."""
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    for m, want in ((model, False), (underscore_model, True)):
        got = MODEL_CONFIG_MAPPING[m].underscore_to_dot
        if got is not want:
            raise SystemExit(f"model {m!r} has underscore_to_dot={got}; pick one with {want}")
    for c in cases:
        m = underscore_model if c["kind"] == "underscored_name" else model
        # ast_checker looks the model up as model_name.replace("_", "/")
        res = ast_checker(c["functions"], c["calls"], c["ground_truth"], Language.PYTHON,
                          BFCL_TEST_CATEGORY[c["category"]], m.replace("/", "_"))
        c["bfcl"] = bool(res["valid"])
        c["bfcl_reason"] = None if res["valid"] else f"{res.get('error_type')}: {json.dumps(res.get('error'))[:300]}"


def table(cases: list[dict]) -> str:
    cells = defaultdict(lambda: [0, 0, 0, 0])  # n, agree, ours valid, bfcl valid
    for c in cases:
        for key in ((c["category"], c["kind"]), (c["category"], "all"), ("all", c["kind"]), ("all", "all")):
            cell = cells[key]
            cell[0] += 1
            cell[1] += c["ours"] == c["bfcl"]
            cell[2] += c["ours"]
            cell[3] += c["bfcl"]
    lines = ["| category | kind | n | agree | agreement | ours valid | bfcl valid |", "|---|---|---|---|---|---|---|"]
    for cat in (*CATEGORY_NAMES, "all"):
        for kind in (*KINDS, "all"):
            if (cat, kind) in cells:
                n, agree, ours, bfcl = cells[(cat, kind)]
                lines.append(f"| {cat} | {kind} | {n} | {agree} | {agree / n:.1%} | {ours} | {bfcl} |")
    return "\n".join(lines)


def check(path: Path, model: str, underscore_model: str, out: Path | None) -> int:
    cases = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    bfcl_verdicts(cases, model, underscore_model)
    print(table(cases))
    bad = [c for c in cases if c["ours"] != c["bfcl"]]
    print(f"\n{len(cases)} cases, {len(cases) - len(bad)} agree ({(len(cases) - len(bad)) / len(cases):.1%}); "
          f"{len(bad)} disagreements")
    for c in bad:
        print(f"\n- {c['case']} ({c['problem']}; {c['change']})\n  calls: {json.dumps(c['calls'])[:400]}\n"
              f"  ground truth: {json.dumps(c['ground_truth'])[:400]}\n"
              f"  ours: {'valid' if c['ours'] else c['ours_reason']}\n  bfcl: {'valid' if c['bfcl'] else c['bfcl_reason']}")
    if out:
        write_cases(cases, out)
    return 1 if bad else 0


# ---------------------------------------------------------------- CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    for mode in ("generate", "run"):
        p = sub.add_parser(mode)
        p.add_argument("--out", type=Path, default=Path("/tmp/bfcl_cases.jsonl"), help="cases + our verdicts (JSONL)")
        p.add_argument("--seed", type=int, default=0)
        for kind in KINDS:
            p.add_argument(f"--n-{kind.replace('_', '-')}", type=int, default=DEFAULT_COUNTS[kind],
                           help=f"{kind} cases per category (default {DEFAULT_COUNTS[kind]})")
    sub.choices["run"].add_argument("--bfcl-python", required=True, help="the python of a venv with full bfcl-eval")
    c = sub.add_parser("check")
    c.add_argument("cases", type=Path)
    c.add_argument("--scored-out", type=Path, help="also write the cases with bfcl's verdicts (JSONL)")
    for p in (c, sub.choices["run"]):
        p.add_argument("--bfcl-model", default="gorilla-openfunctions-v2",
                       help="BFCL model config whose underscore_to_dot is False (function names kept as they are)")
        p.add_argument("--bfcl-underscore-model", default="gpt-4o-2024-11-20-FC",
                       help="BFCL model config whose underscore_to_dot is True (for underscored_name cases)")
    a = ap.parse_args(argv)
    if a.mode == "check":
        return check(a.cases, a.bfcl_model, a.bfcl_underscore_model, a.scored_out)
    counts = {k: getattr(a, f"n_{k}") for k in KINDS}
    cases = generate(counts, a.seed)
    write_cases(cases, a.out)
    print(f"wrote {len(cases)} cases to {a.out}; our scorer: {sum(c['ours'] for c in cases)} valid")
    if a.mode == "generate":
        return 0
    return subprocess.call([a.bfcl_python, str(Path(__file__).resolve()), "check", str(a.out),
                            "--bfcl-model", a.bfcl_model, "--bfcl-underscore-model", a.bfcl_underscore_model])


if __name__ == "__main__":
    sys.exit(main())
