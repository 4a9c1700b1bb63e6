"""JSON suite: shipped prompts are well-formed; the scorer on hand-written good and bad replies."""
import json

import pytest

from harness.errors import HarnessError
from harness.eval.json_format import (FENCE, PROMPTS_FILE, build_prompt, extract_json, flatten, load_items,
                                      reference_answer, score)


@pytest.fixture(scope="module")
def items():
    return load_items(PROMPTS_FILE, 0)


def by_id(items, key):
    return next(i for i in items if i.id == key)


def test_shipped_prompts(items):
    assert len(items) == 60 and len({i.id for i in items}) == 60
    assert len({i.id.split("-")[0] for i in items[:12]}) == 12  # the first 12 cover every domain
    for i in items:  # the reference answer scores perfectly on its own prompt
        assert score(i, reference_answer(i)) == {"json_valid": 1.0, "schema_valid": 1.0, "field_accuracy": 1.0}


def test_flatten():
    assert flatten({"a": {"b": [1, {"c": "x"}]}, "d": True}) == {"a.b[0]": 1, "a.b[1].c": "x", "d": True}


def test_positive_replies(items):
    w = by_id(items, "weather-01")  # Oslo, -3, snow, 15
    good = {"city": "oslo", "temperature_c": -3.0, "condition": "snow", "wind_kmh": 15}
    for reply in (json.dumps(good), "```json\n" + json.dumps(good) + "\n```", "Sure! Here it is: " + json.dumps(good) + " Done.",
                  json.dumps(good, indent=2) + "\n\nNote: values from the report."):
        assert score(w, reply) == {"json_valid": 1.0, "schema_valid": 1.0, "field_accuracy": 1.0}, reply


def test_negative_replies(items):
    w = by_id(items, "weather-01")
    assert score(w, "The weather in Oslo is snowy.") == {"json_valid": 0.0, "schema_valid": 0.0, "field_accuracy": 0.0}
    assert score(w, '{"city": "Oslo", "temperature_c": -3,') == {"json_valid": 0.0, "schema_valid": 0.0,
                                                                 "field_accuracy": 0.0}
    # parses, wrong enum value and a wrong number: schema fails, half the fields right
    s = score(w, '{"city": "Oslo", "temperature_c": 3, "condition": "snowy", "wind_kmh": 15}')
    assert s == {"json_valid": 1.0, "schema_valid": 0.0, "field_accuracy": 0.5}
    # schema-valid but the temperature's sign is lost
    s = score(w, '{"city": "Oslo", "temperature_c": 3, "condition": "snow", "wind_kmh": 15}')
    assert s == {"json_valid": 1.0, "schema_valid": 1.0, "field_accuracy": 0.75}
    # a string where a number belongs is not the number
    s = score(w, '{"city": "Oslo", "temperature_c": "-3", "condition": "snow", "wind_kmh": 15}')
    assert s["schema_valid"] == 0.0 and s["field_accuracy"] == 0.75
    # an extra property breaks additionalProperties: false
    s = score(w, '{"city": "Oslo", "temperature_c": -3, "condition": "snow", "wind_kmh": 15, "note": "x"}')
    assert s["schema_valid"] == 0.0 and s["field_accuracy"] == 1.0


def test_nested_and_partial_expectations(items):
    inv = by_id(items, "invoice-01")
    ans = dict(inv.answer, items=[dict(inv.answer["items"][0], quantity=2), inv.answer["items"][1]])
    s = score(inv, json.dumps(ans))
    n = len(inv.expected)
    assert s["schema_valid"] == 1.0 and s["field_accuracy"] == pytest.approx((n - 1) / n)
    rev = by_id(items, "review-01")  # the free-text summary is not scored
    assert "summary" not in rev.expected
    assert score(rev, json.dumps(dict(rev.answer, summary="anything")))["field_accuracy"] == 1.0
    assert score(rev, json.dumps(dict(rev.answer, rating=True)))["field_accuracy"] == pytest.approx(2 / 3)


def test_extract_json_prefers_first_value():
    assert extract_json('x {"a": 1} y {"b": 2}') == {"a": 1}
    assert extract_json("[1, 2]") == [1, 2]


def test_prompt_shape(items, smol_tokenizer):
    text = build_prompt(smol_tokenizer, items[0])
    assert text.endswith("<|im_start|>assistant\n" + FENCE) and '"required"' in text


def test_bad_prompt_file_is_a_user_error(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "x", "prompt": "p", "schema": {"type": "object"}}\n')
    with pytest.raises(HarnessError, match="p.jsonl:1: bad JSON prompt"):
        load_items(bad, 0)
    with pytest.raises(HarnessError, match="n_prompts=61 but prompts.jsonl has 60"):
        load_items(PROMPTS_FILE, 61)
