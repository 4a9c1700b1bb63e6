"""JSON output under a JSON Schema, on shipped prompts (harness/data/json/prompts.jsonl).

Each item: ``prompt``, ``schema``, ``answer`` (a reference object that satisfies the schema; the
teacher-forced fidelity target) and optionally ``expected`` (the fields the prompt determines; when
absent, every field of ``answer`` is determined). The assistant turn is pre-filled with a ``json``
fence and generation stops at the closing fence.

Metrics per prompt: ``json_valid`` (a JSON value can be extracted), ``schema_valid`` (it validates
against the schema) and ``field_accuracy`` (share of determined leaf fields with the expected value;
strings compare case- and space-insensitively, numbers numerically).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from harness.data import DATA_DIR
from harness.errors import HarnessError
from harness.eval import SuiteOutput
from harness.eval.fidelity import metric_row
from harness.eval.generation import render_chat
from harness.eval.generation_suite import GenerationJob, evaluate_generation
from harness.eval.views import GenerationSettings, generation_settings, view

TASK = "json_schema"
PROMPTS_FILE = DATA_DIR / "json" / "prompts.jsonl"
INSTRUCTION = "{prompt}\n\nAnswer with one JSON object that matches this JSON Schema:\n{schema}"
FENCE = "```json\n"
STOP = ["```"]
_FENCED = re.compile(r"```(?:json)?[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_MISSING = object()


@dataclass
class JsonItem:
    id: str
    prompt: str
    schema: dict
    answer: Any
    expected: dict  # flattened path -> value of the determined fields


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by path: ``{"a": {"b": [1]}}`` -> ``{"a.b[0]": 1}``."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def load_items(path: Path, n: int) -> list[JsonItem]:
    if not path.is_file():
        raise HarnessError(f"JSON prompts file not found: {path}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            jsonschema.validators.validator_for(row["schema"]).check_schema(row["schema"])
            jsonschema.validate(row["answer"], row["schema"])
            item = JsonItem(row["id"], row["prompt"], row["schema"], row["answer"],
                            flatten(row.get("expected", row["answer"])))
        except (json.JSONDecodeError, KeyError, jsonschema.SchemaError, jsonschema.ValidationError) as e:
            raise HarnessError(f"{path}:{lineno}: bad JSON prompt ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        items.append(item)
    if n > len(items):
        raise HarnessError(f"eval.json.n_prompts={n} but {path.name} has {len(items)} prompts; use 1..{len(items)} "
                           f"or 0 for all")
    return items if n <= 0 else items[:n]


def extract_json(text: str) -> Any:
    """The first JSON value in a reply (bare, fenced or after prose); ``_MISSING`` if there is none."""
    candidates = [text] + _FENCED.findall(text)
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return decoder.raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue
    return _MISSING


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return abs(got - want) <= 1e-9 * max(1.0, abs(want))
    if isinstance(want, str) and isinstance(got, str):
        return " ".join(got.split()).casefold() == " ".join(want.split()).casefold()
    return got == want


def score(item: JsonItem, reply: str) -> dict[str, float]:
    """json_valid, schema_valid and field_accuracy of one reply."""
    value = extract_json(reply)
    if value is _MISSING:
        return {"json_valid": 0.0, "schema_valid": 0.0, "field_accuracy": 0.0}
    schema_ok = jsonschema.validators.validator_for(item.schema)(item.schema).is_valid(value)
    got = flatten(value)
    hits = sum(_same(got.get(path, _MISSING), want) for path, want in item.expected.items())
    return {"json_valid": 1.0, "schema_valid": float(schema_ok), "field_accuracy": hits / len(item.expected)}


def build_prompt(tok, item: JsonItem) -> str:
    content = INSTRUCTION.format(prompt=item.prompt, schema=json.dumps(item.schema))
    return render_chat(tok, [{"role": "user", "content": content}]) + FENCE


def reference_answer(item: JsonItem) -> str:
    return json.dumps(item.answer, indent=2, ensure_ascii=False)


def score_rows(items: list[JsonItem], outputs: list[str]) -> list[dict]:
    """``json_valid``, ``schema_valid`` (binary) and ``field_accuracy`` over the prompts."""
    scores = [score(item, out) for item, out in zip(items, outputs)]
    return [metric_row(TASK, m, [s[m] for s in scores], binary=m != "field_accuracy")
            for m in ("json_valid", "schema_valid", "field_accuracy")]


@dataclass
class JsonSettings:
    n_prompts: int  # the first N shipped prompts; <= 0 means all
    max_new_tokens: int
    generation: GenerationSettings


class JsonSuite:
    name = "json"

    def settings(self, cfg) -> JsonSettings:
        return view(JsonSettings, cfg.eval.json, generation=generation_settings(cfg))

    def prepare(self, tok, s: JsonSettings) -> list[JsonItem]:
        if s.max_new_tokens < 1:
            raise HarnessError(f"eval.json.max_new_tokens must be >= 1 (got {s.max_new_tokens})")
        return load_items(PROMPTS_FILE, s.n_prompts)

    def evaluate(self, model, tok, data: list[JsonItem], s: JsonSettings, reference=None) -> SuiteOutput:
        job = GenerationJob(TASK, [build_prompt(tok, item) for item in data], [reference_answer(item) for item in data],
                            s.max_new_tokens, STOP, desc="json generate")
        return evaluate_generation(model, tok, job, lambda outputs: score_rows(data, outputs), s.generation, reference)


SUITE = JsonSuite()
