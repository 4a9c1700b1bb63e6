"""BFCL AST matching and call parsing on hand-written positive and negative cases."""
import json

import pytest

from harness.errors import HarnessError
from harness.eval import tool_calls as tc

AREA = {"name": "geometry.area", "description": "Area of a rectangle.", "parameters": {
    "type": "dict", "required": ["width", "height"], "properties": {
        "width": {"type": "float", "description": "w"},
        "height": {"type": "integer", "description": "h"},
        "unit": {"type": "string", "description": "unit, default 'm'"},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "labels"},
        "exact": {"type": "boolean", "description": "no rounding"},
    }}}
AREA_GT = {"geometry.area": {"width": [2.5, 2], "height": [4], "unit": ["m", "meters", ""], "tags": [["big", "Red"], ""],
                             "exact": [True, ""]}}
WEATHER = {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "dict", "required": ["city"], "properties": {"city": {"type": "string", "description": "city"}}}}


def call(name="geometry.area", **args):
    return {name: args}


@pytest.mark.parametrize("args", [
    dict(width=2.5, height=4),  # optional args omitted
    dict(width=2, height=4, unit="m"),  # int accepted where a float is declared
    dict(width=2.5, height=4, unit="Meters"),  # case-insensitive string
    dict(width=2.5, height=4, tags=["BIG", "red"]),  # strings inside a list are normalised too
    dict(width=2.5, height=4, exact=True),
])
def test_positive_single_calls(args):
    assert tc.match_call(AREA, call(**args), AREA_GT) is None


@pytest.mark.parametrize("c, reason", [
    (call("geometry.volume", width=2.5, height=4), "wrong function name"),
    (call(width=2.5), "missing required argument 'height'"),
    (call(width=2.5, height="4"), "argument 'height' has type str"),
    (call(width=2.5, height=4.0), "argument 'height' has type float"),  # no float -> int conversion
    (call(width=2.5, height=True), "argument 'height' has type bool"),
    (call(width=2.5, height=4, colour="red"), "unexpected argument 'colour'"),
    (call(width=3.5, height=4), "argument 'width'=3.5 is not one of"),
    (call(width=2.5, height=4, unit="feet"), "argument 'unit'='feet' is not one of"),
    (call(width=2.5, height=4, tags=["red", "big"]), "argument 'tags'"),  # list order matters
    (call(width=2.5, height=4, exact=False), "argument 'exact'=False is not one of"),
])
def test_negative_single_calls(c, reason):
    why = tc.match_call(AREA, c, AREA_GT)
    assert why is not None and reason in why


def test_optional_argument_without_empty_marker_is_required():
    gt = {"get_weather": {"city": ["Paris"]}}
    assert tc.match_call(WEATHER, {"get_weather": {"city": "paris"}}, gt) is None
    assert "missing required argument 'city'" in tc.match_call(WEATHER, {"get_weather": {}}, gt)


def test_string_normalisation_follows_bfcl():
    assert tc.normalize_string("New York, NY") == tc.normalize_string("new-york ny")
    assert tc.normalize_string("April 1, 2024") == tc.normalize_string("april 1 2024")
    assert tc.normalize_string("it's") == 'it"s'
    assert tc.normalize_string("Paris") != tc.normalize_string("Pariss")


def test_dotted_name_may_come_back_with_underscores():
    assert tc.match_call(AREA, call("geometry_area", width=2.5, height=4), AREA_GT) is None


PARALLEL_GT = [{"get_weather": {"city": ["Paris"]}}, {"get_weather": {"city": ["Berlin"]}}]


def test_parallel_calls_match_in_any_order():
    for calls in ([{"get_weather": {"city": "Paris"}}, {"get_weather": {"city": "Berlin"}}],
                  [{"get_weather": {"city": "Berlin"}}, {"get_weather": {"city": "Paris"}}]):
        assert tc.match_calls([WEATHER], calls, PARALLEL_GT) is None


@pytest.mark.parametrize("calls, reason", [
    ([{"get_weather": {"city": "Paris"}}], "1 calls, expected 2"),
    ([{"get_weather": {"city": "Paris"}}, {"get_weather": {"city": "Paris"}}], "not one of ['Berlin']"),  # each output used once
    ([{"get_weather": {"city": "Paris"}}, {"get_weather": {"city": "Rome"}}], "'city'='Rome'"),
    (None, "no call could be parsed"),
    ([], "no call could be parsed"),
])
def test_parallel_negative(calls, reason):
    why = tc.match_calls([WEATHER], calls, PARALLEL_GT)
    assert why is not None and reason in why


def test_multiple_picks_the_right_function_among_several():
    gt = [{"get_weather": {"city": ["Oslo"]}}]
    assert tc.match_calls([AREA, WEATHER], [{"get_weather": {"city": "Oslo"}}], gt) is None
    assert "wrong function name" in tc.match_calls([AREA, WEATHER], [call(width=2.5, height=4)], gt)


def test_variable_of_ground_truth_type_is_accepted():
    # BFCL: a parameter declared integer whose ground truth is a string (a variable name)
    func = {"name": "f", "parameters": {"type": "dict", "required": ["x"], "properties": {"x": {"type": "integer"}}}}
    assert tc.match_call(func, {"f": {"x": "n"}}, {"f": {"x": ["n"]}}) is None
    assert tc.match_call(func, {"f": {"x": "m"}}, {"f": {"x": ["n"]}}) is not None


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     [{"get_weather": {"city": "Paris"}}]),
    ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>',
     [{"a": {"x": 1}}, {"b": {}}]),
    ('Sure! ```json\n{"name": "get_weather", "parameters": {"city": "Oslo"}}\n```', [{"get_weather": {"city": "Oslo"}}]),
    ('[{"name": "a", "arguments": "{\\"x\\": 2}"}, {"b": {"y": [1, 2]}}]', [{"a": {"x": 2}}, {"b": {"y": [1, 2]}}]),
    ("[math.hypot(x=4, y=5), get_weather(city='Rome')]", [{"math.hypot": {"x": 4, "y": 5}}, {"get_weather": {"city": "Rome"}}]),
    ("I will call it.\nf(a=1.5, b=True, c=[1, 'x'], d=n)", [{"f": {"a": 1.5, "b": True, "c": [1, "x"], "d": "n"}}]),
    ("<tool_call>[get_weather(city='Oslo'), f(a=1)]</tool_call>", [{"get_weather": {"city": "Oslo"}}, {"f": {"a": 1}}]),
])
def test_parse_calls(text, expected):
    assert tc.parse_calls(text) == expected


ECHOED_TOOL = json.dumps({"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})


@pytest.mark.parametrize("text", ["The weather in Paris is sunny.", "", "f(1, 2)", '{"city": "Paris"}', "<tool_call>oops",
                                  ECHOED_TOOL])
def test_unparsable_answers(text):
    assert tc.parse_calls(text) is None


def test_reference_answer_is_a_matching_call():
    p = tc.Problem("x_0", "parallel", [], [AREA, WEATHER], [AREA_GT, {"get_weather": {"city": ["Paris", "paris"]}}])
    ref = tc.reference_answer(p)
    assert ref.count("<tool_call>") == 2
    assert json.loads(ref.split("\n")[1]) == {"name": "geometry.area", "arguments": {"width": 2.5, "height": 4, "unit": "m",
                                                                                  "tags": ["big", "Red"], "exact": True}}
    assert tc.match_calls(p.functions, tc.parse_calls(ref), p.ground_truth) is None


def test_bfcl_subset_is_seeded_and_complete():
    a = tc.load_problems(["simple", "multiple", "parallel"], 5, seed=0)
    b = tc.load_problems(["simple", "multiple", "parallel"], 5, seed=0)
    c = tc.load_problems(["simple"], 5, seed=1)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 15
    assert [p.id for p in c] != [p.id for p in a[:5]]
    assert [p.category for p in a] == ["simple"] * 5 + ["multiple"] * 5 + ["parallel"] * 5
    for p in a:
        assert p.messages[-1]["role"] == "user" and p.ground_truth and p.functions
        # the ground truth's own reference call passes the scorer: data and scorer agree
        assert tc.match_calls(p.functions, tc.parse_calls(tc.reference_answer(p)), p.ground_truth) is None, p.id
    assert all(len(p.ground_truth) >= 2 for p in a if p.category == "parallel")


def test_every_shipped_reference_answer_matches():
    probs = tc.load_problems(["simple", "multiple", "parallel"], 0, seed=0)
    assert len(probs) == 800
    bad = [p.id for p in probs if tc.match_calls(p.functions, tc.parse_calls(tc.reference_answer(p)), p.ground_truth)]
    assert bad == []


def test_unknown_category_is_a_clear_error():
    with pytest.raises(HarnessError, match="unknown tool_calls category 'live'; choose from: simple, multiple, parallel"):
        tc.load_problems(["live"], 3, seed=0)


def test_tools_use_json_schema_types():
    tools = tc.chat_tools([AREA])
    params = tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["width"]["type"] == "number"
    assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "geometry.area"
