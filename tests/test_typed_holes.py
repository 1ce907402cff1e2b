"""Typed holes and JSON(): the front end, Python types as schemas, and runs on the tiny backend (values parsed)."""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass
from typing import Literal, Optional, TypedDict

import pytest

import lmqc
from lmqc.compiler import nodes
from lmqc.compiler.jsonschema import compile_schema
from lmqc.compiler.pytypes import convert, is_type_annotation, schema_for
from lmqc.errors import ConstraintError, QueryTypeError

TINY = "lmqc:tiny"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Point:
    x: int
    y: int


@dataclass
class Shape:
    name: Literal["square", "circle"]
    color: Color
    center: Point
    tags: list[str] = dataclasses.field(default_factory=list)
    size: Optional[float] = None  # noqa: UP045 - typing.Optional is what is tested


@dataclass
class Tree:
    value: int
    children: list[Tree] = dataclasses.field(default_factory=list)


class Movie(TypedDict):
    title: str
    year: int


# --------------------------------------------------------------------------------------------------------------
# Python types -> schemas -> values


def test_schema_for_builtins_and_typing() -> None:
    assert schema_for(float) == {"type": "number"}
    assert schema_for(bool) == {"type": "boolean"}
    assert schema_for(list[int]) == {"type": "array", "items": {"type": "integer"}}
    assert schema_for(dict[str, bool]) == {"type": "object", "additionalProperties": {"type": "boolean"}}
    assert schema_for(tuple[int, str]) == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                                           "minItems": 2, "maxItems": 2}
    assert schema_for(Optional[int]) == {"anyOf": [{"type": "integer"}, {"type": "null"}]}  # noqa: UP045
    assert schema_for(Literal["a", 1]) == {"enum": ["a", 1]}
    assert schema_for(Color) == {"enum": ["red", "blue"]}
    assert schema_for({"type": "string"}) == {"type": "string"}
    with pytest.raises(TypeError):
        schema_for(dict[int, str])
    with pytest.raises(TypeError):
        schema_for(object.__class__)
    assert is_type_annotation(Shape) and is_type_annotation(list[int]) and not is_type_annotation(len)


def test_dataclass_schema_fields_in_order_and_required() -> None:
    s = schema_for(Shape)
    body = s["$defs"]["Shape"]
    assert list(body["properties"]) == ["name", "color", "center", "tags", "size"]
    assert body["required"] == ["name", "color", "center"]
    assert s["$ref"] == "#/$defs/Shape" and "Point" in s["$defs"]
    lang = compile_schema(s)
    text = '{"name": "circle", "color": "red", "center": {"x": 1, "y": -2}, "tags": ["a"]}'
    assert lang.dfa.accepts(text)
    value = convert(Shape, json.loads(text))
    assert value == Shape("circle", Color.RED, Point(1, -2), ["a"])


def test_recursive_dataclass_and_typeddict() -> None:
    lang = compile_schema(schema_for(Tree))
    assert lang.dfa.accepts('{"value": 1, "children": [{"value": 2}]}')
    assert convert(Tree, {"value": 1, "children": [{"value": 2}]}) == Tree(1, [Tree(2)])
    s = schema_for(Movie)
    assert s["$defs"]["Movie"]["required"] == ["title", "year"]
    assert convert(Movie, {"title": "x", "year": 1}) == {"title": "x", "year": 1}


def test_union_values_convert_to_the_member_that_fits() -> None:
    assert convert(typing.Union[Point, int], {"x": 1, "y": 2}) == Point(1, 2)  # noqa: UP007
    assert convert(typing.Union[Point, int], 3) == 3  # noqa: UP007
    assert convert(Optional[Point], None) is None  # noqa: UP045
    assert convert(tuple[int, ...], [1, 2]) == (1, 2)
    assert convert(set[int], [1, 1]) == {1}


def test_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        name: str
        price: float = pydantic.Field(ge=0)
        point: Point | None = None

    s = schema_for(Item)
    lang = compile_schema(s)
    assert lang.dfa.accepts('{"name": "pen", "price": 1.5}')
    assert not lang.dfa.accepts('{"name": "pen", "price": -1}')
    item = convert(Item, {"name": "pen", "price": 1.5, "point": {"x": 1, "y": 2}})
    assert isinstance(item, Item) and item.point is not None and item.point.x == 1


# --------------------------------------------------------------------------------------------------------------
# Front end


def test_parse_typed_annotations_and_json_constraint() -> None:
    q = lmqc.parse('"[A: float] [B: bool] [C: Point] [D: list[int]] [E]" where JSON(E, {"type": "integer"})')
    holes = q.holes()
    assert isinstance(holes[0].annotation, nodes.IsFloat) and isinstance(holes[1].annotation, nodes.IsBool)
    assert holes[2].tactic == "Point" and holes[3].tactic == "list[int]"
    assert q.prompts[0].where == nodes.JsonSchema("E", '{"type": "integer"}')
    q = lmqc.parse('"[E]"\nwhere JSON(E, my_schema)')
    assert isinstance(q.where.schema, nodes.Dyn) and q.where.schema.expr == "my_schema"
    q = lmqc.parse("""'[E]'\nwhere JSON(E, '{"type": "boolean"}')""")
    assert q.where.schema == '{"type": "boolean"}'


def test_bad_schemas_are_located_errors() -> None:
    with pytest.raises(QueryTypeError, match="JSON expects a schema"):
        lmqc.parse('"[E]" where JSON(E, 3)')
    with pytest.raises(ConstraintError, match="'contains'") as e:
        lmqc.compile('"Q:\\n[E]" where JSON(E, {"type": "array", "contains": {}})', model=TINY, cache=False)
    assert e.value.line == 1 and e.value.column is not None


def test_artifact_keeps_json_holes(tmp_path) -> None:
    q = lmqc.compile('"[E] [F: float]" where JSON(E, {"enum": ["a", "b"]})', model=TINY, cache=False)
    path = q.save(tmp_path / "q.lmqc")
    again = lmqc.load(path)
    assert again.holes["E"] == q.holes["E"] and again.holes["E"].parse == "json"
    assert again.holes["F"].parse == "float"


@pytest.mark.parametrize("decoder", ["argmax", "beam(n=2)"])
def test_lazy_automaton_through_an_artifact(tmp_path, monkeypatch, decoder: str) -> None:
    """A hole lifted lazily (large schemas; forced here) compiles, saves, loads and decodes a valid value."""
    from lmqc.compiler import lazy

    monkeypatch.setattr(lazy, "LAZY_STATES", 0)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1,
                                                                               "maximum": 9}},
              "required": ["ok", "n"]}
    q = lmqc.compile(f'{decoder} "Answer: [A]" where JSON(A, {json.dumps(schema)}) and len(TOKENS(A)) < 30',
                     model=TINY, cache=False)
    assert isinstance(q.automata["A"], lazy.LazyTokenAutomaton)
    again = lmqc.load(q.save(tmp_path / "q.lmqc"))
    assert isinstance(again.automata["A"], lazy.LazyTokenAutomaton)
    res = lmqc.run(again, model=TINY)
    for r in res if isinstance(res, list) else [res]:
        value = r.variables["A"]
        assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and 1 <= value["n"] <= 9


# --------------------------------------------------------------------------------------------------------------
# Runs on the tiny backend


@pytest.mark.parametrize("decoder", ["argmax", "sample(n=2, seed=3)", "beam(n=2)"])
def test_typed_scalars(decoder: str) -> None:
    src = f'{decoder}\n    "Price: [P: float]\\nOK: [B: bool]"\nfrom "{TINY}"\nwhere len(TOKENS(P)) < 8\n'
    res = lmqc.run(src)
    for r in res if isinstance(res, list) else [res]:
        assert isinstance(r.variables["P"], float) and isinstance(r.variables["B"], bool)
        price, ok = r.prompt[len("Price: "):].split("\nOK: ")
        assert float(price) == r.variables["P"] and (ok.strip().lower() == "true") == r.variables["B"]


def test_json_constraint_value_is_parsed_and_prompt_keeps_text() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1,
                                                                               "maximum": 9}},
              "required": ["ok", "n"]}
    r = lmqc.run(f'"Answer: [A]" where JSON(A, {json.dumps(schema)})', model=TINY)
    value = r.variables["A"]
    assert isinstance(value, dict) and set(value) == {"ok", "n"} and 1 <= value["n"] <= 9
    text = r.prompt[len("Answer: "):]
    assert json.loads(text) == value


@lmqc.query(model=TINY)
def _typed_query(kinds):
    '''lmql
    "Shape: [S: Shape]\n" where len(TOKENS(S)) < 80
    "Points: [PTS: list[Point]]\n" where len(TOKENS(PTS)) < 40
    "Color: [C: Color] [J]" where JSON(J, kinds) and len(TOKENS(J)) < 20
    '''


def test_typed_holes_return_instances() -> None:
    r = _typed_query({"enum": ["x", "y"]})
    s = r.variables["S"]
    assert isinstance(s, Shape) and isinstance(s.center, Point) and isinstance(s.color, Color)
    assert all(isinstance(p, Point) for p in r.variables["PTS"])
    assert isinstance(r.variables["C"], Color) and r.variables["J"] in ("x", "y")
    # the prompt holds the JSON text the model wrote
    shown = r.prompt.split("Shape: ")[1].split("\n")[0]
    assert convert(Shape, json.loads(shown)) == s


def test_typed_hole_with_a_python_type_in_json() -> None:
    r = lmqc.run('"P: [P]" where JSON(P, Point) and len(TOKENS(P)) < 30', model=TINY, Point=Point)
    assert isinstance(r.variables["P"], Point)


def test_typed_hole_errors() -> None:
    with pytest.raises(Exception, match="neither a query function nor a type"):
        lmqc.run('"[X: foo]"', model=TINY, foo=3)
    with pytest.raises(ConstraintError, match="keys are strings"):
        lmqc.run('"[X: C]"', model=TINY, C=dict[int, str])
