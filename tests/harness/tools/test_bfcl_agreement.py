"""Our side of harness/tools/bfcl_agreement.py: the seeded case generator, our scorer's verdict on
the cases it builds, and the agreement table. bfcl-eval's own checker (which needs its full
dependencies) is never imported here; the script's ``check`` mode runs it in a separate venv."""
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from harness.eval import tool_calls as tc
from harness.tools import bfcl_agreement as ba

SMALL = {"correct": 6, "wrong_value": 3, "missing_required": 3, "wrong_name": 3, "wrong_type": 3,
         "wrong_item_type": 3, "underscored_name": 2}


@pytest.fixture(scope="module")
def cases():
    return ba.generate(SMALL, seed=0)


def test_counts_per_category_and_kind_and_seeded(cases):
    for cat in ba.CATEGORY_NAMES:
        for kind in ba.KINDS:
            assert sum(c["category"] == cat and c["kind"] == kind for c in cases) == SMALL[kind]
    assert json.dumps(ba.generate(SMALL, seed=0)) == json.dumps(cases)
    assert json.dumps(ba.generate(SMALL, seed=1)) != json.dumps(cases)


def test_our_verdicts_on_generated_cases(cases):
    for c in cases:
        why = tc.match_calls(c["functions"], c["calls"], c["ground_truth"])
        assert c["ours"] == (why is None) and c["ours_reason"] == why
        if c["kind"] in ("correct", "underscored_name") and c["category"] != "parallel":
            assert c["ours"], c  # single-call possible answers always match
        elif c["kind"] not in ("correct", "underscored_name"):
            assert not c["ours"], c  # every mutation is wrong by construction


def test_possible_calls_come_from_the_ground_truth(cases):
    for c in (c for c in cases if c["kind"] == "correct"):
        assert sorted(next(iter(x)) for x in c["calls"]) == sorted(next(iter(g)) for g in c["ground_truth"])
        for call in c["calls"]:
            (name, args), = call.items()
            allowed = {p: v for g in c["ground_truth"] if name in g for p, v in g[name].items()}
            assert set(args) <= set(allowed)


def test_mutations_on_one_problem():
    p = tc.Problem("x_0", "multiple", [], [
        {"name": "geo.area", "parameters": {"type": "dict", "required": ["w", "tags"], "properties": {
            "w": {"type": "float"}, "tags": {"type": "array", "items": {"type": "float"}}}}},
        {"name": "other", "parameters": {"type": "dict", "required": [], "properties": {}}},
    ], [{"geo.area": {"w": [2.5], "tags": [[1.0, 3.0]]}}])
    rng = random.Random(0)
    good = ba.possible_calls(rng, p)
    assert good == [{"geo.area": {"w": 2.5, "tags": [1.0, 3.0]}}]
    for kind, reason in [("wrong_value", "is not one of"), ("missing_required", "missing required argument"),
                         ("wrong_name", "wrong function name 'other'"), ("wrong_type", "has type str"),
                         ("wrong_item_type", "argument 'tags' has type list")]:
        bad, note = ba.mutate(rng, kind, p, good)
        assert reason in tc.match_calls(p.functions, bad, p.ground_truth), (kind, note, bad)
    bad, _ = ba.mutate(rng, "wrong_item_type", p, good)
    assert bad[0]["geo.area"]["tags"] in ([1, 3.0], [1.0, 3])  # an integral float written as an int
    under, _ = ba.mutate(rng, "underscored_name", p, good)
    assert under == [{"geo_area": good[0]["geo.area"]}]
    assert tc.match_calls(p.functions, under, p.ground_truth) is None


# Our scorer's verdicts where it once differed from bfcl_eval's ast_checker (the script's check mode
# confirmed bfcl's verdict on each of these).
F = {"name": "f", "parameters": {"type": "dict", "required": ["a"], "properties": {
    "a": {"type": "integer"},
    "fl": {"type": "array", "items": {"type": "float"}},
    "tags": {"type": "array", "items": {"type": "string"}},
    "ld": {"type": "array", "items": {"type": "dict"}},
    "t": {"type": "tuple", "items": {"type": "integer"}}}}}


@pytest.mark.parametrize("args, gt, ok", [
    ({"a": 1, "fl": [1, 2]}, {"a": [1], "fl": [[1.0, 2.0]]}, False),  # ints are no floats inside a list
    ({"a": 1, "fl": [1, 2]}, {"a": [1], "fl": [[1.0, 2.0], ""]}, True),  # "" bounds no item; 1 == 1.0
    ({"a": 1, "fl": [1.0, 2.0]}, {"a": [1], "fl": [[1.0, 2.0]]}, True),
    ({"a": 1, "tags": []}, {"a": [1], "tags": [["x"], ""]}, True),  # [] for an optional list
    ({"a": 1, "ld": []}, {"a": [1], "ld": [[{"k": ["v"]}], ""]}, True),
    ({"a": 1, "tags": []}, {"a": [1], "tags": [["x"]]}, False),
    ({"a": 1, "t": (1, 2)}, {"a": [1], "t": [[1, 2]]}, True),  # a tuple where "tuple" is declared
    ({"a": 1, "tags": ("x",)}, {"a": [1], "tags": [["x"]]}, False),  # but not where "array" is
])
def test_scorer_follows_bfcl_on_list_edge_cases(args, gt, ok):
    assert (tc.match_call(F, {"f": args}, {"f": gt}) is None) is ok


def test_table_and_jsonl_round_trip(cases, tmp_path):
    out = tmp_path / "cases.jsonl"
    ba.write_cases(cases, out)
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert back == json.loads(json.dumps(cases))
    for c in back:
        c["bfcl"] = c["ours"]
    back[0]["bfcl"] = not back[0]["ours"]
    t = ba.table(back)
    n = len(back)
    assert f"| all | all | {n} | {n - 1} | {(n - 1) / n:.1%} |" in t
    assert f"| {back[0]['category']} | {back[0]['kind']} | {SMALL[back[0]['kind']]} | {SMALL[back[0]['kind']] - 1} |" in t


def test_script_runs_without_harness_or_bfcl_imports():
    """``check`` mode runs in the bfcl venv, where harness is not importable: the module itself imports
    neither harness nor bfcl_eval at load time."""
    script = Path(ba.__file__)
    code = ("import sys, runpy; sys.path = [p for p in sys.path if p not in ('', '.')]; "
            f"runpy.run_path({str(script)!r}, run_name='not_main'); "
            "assert not any(m.split('.')[0] in ('harness', 'bfcl_eval') for m in sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
