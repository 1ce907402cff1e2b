"""Typed holes on the real Gemma 3 270M model: short JSON values that validate against their schema."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

import lmqc
from lmqc.runtime.query import LMQLResult

pytestmark = pytest.mark.model
jsonschema = pytest.importorskip("jsonschema")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["student", "teacher", "engineer"]},
        "email": {"type": "string", "format": "email"},
    },
    "required": ["name", "age", "role"],
}


def _person_record(schema: dict) -> LMQLResult:
    """A person record written for ``schema`` on Gemma; it validates, and the prompt holds its JSON text."""
    r = lmqc.run('"Q: Give a person record as JSON.\\nA: [P]" where JSON(P, schema) and len(TOKENS(P)) < 48',
                 schema=schema)
    value = r.variables["P"]
    cls = jsonschema.validators.validator_for(schema)
    assert not list(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value))
    assert json.loads(r.prompt.split("A: ", 1)[1]) == value
    return r


def test_json_schema_value_validates_on_gemma() -> None:
    r = _person_record(PERSON)
    assert r.n_tokens < 48


@dataclass
class Planet:
    name: str
    kind: Literal["rocky", "gas giant", "ice giant"]
    moons: int


def test_dataclass_hole_on_gemma() -> None:
    r = lmqc.run('"Q: Describe the planet Jupiter as JSON.\\nA: [P: Planet]" where len(TOKENS(P)) < 32',
                 Planet=Planet)
    p = r.variables["P"]
    assert isinstance(p, Planet) and p.kind in ("rocky", "gas giant", "ice giant") and isinstance(p.moons, int)


def test_lazy_automaton_decodes_a_valid_value_on_gemma(monkeypatch) -> None:
    """Large schemas get a token automaton lifted state by state (compiler.lazy); forced here on a small one."""
    from lmqc.compiler import lazy

    monkeypatch.setattr(lazy, "LAZY_STATES", 0)
    walks = []
    real = lazy._walk_one
    monkeypatch.setattr(lazy, "_walk_one", lambda dfa, vocab, state, *rest: walks.append(state) or real(dfa, vocab, state, *rest))
    _person_record({**PERSON, "properties": {**PERSON["properties"], "name": {"type": "string", "maxLength": 20}}})
    assert walks  # the hole did run on the lazy automaton


def test_lazy_automaton_closes_the_value_within_a_tight_budget(monkeypatch) -> None:
    """A lazy automaton bounds distances instead of knowing them: near the budget's end decoding keeps to tokens
    after which the value can still be finished, so it always ends valid in time."""
    from lmqc.compiler import lazy

    monkeypatch.setattr(lazy, "LAZY_STATES", 0)
    schema = {"type": "object", "required": ["title", "author", "summary", "year"],
              "properties": {"title": {"type": "string"}, "author": {"type": "string"},
                             "summary": {"type": "string"}, "year": {"type": "integer"}}}
    r = lmqc.run('"Q: Describe a long novel as JSON, in detail.\\nA: [P]" where JSON(P, schema) and len(TOKENS(P)) < 24',
                 schema=schema)
    value = r.variables["P"]
    assert set(value) == {"title", "author", "summary", "year"} and isinstance(value["year"], int)
    assert r.n_tokens <= 24  # 23 value tokens at most, and the end of the value
