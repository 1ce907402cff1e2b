"""JSON Schema -> the regular language of the JSON texts lmqc lets a model write for it.

The language is always a *subset* of the schema's instances (every text it accepts parses as JSON and
validates), chosen to be regular and small:

* **Layout**: no whitespace except at most one space after each ``,`` and ``:``
  (``{"a": 1, "b": [1, 2]}`` or ``{"a":1,"b":[1,2]}``); whitespace cannot run away.
* **Objects**: the properties of ``properties`` in schema order, required ones always, optional ones at most
  once; no other keys (``additionalProperties`` is never needed to write a valid instance), except for
  objects that list no properties: those are maps whose keys and values follow ``propertyNames`` /
  ``patternProperties`` / ``additionalProperties`` (any JSON value when unconstrained). ``minProperties`` /
  ``maxProperties`` are counted exactly. A required key missing from ``properties`` takes its schema from
  ``patternProperties`` / ``additionalProperties``. ``dependentRequired`` / ``dependentSchemas`` /
  ``dependencies``: a required trigger makes its dependents required (or merges its schema); an optional
  trigger is left out. An object whose schema-order automaton would pass ``OBJECT_BUDGET`` (estimated) because
  optional properties share large value schemas is written with its required properties first, in order, then
  its optional ones in any order, a key possibly repeated (JSON parsers keep the last value, which is valid):
  then properties with the same schema share one copy of it (noted).
* **Strings**: characters written as themselves or with JSON's short escapes (``\\"``, ``\\\\``, ``\\n`` ...);
  ``\\uXXXX`` escapes are not generated. ``minLength``/``maxLength`` count characters exactly (a ``maxLength``
  over ``LENGTH_CAP`` = 256 is written as at most 256 characters: a counter of 100,000 states for
  ``maxLength: 100000`` buys nothing); ``pattern``
  is a search (anchors ``^``/``$`` at its edges) in Python ``re`` syntax with ECMA-262 classes; ``format``:
  see ``FORMATS`` (each a regular subset of the format; unknown formats are annotations, as the JSON Schema
  specification says, and are listed in :attr:`SchemaLanguage.notes`).
* **Numbers**: canonical JSON numbers; bounds (``minimum``, ``exclusiveMaximum`` ..., draft 4's boolean form
  too) are exact for integers and decimals, and a bounded ``number`` is written without exponent;
  ``multipleOf`` is exact (its value's decimal digits up to ``MAX_MODULUS``).
* **Combinators**: ``anyOf``; ``oneOf`` exactly: each branch is restricted so that whatever lmqc writes for it
  fails every other branch (an optional property another branch requires is left out, a property another branch
  forbids is always written, values or types another branch accepts are dropped, numbers against integers are
  written with a fraction); a branch that cannot be restricted is left out and noted, and when none is left
  the schema is an error. ``allOf`` merged keyword by keyword (a conflict it cannot merge is an error naming
  the keyword); ``not`` of ``{}``, of required keys (one of them is left out), of types, of a string
  ``pattern`` (its complement) or of string/boolean/null values; ``enum``/``const`` as literal JSON
  (intersected with the rest of the schema); ``$ref`` to ``#...`` JSON pointers (``$defs``, ``definitions``,
  the root) and ``$anchor`` names; a recursive reference is expanded at most ``ref_depth`` times on a path, and the
  branches that would go deeper are left out (an optional property, an ``anyOf`` branch, further array
  items); a schema that cannot avoid going deeper is an error.
* **Any value** (``{}``, ``true``, a property without a schema): null, booleans, numbers, strings, and arrays
  and objects nested at most ``any_depth`` levels.
* **Arrays**: ``items`` / ``prefixItems`` (and draft 4 tuples with ``additionalItems``), ``minItems`` exact, a
  ``maxItems`` over ``ITEMS_CAP`` = 64 written as at most 64 items.
* ``uniqueItems: true``: arrays of at most one item (uniqueness is not regular in general); an error when
  ``minItems`` asks for more.

Anything else that constrains instances (other ``not`` forms, ``if``, ``contains``, ``$dynamicRef``, non-local
``$ref``, several ``patternProperties`` of a map, inline regex flags, lookaround in patterns ...) raises
:class:`SchemaError` naming the keyword and where it is. Unknown keywords are annotations and are ignored, as
validators do.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import numpy as np

from lmqc.errors import SchemaApproximationWarning

from . import charlang, regular
from .charlang import CharDFA
from .regular import (
    DIGIT,
    EMPTY,
    EPS,
    JSON_PLAIN,
    NONZERO,
    Node,
    alt,
    cs_chars,
    cset,
    dfa_node,
    lit,
    obj_node,
    opt,
    rep,
    seq,
)

REF_DEPTH = 3  # how many times one $ref may be expanded on a path (recursive schemas)
ANY_DEPTH = 1  # nesting of arrays/objects inside an unconstrained value (1: arrays/objects of scalars)
MAX_MODULUS = 10_000  # multipleOf: largest modulus (digits of the value) handled exactly
OBJECT_BUDGET = 200_000  # estimated size of an object above which optional properties may come in any order
_UNORDERED_MIN = 8  # optional properties below which an object is never that large
MAX_STATES = 500_000  # subset-construction budget per schema (above lazy.LAZY_STATES: lifted on visit)
NODE_BUDGET = 20_000  # schema nodes visited before recursion is unrolled fewer times (recursive schemas only)
SIZE_BUDGET = 1_500_000  # estimated automaton size of a recursive schema's tree above which it is unrolled less
LENGTH_CAP = 256  # maxLength above this is written as at most LENGTH_CAP characters (minLength stays exact)
ITEMS_CAP = 64  # maxItems above this (and above minItems) is written as at most ITEMS_CAP items

JSON_TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")

# keywords that constrain instances and that lmqc cannot (or does not) express: an error names them
REFUSED = {
    "contains": "'contains'",
    "minContains": "'minContains'",
    "maxContains": "'maxContains'",
    "$dynamicRef": "'$dynamicRef'",
    "$recursiveRef": "'$recursiveRef'",
}
_ANNOTATIONS = {
    "title", "description", "default", "examples", "example", "$comment", "$schema", "$id", "id", "readOnly",
    "writeOnly", "deprecated", "$anchor", "$dynamicAnchor", "definitions", "$defs", "contentMediaType",
    "contentEncoding", "contentSchema", "$vocabulary",
}
_OBJECT_KEYS = {"properties", "required", "additionalProperties", "patternProperties", "propertyNames",
                "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "dependencies",
                "unevaluatedProperties"}
_ARRAY_KEYS = {"items", "prefixItems", "additionalItems", "minItems", "maxItems", "uniqueItems", "unevaluatedItems"}
_STRING_KEYS = {"minLength", "maxLength", "pattern", "format"}
_NUMBER_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
# every keyword lmqc reads or refuses; any other keyword is an annotation (validators ignore unknown keywords)
_KNOWN = (_OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS | _NUMBER_KEYS | set(REFUSED)
          | {"type", "enum", "const", "anyOf", "oneOf", "allOf", "not", "$ref", "if", "then", "else", "dependentRequired",
             "$defs", "definitions"})
_EXACT_STRING_KEYS = {"type", "pattern", "minLength", "maxLength", "format", "enum", "const", "not", "_patterns",
                      "_not_values", "_not_strings"}


class SchemaError(ValueError):
    """A schema lmqc cannot turn into a language; ``keyword`` and ``path`` say where."""

    def __init__(self, message: str, path: str = "#", keyword: str | None = None) -> None:
        self.path = path
        self.keyword = keyword
        super().__init__(f"JSON schema at {path}: {message}")


# --------------------------------------------------------------------------------------------------------------
# Formats: regular subsets, as Python regexes over the string's characters (full match)

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DATE = (
    r"[1-9][0-9]{3}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
)
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
_PCHAR = r"[A-Za-z0-9._~!$&'()*+,;=:@-]"
_QUERY_FRAGMENT = rf"(\?({_PCHAR}|[/?])*)?(#({_PCHAR}|[/?])*)?"
_PATH_ABSOLUTE = rf"/({_PCHAR}+(/{_PCHAR}*)*)?"  # never "//" without an authority
_URI = (rf"[A-Za-z][A-Za-z0-9+.-]*:(//[A-Za-z0-9._~-]+(:[0-9]{{1,5}})?(/{_PCHAR}*)*|{_PATH_ABSOLUTE}|"
        rf"{_PCHAR}+(/{_PCHAR}*)*)?{_QUERY_FRAGMENT}")
_LABEL = r"[A-Za-z0-9]{1,20}(-[A-Za-z0-9]{1,20}){0,2}"  # no "--": IDNA reserves it
_DUR_TIME = r"T([0-9]+H([0-9]+M)?([0-9]+S)?|[0-9]+M([0-9]+S)?|[0-9]+S)"
_DUR_DATE = r"([0-9]+Y([0-9]+M)?([0-9]+D)?|[0-9]+M([0-9]+D)?|[0-9]+D)"
FORMATS: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "T" + _TIME,
    "duration": rf"P({_DUR_DATE}({_DUR_TIME})?|{_DUR_TIME}|[0-9]+W)",
    "email": r"[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,30}(\.[A-Za-z0-9-]{1,30}){0,3}\.[A-Za-z]{2,6}",
    "idn-email": r"[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,30}(\.[A-Za-z0-9-]{1,30}){0,3}\.[A-Za-z]{2,6}",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}",
    "ipv6": r"[0-9a-fA-F]{1,4}(:[0-9a-fA-F]{1,4}){7}",
    "hostname": rf"{_LABEL}(\.{_LABEL}){{0,4}}",
    "idn-hostname": rf"{_LABEL}(\.{_LABEL}){{0,4}}",
    "uri": _URI,
    "iri": _URI,
    "uri-reference": rf"({_URI}|{_PATH_ABSOLUTE}{_QUERY_FRAGMENT})",
    "iri-reference": rf"({_URI}|{_PATH_ABSOLUTE}{_QUERY_FRAGMENT})",
    "uri-template": rf"{_URI}",
    "json-pointer": r"(/([^/~]|~[01])*)*",
    "relative-json-pointer": r"[1-9]{0,3}[0-9](#|(/([^/~]|~[01])*)*)",  # no 0 before a digit (jsonschema's check)
    "regex": r"[A-Za-z0-9 _-]*",
    "byte": r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?",
}
# formats of numbers: bounds; others that validators never check are fine as they are
INT_FORMATS = {
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint8": (0, 2**8 - 1), "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
NUMBER_FORMATS = {"float", "double", "decimal", "number", "integer"}


# --------------------------------------------------------------------------------------------------------------
# Result


@dataclass(slots=True, eq=False)
class SchemaLanguage:
    """The compiled language of a schema: a minimized character DFA and what was approximated."""

    dfa: CharDFA
    notes: tuple[str, ...] = field(default_factory=tuple)


def canonical(schema: Any) -> str:
    """The schema as canonical JSON text (key order kept: property order matters)."""
    try:
        return json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"not a JSON schema ({e})") from None


def compile_schema(schema: Any, *, ref_depth: int = REF_DEPTH, any_depth: int = ANY_DEPTH,
                   max_states: int | None = None) -> SchemaLanguage:
    """The language of ``schema`` (a dict or bool, or its JSON text).

    Raises
    ------
    SchemaError
        A keyword lmqc cannot express (named), a malformed schema, or a schema that allows no value lmqc can
        write.
    """
    text = schema if isinstance(schema, str) else canonical(schema)
    return _compile_cached(text, ref_depth, any_depth, MAX_STATES if max_states is None else max_states)


@lru_cache(maxsize=256)
def _compile_cached(text: str, ref_depth: int, any_depth: int, max_states: int) -> SchemaLanguage:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"not valid JSON ({e})") from None
    # A schema whose definitions refer to each other in many ways unfolds exponentially in the expansion
    # depth: over a budget of schema nodes or of estimated size, recursion is unrolled fewer times (noted), down
    # to once.
    cycles = _ref_cycles(schema)
    for depth in range(ref_depth, 0, -1):
        c = _Compiler(schema, ref_depth=depth, any_depth=any_depth,
                      budget=NODE_BUDGET if cycles and depth > 1 else None, cycles=cycles)
        try:
            node = c.node(schema, "#")
        except _OverBudget:
            continue
        if cycles and depth > 1 and regular._size(node, {}) > SIZE_BUDGET:
            continue  # a tree this large would pass MAX_STATES: unroll less
        if depth < ref_depth:
            c.notes.insert(0, f"recursive $ref expanded {depth} times, not {ref_depth} (the schema is large)")
        break
    try:
        dfa = regular.compile_node(node, max_states=max_states)
    except regular.TooLarge:
        raise SchemaError(f"the schema's language needs more than {max_states} automaton states") from None
    if dfa.is_empty():
        raise SchemaError("the schema allows no value lmqc can write" + (f" ({c.notes[0]})" if c.notes else ""))
    notes = tuple(dict.fromkeys(c.notes))
    if notes:  # never a silent narrowing (once per schema and process: this function is cached)
        shown = "; ".join(notes[:3]) + (f"; and {len(notes) - 3} more" if len(notes) > 3 else "")
        warnings.warn(f"JSON schema compiled with approximations: {shown}", SchemaApproximationWarning,
                      stacklevel=4)
    return SchemaLanguage(dfa, notes)


def schema_dfa(schema: Any) -> CharDFA:
    return compile_schema(schema).dfa


# --------------------------------------------------------------------------------------------------------------
# The compiler

_WS = opt(lit(" "))
_COMMA = seq(lit(","), _WS)
_COLON = seq(lit(":"), _WS)
_JSON_CHAR = alt(cset(JSON_PLAIN), seq(lit("\\"), cset(cs_chars('"\\bfnrt'))))
_NULL = lit("null")
_BOOL = alt(lit("true"), lit("false"))
_UINT = alt(lit("0"), seq(cset(NONZERO), rep(cset(DIGIT), 0, None)))
_INT = seq(opt(lit("-")), _UINT)
_FRAC = seq(lit("."), rep(cset(DIGIT), 1, None))
_EXP = seq(cset(cs_chars("eE")), opt(cset(cs_chars("+-"))), rep(cset(DIGIT), 1, None))
_NUMBER = seq(_INT, opt(_FRAC), opt(_EXP))
_STRING_ANY = seq(lit('"'), rep(_JSON_CHAR, 0, None), lit('"'))


class _OverBudget(Exception):
    """The schema tree grew over ``NODE_BUDGET`` nodes (retried with less recursion)."""


def _ref_cycles(root: Any) -> dict[str, int]:
    """The references that can reach themselves, each with the id of its cycle group (strongly connected component
    of the graph "the target of r holds $ref s"); references outside every cycle are left out."""
    def refs_in(x: Any) -> set[str]:
        out: set[str] = set()
        stack = [x]
        while stack:
            y = stack.pop()
            if isinstance(y, dict):
                if isinstance(y.get("$ref"), str):
                    out.add(y["$ref"])
                stack.extend(y.values())
            elif isinstance(y, list):
                stack.extend(y)
        return out

    c = _Compiler(root, ref_depth=1, any_depth=0)
    edges: dict[str, set[str]] = {}
    todo = list(refs_in(root))
    while todo:
        r = todo.pop()
        if r in edges:
            continue
        try:
            edges[r] = refs_in(c.resolve_ref(r, "#"))
        except SchemaError:
            edges[r] = set()
        todo.extend(edges[r] - edges.keys())

    def reach(r: str) -> set[str]:
        seen: set[str] = set()
        todo = list(edges.get(r, ()))
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(edges.get(x, ()))
        return seen

    reaches = {r: reach(r) for r in edges}
    groups: dict[str, int] = {}
    for r in edges:
        if r in reaches[r] and r not in groups:
            gid = len(set(groups.values()))
            for s in reaches[r]:
                if r in reaches.get(s, ()):
                    groups[s] = gid
    return groups


class _Compiler:
    def __init__(self, root: Any, *, ref_depth: int, any_depth: int, budget: int | None = None,
                 cycles: dict[str, int] | None = None) -> None:
        self.root = root
        self.budget = budget
        self.cycles = cycles or {}
        self.calls = 0
        self.ref_depth = ref_depth
        self.any_depth = any_depth
        self.stack: list[str] = []
        self.notes: list[str] = []
        self._any: dict[int, Node] = {}

    # ---- helpers ---------------------------------------------------------------------------------------------

    def any_value(self, depth: int) -> Node:
        got = self._any.get(depth)
        if got is None:
            parts = [_NULL, _BOOL, _NUMBER, _STRING_ANY]
            if depth > 0:
                inner = self.any_value(depth - 1)
                parts.append(_array_of(inner, 0, None))
                parts.append(_map_of(_STRING_ANY, inner, 0, None))
            got = self._any[depth] = alt(*parts)
        return got

    def expanded(self, ref: str) -> int:
        """How many times the recursion of ``ref`` is already expanded on this path: the references of its cycle
        group on the stack (mutually recursive definitions count together, so ``REF_DEPTH`` bounds the nesting
        depth, not the depth per definition)."""
        group = self.cycles.get(ref)
        if group is None:
            return self.stack.count(ref)
        return sum(1 for r in self.stack if self.cycles.get(r) == group)

    def resolve_ref(self, ref: Any, path: str) -> Any:
        if not isinstance(ref, str):
            raise SchemaError("$ref must be a string", path, "$ref")
        base, _, frag = ref.partition("#")
        root_id = self.root.get("$id") if isinstance(self.root, dict) else None
        if base and base != root_id:
            raise SchemaError(f"$ref {ref!r} points outside the schema (only '#...' references are supported)",
                              path, "$ref")
        if frag and not frag.startswith("/"):
            target = self._anchor(frag)
            if target is None:
                raise SchemaError(f"$ref {ref!r}: no $anchor {frag!r} in the schema", path, "$ref")
            return target
        node = self.root
        from urllib.parse import unquote

        for part in frag.split("/")[1:] if frag else []:
            key = unquote(part).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaError(f"$ref {ref!r} does not resolve (no {key!r})", path, "$ref")
        return node

    def _anchor(self, name: str) -> Any:
        stack = [self.root]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                if x.get("$anchor") == name:
                    return x
                stack.extend(x.values())
            elif isinstance(x, list):
                stack.extend(x)
        return None

    def check_refused(self, s: dict, path: str) -> None:
        for key in s:
            if key in REFUSED:
                raise SchemaError(f"keyword {REFUSED[key]} is not supported", path, key)
        for key in ("unevaluatedProperties", "unevaluatedItems"):
            if key in s and s[key] not in (False, True):
                raise SchemaError(f"keyword '{key}' with a schema is not supported", path, key)

    # ---- schemas ---------------------------------------------------------------------------------------------

    def node(self, s: Any, path: str) -> Node:
        self.calls += 1
        if self.budget is not None and self.calls > self.budget:
            raise _OverBudget
        if s is True:
            return self.any_value(self.any_depth)
        if s is False:
            return EMPTY
        if not isinstance(s, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {type(s).__name__}", path)
        if "$ref" in s:
            ref = s["$ref"]
            if self.expanded(ref) >= self.ref_depth:
                self.notes.append(f"recursive $ref {ref!r} expanded {self.ref_depth} times")
                return EMPTY
            target = self.resolve_ref(ref, path)
            rest = {k: v for k, v in s.items() if k != "$ref"}
            merged = self.merge(target, rest, path) if _assertions(rest) else target
            self.stack.append(ref)
            try:
                return self.node(merged, ref if isinstance(ref, str) else path)
            finally:
                self.stack.pop()
        self.check_refused(s, path)
        if "not" in s:
            s = self.negate(s, path)
            if s is False:
                return EMPTY
        if "if" in s:
            return self.node(self.conditional(s, path), path)
        if "allOf" in s:
            items = s["allOf"]
            if not isinstance(items, list) or not items:
                raise SchemaError("allOf must be a non-empty array", path, "allOf")
            refs = [it["$ref"] for it in items if isinstance(it, dict) and isinstance(it.get("$ref"), str)]
            if any(self.expanded(r) >= self.ref_depth for r in refs):
                self.notes.append(f"recursive $ref in allOf at {path} expanded {self.ref_depth} times")
                return EMPTY
            merged = {k: v for k, v in s.items() if k != "allOf"}
            for i, item in enumerate(items):
                merged = self.merge(merged, self.inline(item, f"{path}/allOf/{i}"), f"{path}/allOf/{i}")
            self.stack.extend(refs)  # references merged here count as expanded (recursion through allOf)
            try:
                return self.node(merged, path)
            finally:
                del self.stack[len(self.stack) - len(refs):]
        for key in ("anyOf", "oneOf"):
            if key in s:
                branches = s[key]
                if not isinstance(branches, list) or not branches:
                    raise SchemaError(f"{key} must be a non-empty array", path, key)
                base = {k: v for k, v in s.items() if k != key}
                merged = []
                for i, b in enumerate(branches):
                    sub = f"{path}/{key}/{i}"
                    merged.append(self.merge(base, self.inline(b, sub), sub) if _assertions(base) else b)
                if key == "oneOf" and len(merged) > 1:
                    merged = self.exclusive(merged, path)
                parts = []
                for i, (orig, b) in enumerate(zip(branches, merged, strict=True)):
                    ref = orig.get("$ref") if isinstance(orig, dict) else None
                    if not isinstance(ref, str) or b is orig:
                        parts.append(self.node(b, f"{path}/{key}/{i}"))
                    elif self.expanded(ref) >= self.ref_depth:  # inlined above: count it as expanded here
                        self.notes.append(f"recursive $ref {ref!r} expanded {self.ref_depth} times")
                    else:
                        self.stack.append(ref)
                        try:
                            parts.append(self.node(b, f"{path}/{key}/{i}"))
                        finally:
                            self.stack.pop()
                return alt(*parts)
        return self.typed(s, path)

    def conditional(self, s: dict, path: str) -> Any:
        """``if``/``then``/``else`` as two alternatives: values that pass ``if`` and ``then``, and values of ``else``
        restricted (as for oneOf) so that they fail ``if``; without such a restriction the second is left out."""
        rest = {k: v for k, v in s.items() if k not in ("if", "then", "else")}
        cond = self.inline(s["if"], f"{path}/if")
        then, other = s.get("then", True), s.get("else", True)
        yes = self.merge(self.merge(rest, cond, f"{path}/if"), self.inline(then, f"{path}/then"), f"{path}/then")
        no: Any = self.merge(rest, self.inline(other, f"{path}/else"), f"{path}/else")
        if cond is True or cond == {}:
            no = False
        elif cond is not False and no is not False:
            no = self.make_reject(True if no is True else no, cond, path)
            if no is None:
                self.notes.append(f"values failing 'if' at {path} left out (lmqc cannot tell them apart)")
                no = False
        if yes is False and no is False:
            return False
        return {"anyOf": [x for x in (yes, no) if x is not False]}

    def inline(self, s: Any, path: str, depth: int = 0) -> Any:
        """A schema with its top-level ``$ref`` replaced by the target (for merging)."""
        if isinstance(s, dict) and "$ref" in s and depth < 8:
            target = self.resolve_ref(s["$ref"], path)
            rest = {k: v for k, v in s.items() if k != "$ref"}
            target = self.inline(target, path, depth + 1)
            return self.merge(target, rest, path) if _assertions(rest) else target
        return s

    def typed(self, s: dict, path: str) -> Node:
        types = self.types_of(s, path)
        if "const" in s or "enum" in s:
            return self.literals(s, types, path)
        if "any" in types:
            return self.any_value(self.any_depth)
        parts = []
        for t in types:
            if t == "null":
                if not any(v is None for v in s.get("_not_values", ())):
                    parts.append(_NULL)
            elif t == "boolean":
                parts.append(alt(*(lit(json.dumps(v)) for v in (True, False)
                                   if not any(w is v for w in s.get("_not_values", ())))))
            elif t in ("integer", "number"):
                parts.append(self.number(s, t == "integer", path))
            elif t == "string":
                parts.append(self.string(s, path))
            elif t == "array":
                parts.append(self.array(s, path))
            elif t == "object":
                parts.append(self.object(s, path))
        out = alt(*parts)
        if out == EMPTY and path == "#" and "type" not in s and not s.get("_inferred_only"):
            # a root without 'type': the keywords named the types the writer had in mind, and those allow no
            # value; every other type is valid (its keywords are absent), so a value of one of them is written
            # (only at the root: inside oneOf/not narrowing, the types a branch generates must stay as inferred)
            rest = [t for t in ("null", "boolean", "number", "string", "array", "object") if t not in types
                    and t not in set(s.get("_not_types", ())) | ({"number"} if "integer" in types else set())]
            if rest:
                self.notes.append(f"the {'/'.join(types)} values of {path} are impossible: writing {'/'.join(rest)}")
                out = self.typed({**s, "type": rest, "_inferred_only": True}, path)
        return out

    def types_of(self, s: dict, path: str) -> list[str]:
        ts = self._types_of(s, path)
        excluded = set(s.get("_not_types", ()))
        if not excluded:
            return ts
        if "any" in ts:
            ts = ["null", "boolean", "object", "array", "number", "string"]
        if "number" in excluded:
            excluded.add("integer")
        out = [t for t in ts if t not in excluded]
        if "integer" in excluded and "number" in out:
            s["_fractional"] = True  # numbers that are not integers
        return out

    def _types_of(self, s: dict, path: str) -> list[str]:
        t = s.get("type")
        if t is not None:
            ts = [t] if isinstance(t, str) else t
            if not isinstance(ts, list) or not all(isinstance(x, str) and x in JSON_TYPES for x in ts):
                raise SchemaError(f"invalid type {t!r}", path, "type")
            if "number" in ts and "integer" in ts:
                ts = [x for x in ts if x != "integer"]
            return list(dict.fromkeys(ts))
        # no type: the keywords present say which types the writer had in mind (a subset of what is valid)
        keys = set(s)
        inferred = []
        if keys & _OBJECT_KEYS:
            inferred.append("object")
        if keys & _ARRAY_KEYS:
            inferred.append("array")
        if keys & _STRING_KEYS:
            inferred.append("string")
        if keys & _NUMBER_KEYS:
            inferred.append("number")
        if inferred:
            return inferred
        if "const" in s or "enum" in s:
            return list(JSON_TYPES[:-1])
        return ["any"]  # type: ignore[list-item]

    def literals(self, s: dict, types: list[str], path: str) -> Node:
        if "const" in s:
            values = [s["const"]]
        else:
            values = s["enum"]
            if not isinstance(values, list):
                raise SchemaError("enum must be an array", path, "enum")
        if "const" in s and "enum" in s:
            values = [v for v in s["enum"] if _json_equal(v, s["const"])]
        if "any" not in types:
            values = [v for v in values if _json_type_ok(v, types)]
        texts = [json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False) for v in values]
        node = alt(*(lit(t) for t in texts))
        rest = {k: v for k, v in s.items() if k not in ("enum", "const", "type") and k not in _ANNOTATIONS}
        if _assertions(rest) and node != EMPTY:
            # other keywords constrain the literals too: intersect with their language
            others = self.typed({**rest, **({"type": s["type"]} if "type" in s else {})}, path)
            a = regular.compile_node(node)
            b = regular.compile_node(others)
            node = dfa_node(regular.intersect(a, b))
        if node == EMPTY:
            self.notes.append(f"no enum/const value at {path} satisfies the rest of its schema")
        return node

    # ---- numbers ---------------------------------------------------------------------------------------------

    def number(self, s: dict, integer: bool, path: str) -> Node:
        lo, lo_strict = _bound(s, "minimum", "exclusiveMinimum", path)
        hi, hi_strict = _bound(s, "maximum", "exclusiveMaximum", path)
        fmt = s.get("format")
        if integer and fmt in INT_FORMATS:
            flo, fhi = INT_FORMATS[fmt]
            if lo is None or lo < flo:
                lo, lo_strict = Decimal(flo), False
            if hi is None or hi > fhi:
                hi, hi_strict = Decimal(fhi), False
        mult = s.get("multipleOf")
        if mult is not None:
            if isinstance(mult, bool) or not isinstance(mult, int | float) or mult <= 0:
                raise SchemaError(f"multipleOf must be a positive number, got {mult!r}", path, "multipleOf")
        if integer:
            ilo = None if lo is None else _int_above(lo, lo_strict)
            ihi = None if hi is None else _int_below(hi, hi_strict)
            if ilo is not None and ihi is not None and ilo > ihi:
                return EMPTY
            parts = []
            if ilo is not None:
                parts.append(_compiled(_int_ge(ilo)))
            if ihi is not None:
                parts.append(_compiled(_int_le(ihi)))
            if mult is not None:
                parts.append(_multiple_dfa(_decimal(mult, path), integer=True, path=path))
            if any(isinstance(v, int | float) and not isinstance(v, bool) for v in s.get("_not_values", ())):
                raise SchemaError("'not' of number values is not supported", path, "not")
            return _intersect_all(parts, _INT)
        if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_strict or hi_strict))):
            return EMPTY
        parts = []
        if lo is not None:
            parts.append(_compiled(_num_ge(lo, lo_strict)))
        if hi is not None:
            parts.append(_compiled(_num_le(hi, hi_strict)))
        if mult is not None:
            parts.append(_multiple_dfa(_decimal(mult, path), integer=False, path=path))
        if s.get("_fractional"):
            parts.append(_compiled(_FRACTIONAL))
        if any(isinstance(v, int | float) and not isinstance(v, bool) for v in s.get("_not_values", ())):
            raise SchemaError("'not' of number values is not supported", path, "not")
        return _intersect_all(parts, _NUMBER)

    # ---- strings ---------------------------------------------------------------------------------------------

    def string(self, s: dict, path: str) -> Node:
        lo = _count(s, "minLength", path, 0)
        hi = _count(s, "maxLength", path, None)
        if hi is not None and hi < lo:
            return EMPTY
        if hi is not None and hi > max(LENGTH_CAP, lo):
            self.notes.append(f"maxLength {hi} at {path} written as at most {max(LENGTH_CAP, lo)} characters")
            hi = max(LENGTH_CAP, lo)
        langs: list[CharDFA] = []
        fmt = s.get("format")
        if fmt is not None:
            if not isinstance(fmt, str):
                raise SchemaError("format must be a string", path, "format")
            if fmt in FORMATS:
                langs.append(_format_dfa(fmt))
            else:
                self.notes.append(f"format {fmt!r} at {path} is an annotation here (not checked)")
        patterns = [s["pattern"]] if "pattern" in s else []
        patterns += s.get("_patterns", [])
        for p in patterns:
            if not isinstance(p, str):
                raise SchemaError("pattern must be a string", path, "pattern")
            try:
                langs.append(_pattern_dfa(p))
            except regular.PatternError as e:
                raise SchemaError(f"pattern {p!r}: {e}", path, "pattern") from None
        for p in s.get("_not_patterns", []):
            try:
                langs.append(charlang.complement(_pattern_dfa(p)))
            except regular.PatternError as e:
                raise SchemaError(f"pattern {p!r}: {e}", path, "not") from None
        for other in s.get("_not_strings", ()):
            cover = self.string_cover(other, path)
            if cover is None:  # pragma: no cover - make_reject only records schemas that have a cover
                raise SchemaError("oneOf: a branch's strings cannot be excluded", path, "oneOf")
            langs.append(charlang.complement(cover))
        not_strings = [v for v in s.get("_not_values", ()) if isinstance(v, str)]
        if not_strings:
            langs.append(charlang.complement(charlang.literal_set_dfa(tuple(dict.fromkeys(not_strings)))))
        if not langs:
            return seq(lit('"'), rep(_JSON_CHAR, lo, hi), lit('"'))
        if lo or hi is not None:
            langs.append(_length_dfa(lo, hi))
        d = langs[0]
        for other in langs[1:]:
            d = regular.intersect(d, other)
        return seq(lit('"'), dfa_node(d, encode=True), lit('"'))

    # ---- arrays ----------------------------------------------------------------------------------------------

    def array(self, s: dict, path: str) -> Node:
        lo = _count(s, "minItems", path, 0)
        hi = _count(s, "maxItems", path, None)
        if hi is not None and hi > max(ITEMS_CAP, lo):
            self.notes.append(f"maxItems {hi} at {path} written as at most {max(ITEMS_CAP, lo)} items")
            hi = max(ITEMS_CAP, lo)
        items = s.get("items")
        prefix: list[Any] = []
        if isinstance(items, list):  # draft 4-2019 tuples
            prefix = items
            rest = s.get("additionalItems", True)
            rest_path = f"{path}/additionalItems"
        else:
            if "prefixItems" in s:
                prefix = s["prefixItems"]
                if not isinstance(prefix, list):
                    raise SchemaError("prefixItems must be an array", path, "prefixItems")
            rest = items if items is not None else s.get("unevaluatedItems", True)
            rest_path = f"{path}/items"
        if s.get("uniqueItems") is True:
            if lo > 1:
                raise SchemaError(
                    f"uniqueItems with minItems {lo} is not supported (lmqc writes unique arrays of at most one item)",
                    path, "uniqueItems")
            if hi is None or hi > 1:
                self.notes.append(f"uniqueItems at {path}: arrays of at most one item")
            hi = 1 if hi is None else min(hi, 1)
        if hi is not None and hi < lo:
            return EMPTY
        pnodes = [self.node(p, f"{path}/prefixItems/{i}") for i, p in enumerate(prefix)]
        rnode = self.node(rest, rest_path) if (hi is None or hi > len(prefix)) else EMPTY
        k = len(pnodes)
        # T[i]: what may follow once i items are written (i >= 1)
        if hi is not None and hi <= k:
            tail = EPS
            start = hi
        else:
            extra_lo = max(lo - k, 0)
            extra_hi = None if hi is None else hi - k
            tail = rep(seq(_COMMA, rnode), extra_lo, extra_hi) if rnode != EMPTY else (EPS if extra_lo == 0 else EMPTY)
            start = k
        if k == 0:
            if rnode == EMPTY:
                body = EPS if lo == 0 else EMPTY
            else:
                first = seq(rnode, rep(seq(_COMMA, rnode), max(lo - 1, 0), None if hi is None else hi - 1))
                body = opt(first) if lo == 0 else first
            return seq(lit("["), body, lit("]"))
        t = tail
        for i in range(min(start, k), 0, -1):  # item i (1-based) is pnodes[i-1]
            emitted = seq(_COMMA if i > 1 else EPS, pnodes[i - 1], t)
            t = alt(emitted, EPS) if i - 1 >= lo else emitted
        return seq(lit("["), t, lit("]"))

    # ---- objects ---------------------------------------------------------------------------------------------

    def object(self, s: dict, path: str) -> Node:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError("properties must be an object", path, "properties")
        required = s.get("required", [])
        if not isinstance(required, list):
            required = []  # draft 3's boolean 'required' inside a property: handled by the parent
        required = list(dict.fromkeys(r for r in required if isinstance(r, str)))
        # draft 3 style: "required": true inside a property schema
        for name, sub in props.items():
            if isinstance(sub, dict) and sub.get("required") is True and name not in required:
                required.append(name)
        ap = s.get("additionalProperties", s.get("unevaluatedProperties", True))
        pp = s.get("patternProperties", {})
        if not isinstance(pp, dict):
            raise SchemaError("patternProperties must be an object", path, "patternProperties")
        names = s.get("propertyNames")
        lo = _count(s, "minProperties", path, 0)
        hi = _count(s, "maxProperties", path, None)
        props = dict(props)
        skip: set[str] = set(s.get("_omit", ()))
        self._dependencies(s, props, required, skip, path)
        for group in s.get("_absent_one", ()):
            if any(k in skip or (k not in props and k not in required) for k in group):
                continue
            optional = [k for k in group if k not in required]
            if not optional:
                self.notes.append(f"'not' at {path} forbids required properties {group}")
                return EMPTY
            skip.add(optional[-1])
        if any(k in skip for k in required):
            return EMPTY
        for name in required:
            if name not in props:
                matching = [v for p, v in pp.items() if _search(p, name, path)]
                if matching:
                    props[name] = {"allOf": matching} if len(matching) > 1 else matching[0]
                elif ap is False:
                    self.notes.append(f"required property {name!r} at {path} is not allowed by additionalProperties")
                    return EMPTY
                else:
                    props[name] = ap if isinstance(ap, dict) else True
        if not props:
            return self.map(s, ap, pp, names, lo, hi, path)
        named: list[tuple[Node, Node, bool]] = []  # (key, value, required) of each member
        name_lang = self.names_dfa(names, path) if names is not None else None
        for name, sub in props.items():
            if name in skip:
                continue
            req = name in required
            if name_lang is not None and not name_lang.accepts(json.dumps(name, ensure_ascii=False)):
                if req:
                    raise SchemaError(f"required property {name!r} does not satisfy propertyNames", path,
                                      "propertyNames")
                continue
            sub_path = f"{path}/properties/{_escape(name)}"
            extra = [v for p, v in pp.items() if _search(p, name, path)]
            if extra:
                sub = self.merge(self.inline(sub, sub_path), {"allOf": extra}, sub_path)
            value = self.node(sub, sub_path)
            if value == EMPTY:
                if req:
                    return EMPTY
                continue
            named.append((lit(json.dumps(name, ensure_ascii=False)), value, req))
        if hi is not None and sum(1 for _, _, r in named if r) > hi:
            return EMPTY
        if len(named) < lo:
            return EMPTY
        members = tuple((seq(key, _COLON, value), req) for key, value, req in named)
        ordered = obj_node(lit("{"), members, _COMMA, lit("}"), lo, hi)
        return self._unordered(ordered, named, lo, hi, path)

    def _unordered(self, ordered: Node, named: list[tuple[Node, Node, bool]], lo: int, hi: int | None,
                   path: str) -> Node:
        """``ordered``, or, when it is too large because optional properties share large value schemas, the
        required properties in order followed by optional properties in any order, repeats allowed.

        Written in order, an object's automaton holds a copy of every optional value per position (what follows
        a value depends on which property it was): 160 properties sharing one 5,000-state record are 800,000
        states. In any order, properties with the same value schema share one copy (the state after a value no
        longer knows which key it followed, so keys may repeat: a JSON parser keeps the last, which is valid).
        """
        n_required = sum(1 for _, _, r in named if r)
        if hi is not None or lo > n_required:
            return ordered  # counts of optional members need the ordered form
        if len(named) - n_required < _UNORDERED_MIN:
            return ordered  # (and spares sizing every small object's subtree)
        memo: dict[int, int] = {}
        size = regular._size(ordered, memo)
        if size <= OBJECT_BUDGET:
            return ordered
        groups: dict[Node, list[Node]] = {}
        for key, value, req in named:
            if not req:
                groups.setdefault(value, []).append(key)
        member = alt(*(seq(alt(*keys), _COLON, value) for value, keys in groups.items()))
        required = [seq(key, _COLON, value) for key, value, req in named if req]
        if required:
            body = seq(required[0], *(seq(_COMMA, r) for r in required[1:]), rep(seq(_COMMA, member), 0, None))
        else:
            body = opt(seq(member, rep(seq(_COMMA, member), 0, None)))
        unordered = seq(lit("{"), body, lit("}"))
        if regular._size(unordered, memo) * 2 > size:  # sharing must at least halve it
            return ordered
        self.notes.append(f"the optional properties at {path} are written in any order and may repeat (in schema "
                          f"order they need about {size} automaton states)")
        return unordered

    def _dependencies(self, s: dict, props: dict, required: list[str], skip: set[str], path: str) -> None:
        deps: dict[str, Any] = {}
        for key in ("dependencies", "dependentRequired", "dependentSchemas"):
            d = s.get(key)
            if isinstance(d, dict):
                deps.update(d)
        for trigger, dep in deps.items():
            if trigger not in props and trigger not in required:
                continue  # never written
            if trigger not in required:
                skip.add(trigger)  # an optional trigger is left out: the dependency never applies
                self.notes.append(f"property {trigger!r} at {path} left out (it has dependencies)")
                continue
            if isinstance(dep, list):
                for name in dep:
                    if isinstance(name, str) and name not in required:
                        required.append(name)
            elif isinstance(dep, dict | bool):
                raise SchemaError(f"a schema dependency of required property {trigger!r} is not supported",
                                  path, "dependentSchemas")

    def map(self, s: dict, ap: Any, pp: dict, names: Any, lo: int, hi: int | None, path: str) -> Node:
        forbidden = [*s.get("_omit", []), *(k for g in s.get("_absent_one", []) for k in g)]
        extra: dict[str, Any] = {"_not_values": forbidden} if forbidden else {}
        if pp:
            if len(pp) > 1:
                raise SchemaError("patternProperties with several patterns (and no properties) is not supported",
                                  path, "patternProperties")
            (pattern, value_schema), = pp.items()
            key_schema: dict[str, Any] = {"type": "string", "pattern": pattern, **extra}
            if isinstance(names, dict):
                key_schema = self.merge(key_schema, names, path)
            key = self.key(key_schema, f"{path}/patternProperties")
            value = self.node(value_schema, f"{path}/patternProperties/{_escape(pattern)}")
        elif ap is False:
            return lit("{}") if lo == 0 else EMPTY
        else:
            if isinstance(names, dict):
                key = self.key({**self.inline(names, path), "type": "string", **extra}, f"{path}/propertyNames")
            elif names is False:
                return lit("{}") if lo == 0 else EMPTY
            else:
                key = self.string({"type": "string", **extra}, path) if extra else _STRING_ANY
            value = self.node(ap, f"{path}/additionalProperties") if isinstance(ap, dict) else self.any_value(
                max(self.any_depth - 1, 0))
        if value == EMPTY or key == EMPTY:
            return lit("{}") if lo == 0 else EMPTY
        if hi is not None and hi < lo:
            return EMPTY
        return _map_of(key, value, lo, hi)

    def names_dfa(self, names: Any, path: str) -> CharDFA | None:
        if names is True:
            return None
        if names is False:
            return regular.compile_node(EMPTY)
        node = self.key({**self.inline(names, path), "type": "string"}, f"{path}/propertyNames")
        return regular.compile_node(node)

    def key(self, s: dict, path: str) -> Node:
        """Object keys: the JSON strings of ``s`` with every keyword applied (:meth:`string` reads only the
        string keywords: ``enum``, ``anyOf``, ``not`` ... of ``propertyNames`` were dropped)."""
        return self.node({**s, "type": "string"}, path)

    # ---- oneOf -----------------------------------------------------------------------------------------------

    def exclusive(self, branches: list[Any], path: str) -> list[Any]:
        """The oneOf branches restricted so that whatever lmqc writes for one branch fails every other one.

        A branch is restricted by leaving out an optional property another branch requires, by always writing
        a property another branch forbids, by dropping values or types the other branch accepts, or (numbers
        against integers) by writing only non-integers; a branch that cannot be restricted is left out.
        """
        resolved = [self.inline(b, f"{path}/oneOf/{i}") for i, b in enumerate(branches)]
        out: list[Any] = []
        for i, a in enumerate(resolved):
            cur = a
            for j, b in enumerate(resolved):
                if i != j and cur is not None and cur is not False:
                    cur = self.make_reject(cur, b, path)
            if cur is None:
                self.notes.append(f"oneOf branch {path}/oneOf/{i} left out (it may overlap another branch)")
                cur = False
            out.append(cur)
        if all(x is False for x in out) and not all(r is False for r in resolved):  # (all False: no value at all)
            raise SchemaError("oneOf: lmqc cannot write a value that matches exactly one branch (the branches may "
                              "overlap)", path, "oneOf")
        return out

    def make_reject(self, a: Any, b: Any, path: str, depth: int = 0) -> Any:
        """``a`` restricted so that no text lmqc writes for it validates against ``b``; None if it cannot."""
        if a is False or b is False:
            return a
        if depth > 3:
            return None
        if b is True or b == {}:
            return None
        if a is True:
            a = {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            return None
        b = self.inline(b, path)
        if b is False:
            return a
        ta = _types_generated(a, self)
        overlap = ta & _types_accepted(b)
        if not overlap:
            return a
        if _literal_values(a) is not None and _literal_values(b) is not None:
            vb = _literal_values(b)
            keep = [v for v in _literal_values(a) if not any(_json_equal(v, w) for w in vb)]
            out = {k: v for k, v in a.items() if k not in ("const", "enum")}
            out["enum"] = keep
            return out if keep else False
        vb = _literal_values(b)
        if vb is not None and set(b) - _ANNOTATIONS <= {"enum", "const", "type"} and all(
            v is None or isinstance(v, bool | str) for v in vb
        ):
            return {**a, "_not_values": [*a.get("_not_values", []), *vb]}
        if overlap <= {"string"}:
            cover = self.string_cover(b, path)
            if cover is not None:
                va = _literal_values(a)
                if va is not None:  # string literals b accepts are dropped
                    keep = [v for v in va if not (isinstance(v, str) and cover.accepts(v))]
                    out = {k: v for k, v in a.items() if k not in ("const", "enum")}
                    out["enum"] = keep
                    return out if keep else False
                return {**a, "_not_strings": [*a.get("_not_strings", []), b]}
        if overlap <= {"object"}:
            got = self._object_reject(a, b, path, depth)
            if got is not None:
                return got
        if overlap <= {"array"}:
            got = self._array_reject(a, b, path, depth)
            if got is not None:
                return got
        if overlap <= {"integer", "number"}:
            da, db = set(self.types_of(a, path)), set(self.types_of(b, path))
            if "number" in da and "number" not in db and "integer" in db and not _has_numeric_bounds(b):
                return {**a, "_not_types": [*a.get("_not_types", []), "integer"]}
        rest = ta - overlap - ({"integer"} if "number" in overlap else set())
        if rest and "any" not in rest:
            return {**a, "_not_types": [*a.get("_not_types", []), *sorted(overlap)]}
        return None

    def _object_reject(self, a: dict, b: dict, path: str, depth: int) -> Any:
        pa, ra = _object_parts(a, self)
        pb = b.get("properties", {}) if isinstance(b.get("properties"), dict) else {}
        rb = _object_parts(b, self)[1]
        omitted = set(a.get("_omit", ()))
        if not pa and not ra:
            return None  # a writes a map: any keys
        writable = (set(pa) | set(ra)) - omitted
        if set(rb) - writable:
            return a  # b requires a key a never writes
        b_closed = b.get("additionalProperties", b.get("unevaluatedProperties", True)) is False and not b.get(
            "patternProperties")
        if b_closed and set(ra) - set(pb):
            return a  # a always writes a key b forbids
        shared = [k for k in ra if k in rb]  # in schema order: a set's order changes with the hash seed
        for key in shared:
            sa, sb = self.inline(pa.get(key, True), path), self.inline(pb.get(key, True), path)
            if isinstance(sa, dict) and isinstance(sb, dict) and _disjoint(sa, sb, self, depth + 1):
                return a
        for key in pa:  # a property both describe with values that exclude each other: a always writes it
            if key in pb and key not in omitted:
                sa, sb = self.inline(pa[key], path), self.inline(pb[key], path)
                if isinstance(sa, dict) and isinstance(sb, dict) and _disjoint(sa, sb, self, depth + 1):
                    return a if key in ra else {**a, "required": [*ra, key]}
        optional_in_a = [k for k in rb if k not in ra and k in writable]
        if optional_in_a:
            return {**a, "_omit": [*a.get("_omit", []), optional_in_a[0]]}
        if b_closed:
            extra = [k for k in pa if k not in pb and k not in omitted]
            if extra:
                return {**a, "required": [*ra, extra[0]]}
        for key in shared:  # make a shared required value fail b (the first that can, in schema order)
            sa, sb = self.inline(pa.get(key, True), path), self.inline(pb.get(key, True), path)
            if isinstance(sb, dict) and isinstance(sa, dict | bool):
                got = self.make_reject(sa if sa is not True else {}, sb, path, depth + 1)
                if got is not None and got is not False:
                    return {**a, "properties": {**pa, key: got}}
        for key in pa:  # a property both describe: a always writes it, with a value that fails b's
            if key in pb and key not in omitted:
                sa, sb = self.inline(pa[key], path), self.inline(pb[key], path)
                if isinstance(sb, dict) and isinstance(sa, dict | bool):
                    got = self.make_reject(sa if sa is not True else {}, sb, path, depth + 1)
                    if got is not None and got is not False:
                        return {**a, "properties": {**pa, key: got}, "required": list(dict.fromkeys([*ra, key]))}
        return None

    def _array_reject(self, a: dict, b: dict, path: str, depth: int) -> Any:
        """Arrays of ``a`` that fail ``b``: more items than ``b``'s ``maxItems`` or fewer than its ``minItems``;
        or, when no item of ``a`` is an item of ``b``, any non-empty array (the empty one is all they share)."""
        ia, ib = a.get("items", True), b.get("items", True)
        if any(k in x for x in (a, b) for k in ("prefixItems", "contains")) or isinstance(ia, list) or isinstance(
                ib, list):
            return None
        lo_a, hi_a = _count(a, "minItems", path, 0), _count(a, "maxItems", path, None)
        lo_b, hi_b = _count(b, "minItems", path, 0), _count(b, "maxItems", path, None)
        if (hi_b is not None and lo_a > hi_b) or (hi_a is not None and hi_a < lo_b):
            return a  # the item counts never meet
        sa, sb = self.inline(ia, path), self.inline(ib, path)
        if sa is True:
            sa = {}
        if isinstance(sa, dict) and isinstance(sb, dict) and _disjoint(sa, sb, self, depth + 1):
            if lo_b >= 1 or lo_a >= 1:
                return a
            return False if hi_a == 0 else {**a, "minItems": 1}
        if hi_b is not None and (hi_a is None or hi_a > hi_b) and not (a.get("uniqueItems") and hi_b >= 1):
            return {**a, "minItems": hi_b + 1}  # more items than b allows (unique items: lmqc writes one at most)
        if lo_b > 0 and lo_a < lo_b:
            return {**a, "maxItems": lo_b - 1}  # fewer items than b needs
        return None

    def string_cover(self, b: Any, path: str) -> CharDFA | None:
        """A DFA over string contents accepting every string ``b`` accepts (a superset), or None.

        Used to write strings that fail ``b`` (oneOf), so it must never miss one of ``b``'s strings: formats are
        ignored (a superset), a ``maxLength`` over ``LENGTH_CAP`` too, and patterns are used only when lmqc reads
        them as Python's ``re`` does (no ``.``, class escapes such as ``\\d``, or ``$`` before the end).
        """
        b = self.inline(b, path)
        if b is True or not isinstance(b, dict):
            return None
        if {k for k in b if k in _KNOWN or k.startswith("_")} - _EXACT_STRING_KEYS:
            return None
        if "type" in b and "string" not in ([b["type"]] if isinstance(b["type"], str) else b["type"]):
            return regular.compile_node(EMPTY)
        langs: list[CharDFA] = []
        try:
            for p in ([b["pattern"]] if "pattern" in b else []) + list(b.get("_patterns", [])):
                pat = _python_like_pattern(p)
                if pat is None:
                    return None
                langs.append(_pattern_dfa(pat))
        except regular.PatternError:
            return None
        lo = _count(b, "minLength", path, 0)
        hi = _count(b, "maxLength", path, None)
        if hi is not None and hi > max(LENGTH_CAP, lo):
            hi = None
        if lo or hi is not None:
            langs.append(_length_dfa(lo, hi))
        values = _literal_values(b)
        if values is not None:
            langs.append(charlang.literal_set_dfa(tuple(dict.fromkeys(v for v in values if isinstance(v, str)))))
        not_values = [v for v in b.get("_not_values", ()) if isinstance(v, str)]
        if "not" in b:
            n = self.inline(b["not"], path)
            nv = _literal_values(n)
            if not isinstance(n, dict) or nv is None or set(n) - _ANNOTATIONS - {"enum", "const", "type"}:
                return None
            if "type" in n and n["type"] != "string":
                return None
            not_values += [v for v in nv if isinstance(v, str)]
        if not_values:
            langs.append(charlang.complement(charlang.literal_set_dfa(tuple(dict.fromkeys(not_values)))))
        if b.get("_not_strings"):
            return None  # b restricted by a oneOf itself: not needed, stay simple
        if not langs:
            return charlang.complement(regular.compile_node(EMPTY))
        d = langs[0]
        for other in langs[1:]:
            d = regular.intersect(d, other)
        return d

    def negate(self, s: dict, path: str) -> Any:
        """``s`` without its ``not``, the negation folded into restrictions lmqc can write; an error otherwise."""
        rest = {k: v for k, v in s.items() if k != "not"}
        n = self.inline(s["not"], f"{path}/not")
        if n is True or (isinstance(n, dict) and not _assertions(n)):
            return False
        if n is False:
            return rest
        if not isinstance(n, dict):
            raise SchemaError("'not' must hold a schema", path, "not")
        keys = set(n) - _ANNOTATIONS

        def required_groups(x: Any) -> list[list[str]] | None:
            """``x`` as an OR of conjunctions of required keys, if that is all it says."""
            if isinstance(x, dict) and isinstance(x.get("required"), list) and x["required"]:
                return [list(x["required"])]  # one of them absent: x fails, whatever else it says
            if isinstance(x, dict) and set(x) - _ANNOTATIONS == {"anyOf"} and isinstance(x["anyOf"], list):
                out = []
                for y in x["anyOf"]:
                    g = required_groups(self.inline(y, path))
                    if g is None:
                        return None
                    out += g
                return out
            if isinstance(x, dict) and set(x) - _ANNOTATIONS == {"allOf"} and isinstance(x["allOf"], list):
                groups = [required_groups(self.inline(y, path)) for y in x["allOf"]]
                if any(g is None or len(g) != 1 for g in groups):
                    return None
                return [[k for g in groups for k in g[0]]]  # type: ignore[index]
            return None

        groups = required_groups(n)
        if groups is not None:
            # not (A or B): every group has a key that is absent
            return {**rest, "_absent_one": [*rest.get("_absent_one", []), *groups]}
        if keys == {"type"}:
            t = n["type"]
            return {**rest, "_not_types": [*rest.get("_not_types", []), *([t] if isinstance(t, str) else t)]}
        if keys <= {"pattern", "type"} and "pattern" in keys and n.get("type", "string") == "string":
            return {**rest, "_not_patterns": [*rest.get("_not_patterns", []), n["pattern"]]}
        if keys and keys <= {"enum", "const", "type"}:
            values = _literal_values(n) or []
            if all(v is None or isinstance(v, bool | str) for v in values):
                return {**rest, "_not_values": [*rest.get("_not_values", []), *values]}
        # otherwise: the values of the rest restricted so that they fail the negated schema (as for oneOf)
        got = self.make_reject(rest if rest else True, n, path)
        if got is not None:
            return got
        raise SchemaError(
            f"keyword 'not' is supported for {{}}, required keys, types, a pattern and string/boolean/null values; "
            f"not for {sorted(keys)}", path, "not")

    # ---- allOf -----------------------------------------------------------------------------------------------

    def merge(self, a: Any, b: Any, path: str) -> Any:
        """A schema that means ``a`` and ``b`` (for allOf); an error names a keyword it cannot combine."""
        if a is False or b is False:
            return False
        if a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise SchemaError("allOf items must be schemas", path, "allOf")
        a = self.inline(a, path)
        b = self.inline(b, path)
        if a is False or b is False:
            return False
        out = dict(a)
        if "if" in a and "if" in b:  # a second conditional waits in allOf (node() unfolds one at a time)
            out["allOf"] = [*out.get("allOf", []), {k: b[k] for k in ("if", "then", "else") if k in b}]
            b = {k: v for k, v in b.items() if k not in ("if", "then", "else")}
        for key, vb in b.items():
            if key not in out:
                out[key] = vb
                continue
            va = out[key]
            if key in _ANNOTATIONS or _json_equal(va, vb) or (key not in _KNOWN and not key.startswith("_")):
                continue  # annotations (and unknown keywords, which validators ignore): either value will do
            if key.startswith("_"):
                out[key] = (va or vb) if isinstance(va, bool) else [*va, *vb]
                continue
            if key == "type":
                ta = {va} if isinstance(va, str) else set(va)
                tb = {vb} if isinstance(vb, str) else set(vb)
                both = (ta & tb) | ({"integer"} if ("integer" in ta and "number" in tb) or (
                    "number" in ta and "integer" in tb) else set())
                if not both:
                    return False
                out[key] = sorted(both)
            elif key == "properties":
                props = dict(va)
                for name, sub in vb.items():
                    props[name] = self.merge(props[name], sub, f"{path}/properties/{_escape(name)}") if name in props else sub
                out[key] = props
            elif key == "required":
                out[key] = list(dict.fromkeys([*va, *vb]))
            elif key == "const":  # two different constants: no value is both
                return False
            elif key in ("enum",):
                out[key] = [x for x in va if any(_json_equal(x, y) for y in vb)]
            elif key in ("minimum", "minLength", "minItems", "minProperties", "exclusiveMinimum") and not isinstance(
                va, bool
            ):
                out[key] = max(va, vb)
            elif key in ("maximum", "maxLength", "maxItems", "maxProperties", "exclusiveMaximum") and not isinstance(
                va, bool
            ):
                out[key] = min(va, vb)
            elif key == "pattern":
                out["_patterns"] = [*out.get("_patterns", []), vb]
            elif key in ("items", "additionalProperties", "propertyNames", "additionalItems", "unevaluatedItems",
                         "unevaluatedProperties") and not isinstance(va, list) and not isinstance(vb, list):
                out[key] = self.merge(va, vb, f"{path}/{key}")
            elif key in ("anyOf", "oneOf"):
                combos = [{"allOf": [x, y]} for x in va for y in vb]
                if len(combos) > 64:
                    raise SchemaError(f"allOf: combining two {key} lists makes too many branches", path, key)
                out[key] = combos
            elif key == "allOf":
                out[key] = [*va, *vb]
            elif key == "not":  # not A and not B: the second one waits in allOf (node() folds one 'not' at a time)
                out["allOf"] = [*out.get("allOf", []), {"not": vb}]
            elif key == "uniqueItems":
                out[key] = bool(va) or bool(vb)
            elif key in ("$defs", "definitions", "patternProperties"):
                merged = dict(va)
                merged.update(vb)
                out[key] = merged
            elif key == "multipleOf":
                da, db = _decimal(va, path), _decimal(vb, path)
                if da % db == 0:
                    out[key] = va
                elif db % da == 0:
                    out[key] = vb
                else:
                    raise SchemaError("allOf: two different multipleOf values", path, "multipleOf")
            else:
                raise SchemaError(f"allOf: cannot combine two different {key!r} values", path, key)
        return out


# --------------------------------------------------------------------------------------------------------------
# Pieces


def _array_of(item: Node, lo: int, hi: int | None) -> Node:
    if hi is not None and hi < lo:
        return EMPTY
    first = seq(item, rep(seq(_COMMA, item), max(lo - 1, 0), None if hi is None else hi - 1))
    return seq(lit("["), opt(first) if lo == 0 else first, lit("]"))


def _map_of(key: Node, value: Node, lo: int, hi: int | None) -> Node:
    kv = seq(key, _COLON, value)
    if hi == 0:
        return lit("{}") if lo == 0 else EMPTY
    first = seq(kv, rep(seq(_COMMA, kv), max(lo - 1, 0), None if hi is None else hi - 1))
    return seq(lit("{"), opt(first) if lo == 0 else first, lit("}"))


def _assertions(s: Any) -> bool:
    return isinstance(s, dict) and any(k not in _ANNOTATIONS for k in s)


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _json_type_ok(v: Any, types: list[str]) -> bool:
    if v is None:
        return "null" in types
    if isinstance(v, bool):
        return "boolean" in types
    if isinstance(v, int):
        return "integer" in types or "number" in types
    if isinstance(v, float):
        return "number" in types or ("integer" in types and v.is_integer())
    if isinstance(v, str):
        return "string" in types
    if isinstance(v, list):
        return "array" in types
    return isinstance(v, dict) and "object" in types


def _search(pattern: str, name: str, path: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error as e:
        raise SchemaError(f"patternProperties pattern {pattern!r} is invalid ({e})", path, "patternProperties") from None


def _count(s: dict, key: str, path: str, default: int | None) -> Any:
    v = s.get(key, default)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise SchemaError(f"{key} must be a non-negative integer, got {v!r}", path, key)
    return v


def _decimal(v: Any, path: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SchemaError(f"expected a number, got {v!r}", path)
    if isinstance(v, float) and not math.isfinite(v):
        raise SchemaError(f"expected a finite number, got {v!r}", path)
    try:
        return Decimal(str(v)) if isinstance(v, float) else Decimal(v)
    except InvalidOperation:  # pragma: no cover
        raise SchemaError(f"expected a number, got {v!r}", path) from None


def _bound(s: dict, inclusive: str, exclusive: str, path: str) -> tuple[Decimal | None, bool]:
    """(bound, strict) from ``minimum``/``exclusiveMinimum`` (draft 4 boolean or draft 6 number form)."""
    inc = s.get(inclusive)
    exc = s.get(exclusive)
    value: Decimal | None = None
    strict = False
    if inc is not None:
        value = _decimal(inc, path)
        strict = exc is True
    if exc is not None and not isinstance(exc, bool):
        e = _decimal(exc, path)
        lower = inclusive == "minimum"
        if value is None or (e >= value if lower else e <= value):
            value, strict = e, True
    return value, strict


def _int_above(lo: Decimal, strict: bool) -> int:
    n = math.floor(lo)
    return n + 1 if (strict or lo != n) else n


def _int_below(hi: Decimal, strict: bool) -> int:
    n = math.ceil(hi)
    return n - 1 if (strict or hi != n) else n


def _digits_any(n: int) -> Node:
    return rep(cset(DIGIT), n, n)


def _fixed_ge(digits: str, strict: bool) -> Node:
    """Digit strings of the same length as ``digits`` that compare >= (or >) it."""
    parts = []
    for i, ch in enumerate(digits):
        d = int(ch)
        if d < 9:
            parts.append(seq(lit(digits[:i]), cset(((ord(ch) + 1, ord("9")),)), _digits_any(len(digits) - i - 1)))
    if not strict:
        parts.append(lit(digits))
    return alt(*parts)


def _fixed_le(digits: str, strict: bool) -> Node:
    parts = []
    for i, ch in enumerate(digits):
        d = int(ch)
        if d > 0:
            parts.append(seq(lit(digits[:i]), cset(((ord("0"), ord(ch) - 1),)), _digits_any(len(digits) - i - 1)))
    if not strict:
        parts.append(lit(digits))
    return alt(*parts)


def _canonical_len(n: int) -> Node:
    """Canonical non-negative integers with exactly ``n`` digits."""
    if n == 1:
        return cset(DIGIT)
    return seq(cset(NONZERO), _digits_any(n - 1))


def _uint_ge(n: int) -> Node:
    """Canonical non-negative integers >= n."""
    if n <= 0:
        return _UINT
    digits = str(n)
    longer = seq(cset(NONZERO), rep(cset(DIGIT), len(digits), None))
    same = _fixed_ge(digits, False)
    return alt(longer, same)


def _uint_le(n: int, positive: bool = False) -> Node:
    """Canonical non-negative integers <= n (``positive``: >= 1 only)."""
    if n < (1 if positive else 0):
        return EMPTY
    digits = str(n)
    shorter = [_canonical_len(k) for k in range(1, len(digits))]
    if positive and shorter:
        shorter[0] = cset(NONZERO)
    if len(digits) == 1:
        return alt(*shorter, cset(((ord("1") if positive else ord("0"), ord(digits)),)))
    parts = []
    d0 = digits[0]
    if d0 > "1":
        parts.append(seq(cset(((ord("1"), ord(d0) - 1),)), _digits_any(len(digits) - 1)))
    parts.append(seq(lit(d0), _fixed_le(digits[1:], False)))
    return alt(*shorter, *parts)


def _int_ge(n: int) -> Node:
    if n <= 0:
        return alt(_UINT, seq(lit("-"), _pos_le(-n)))
    return _uint_ge(n)


def _int_le(n: int) -> Node:
    if n >= 0:
        return alt(seq(lit("-"), _pos_le(None)), _uint_le(n))
    return seq(lit("-"), _uint_ge(-n))


def _pos_le(n: int | None) -> Node:
    """Canonical positive integers <= n (unbounded when None)."""
    if n is None:
        return seq(cset(NONZERO), rep(cset(DIGIT), 0, None))
    return _uint_le(n, positive=True)


def _split_decimal(x: Decimal) -> tuple[int, str]:
    """(integer part, fraction digits without trailing zeros) of a non-negative decimal."""
    i = math.floor(x)
    frac = x - i
    if frac == 0:
        return i, ""
    text = format(frac, "f")
    digits = text.split(".", 1)[1].rstrip("0") if "." in text else ""
    return i, digits


_DIGITS_ANY = rep(cset(DIGIT), 0, None)
_NONZERO_TAIL = seq(_DIGITS_ANY, cset(NONZERO), _DIGITS_ANY)  # digit strings with a non-zero digit


def _frac_ge(f: str, strict: bool) -> Node:
    """Non-empty fraction digit strings g with 0.g >= 0.f (> if strict); f has no trailing zeros."""
    if not f:
        return _NONZERO_TAIL if strict else rep(cset(DIGIT), 1, None)
    d = f[0]
    bigger = seq(cset(((ord(d) + 1, ord("9")),)), _DIGITS_ANY) if d != "9" else EMPTY
    rest = f[1:]
    if rest:
        same = seq(lit(d), _frac_ge(rest, strict))
    else:
        same = seq(lit(d), _NONZERO_TAIL if strict else _DIGITS_ANY)
    return alt(bigger, same)


def _frac_le(f: str, strict: bool) -> Node:
    """Non-empty fraction digit strings g with 0.g <= 0.f (< if strict); f has no trailing zeros."""
    if not f:
        return EMPTY if strict else rep(lit("0"), 1, None)
    d = f[0]
    smaller = seq(cset(((ord("0"), ord(d) - 1),)), _DIGITS_ANY) if d != "0" else EMPTY
    rest = f[1:]
    if rest:
        same = seq(lit(d), opt(_frac_le(rest, strict)))
    else:
        same = EMPTY if strict else seq(lit(d), rep(lit("0"), 0, None))
    return alt(smaller, same)


_FRAC_OPT = opt(_FRAC)


def _mag_ge(a: Decimal, strict: bool) -> Node:
    """Non-negative decimals (no exponent) >= a (> if strict), a >= 0."""
    i, f = _split_decimal(a)
    above = seq(_uint_ge(i + 1), _FRAC_OPT)
    at = seq(lit(str(i)), alt(EPS if (not f and not strict) else EMPTY, seq(lit("."), _frac_ge(f, strict))))
    return alt(above, at)


def _mag_le(b: Decimal, strict: bool) -> Node:
    """Non-negative decimals (no exponent) <= b (< if strict), b >= 0."""
    i, f = _split_decimal(b)
    below = seq(_uint_le(i - 1), _FRAC_OPT) if i >= 1 else EMPTY
    tail = _frac_le(f, strict)
    empty_ok = bool(f) or not strict
    at = seq(lit(str(i)), alt(EPS if empty_ok else EMPTY, seq(lit("."), tail)))
    return alt(below, at)


_MAG_ANY = seq(_UINT, _FRAC_OPT)


def _num_ge(a: Decimal, strict: bool) -> Node:
    if a > 0 or (a == 0 and strict):
        return _mag_ge(a, strict)
    return alt(_MAG_ANY, seq(lit("-"), _mag_le(-a, strict)))


def _num_le(b: Decimal, strict: bool) -> Node:
    if b < 0 or (b == 0 and strict):
        return seq(lit("-"), _mag_ge(-b, strict))
    return alt(seq(lit("-"), _MAG_ANY), _mag_le(b, strict))


def _compiled(node: Node) -> CharDFA:
    return regular.compile_node(node)


def _intersect_all(parts: list[CharDFA], default: Node) -> Node:
    if not parts:
        return default
    d = parts[0]
    for p in parts[1:]:
        d = regular.intersect(d, p)
    return dfa_node(d)


def _multiple_dfa(m: Decimal, *, integer: bool, path: str) -> CharDFA:
    """Decimal texts (``-?`` canonical integer part, for numbers an optional fraction) of multiples of ``m``."""
    sign, digits, exp = m.normalize().as_tuple()
    p = int("".join(map(str, digits)))
    scale = max(-int(exp), 0)  # m = p / 10**scale
    if exp > 0:
        p *= 10 ** int(exp)
    if p > MAX_MODULUS:
        raise SchemaError(f"multipleOf {m} is not supported (its digits make a modulus over {MAX_MODULUS})", path,
                          "multipleOf")
    starts, iclass, cls_of = charlang.literal_alphabet(set("-.0123456789"))
    k_minus, k_dot = cls_of["-"], cls_of["."]
    k_dig = [cls_of[str(d)] for d in range(10)]
    # states: 0 start, 1 after '-', 2 integer part "0", 3 + r integer part with residue r (mod p) started with
    # 1-9; for numbers also: after '.' with integer residue r, fraction digit j (1..scale) with residue r, and
    # trailing zeros once the residue is settled
    INT0 = 3
    DOT0 = INT0 + p
    FR0 = DOT0 + p
    ZEROS = FR0 + scale * p
    n_states = ZEROS + 1 if not integer else INT0 + p
    trans = np.full((n_states, len(cls_of) + 1), -1, dtype=np.int32)
    fin = np.zeros(n_states, dtype=bool)
    trans[0, k_minus] = 1
    for s0 in (0, 1):
        trans[s0, k_dig[0]] = 2
        for d in range(1, 10):
            trans[s0, k_dig[d]] = INT0 + d % p
    for r in range(p):
        for d in range(10):
            trans[INT0 + r, k_dig[d]] = INT0 + (r * 10 + d) % p
    ten_scale = pow(10, scale, p)
    for st, r in [(2, 0)] + [(INT0 + r, r) for r in range(p)]:
        fin[st] = (r * ten_scale) % p == 0
        if not integer:
            trans[st, k_dot] = DOT0 + r
    if not integer:
        for r in range(p):
            for d in range(10):
                if scale >= 1:
                    trans[DOT0 + r, k_dig[d]] = FR0 + (r * 10 + d) % p
                elif d == 0 and r == 0:
                    trans[DOT0 + r, k_dig[d]] = ZEROS
        for j in range(1, scale + 1):
            for r in range(p):
                st = FR0 + (j - 1) * p + r
                fin[st] = (r * pow(10, scale - j, p)) % p == 0
                for d in range(10):
                    if j < scale:
                        trans[st, k_dig[d]] = FR0 + j * p + (r * 10 + d) % p
                    elif d == 0 and r == 0:
                        trans[st, k_dig[d]] = ZEROS
        fin[ZEROS] = True
        trans[ZEROS, k_dig[0]] = ZEROS
    return charlang.minimize(charlang._make(starts, iclass, trans, 0, fin))


@lru_cache(maxsize=64)
def _format_dfa(fmt: str) -> CharDFA:
    return regular.compile_node(regular.from_pattern(FORMATS[fmt], search=False))


@lru_cache(maxsize=512)
def _pattern_dfa(pattern: str) -> CharDFA:
    try:
        return regular.compile_node(regular.from_pattern(pattern, search=True))
    except regular.TooLarge as e:
        raise regular.PatternError(f"regular expression needs too many automaton states ({e})") from None


@lru_cache(maxsize=128)
def _length_dfa(lo: int, hi: int | None) -> CharDFA:
    return regular.compile_node(rep(cset(regular.ANY), lo, hi))


def _types_generated(s: Any, c: _Compiler) -> set[str]:
    if not isinstance(s, dict):
        return set(JSON_TYPES) if s is True else set()
    if "anyOf" in s or "oneOf" in s:
        return set(JSON_TYPES)
    if "allOf" in s:  # what every part may generate
        items = s["allOf"] if isinstance(s["allOf"], list) else []
        out = _types_generated({k: v for k, v in s.items() if k != "allOf"}, c)
        for item in items:
            out &= _types_generated(c.inline(item, "#"), c)
        return out
    if "const" in s or "enum" in s:
        values = [s["const"]] if "const" in s else s.get("enum", [])
        out = set()
        for v in values if isinstance(values, list) else []:
            out |= {t for t in JSON_TYPES if _json_type_ok(v, [t])}
        return out
    ts = c.types_of(s, "#")
    if "any" in ts:
        return set(JSON_TYPES)
    out = set(ts)
    if "number" in out:
        out.add("integer")
    if "integer" in out:
        out.add("number")
    return out


def _types_accepted(s: Any) -> set[str]:
    """The JSON types ``s`` may accept (a superset): a schema without ``type`` accepts every type."""
    if s is False:
        return set()
    if not isinstance(s, dict) or any(k in s for k in ("anyOf", "oneOf", "$ref", "not", "if")):
        return set(JSON_TYPES)
    if "allOf" in s:  # a value every part accepts (a $ref part: any type, still a superset)
        out = _types_accepted({k: v for k, v in s.items() if k != "allOf"})
        for item in s["allOf"] if isinstance(s["allOf"], list) else []:
            out &= _types_accepted(item)
        return out
    values = _literal_values(s)
    if values is not None:
        out = set()
        for v in values:
            out |= {t for t in JSON_TYPES if _json_type_ok(v, [t])}
    elif "type" in s:
        t = s["type"]
        out = {x for x in ([t] if isinstance(t, str) else t if isinstance(t, list) else []) if x in JSON_TYPES}
    else:
        return set(JSON_TYPES)
    if out & {"integer", "number"}:
        out |= {"integer", "number"}  # 1.0 is an integer, 1 a number
    return out


def _disjoint(a: Any, b: Any, c: _Compiler, depth: int = 0) -> bool:
    """Provably: no text lmqc writes for ``a`` validates against ``b``, and vice versa."""
    if a is False or b is False:
        return True
    if not isinstance(a, dict) or not isinstance(b, dict) or depth > 3:
        return False
    ta, tb = _types_generated(a, c), _types_generated(b, c)
    if not (ta & _types_accepted(b)) and not (tb & _types_accepted(a)):
        return True
    if ("const" in a or "enum" in a) and ("const" in b or "enum" in b):
        va = [a["const"]] if "const" in a else a.get("enum", [])
        vb = [b["const"]] if "const" in b else b.get("enum", [])
        if not any(_json_equal(x, y) for x in va for y in vb):
            return True
    if ta <= {"object"} and tb <= {"object"}:
        return _rejects(a, b, c, depth) and _rejects(b, a, c, depth)
    return False


def _rejects(a: dict, b: dict, c: _Compiler, depth: int) -> bool:
    """Every object lmqc writes for ``a`` fails ``b``."""
    pa, ra_list = _object_parts(a, c)
    pb = b.get("properties", {}) if isinstance(b.get("properties"), dict) else {}
    ra, rb = set(ra_list), set(_object_parts(b, c)[1])
    if rb - set(pa) - ra:
        return True  # b requires a key a never writes
    if b.get("additionalProperties") is False and not b.get("patternProperties") and ra - set(pb):
        return True  # a always writes a key b forbids
    for key in ra & rb:
        sa, sb = c.inline(pa.get(key, True), "#"), c.inline(pb.get(key, True), "#")
        if isinstance(sa, dict) and isinstance(sb, dict) and _disjoint(sa, sb, c, depth + 1):
            return True
    return False


def _object_parts(s: dict, c: _Compiler, depth: int = 0) -> tuple[dict[str, Any], list[str]]:
    """The properties and required keys of ``s`` with those of its ``allOf`` parts (what lmqc's merge writes).

    Only the schema's own ``properties`` decide what its ``additionalProperties`` lets through: callers that
    ask whether ``s`` is closed read ``s["properties"]``, not these.
    """
    props = dict(s.get("properties", {})) if isinstance(s.get("properties"), dict) else {}
    req = [k for k in s.get("required", []) if isinstance(k, str)] if isinstance(s.get("required"), list) else []
    items = s.get("allOf") if isinstance(s.get("allOf"), list) and depth < 3 else []
    for item in items:
        item = c.inline(item, "#")
        if isinstance(item, dict):
            p, r = _object_parts(item, c, depth + 1)
            for k, v in p.items():
                props.setdefault(k, v)
            req += [k for k in r if k not in req]
    return props, req


_FRACTIONAL = seq(_INT, lit("."), rep(cset(DIGIT), 0, None), cset(NONZERO), rep(cset(DIGIT), 0, None))


def _literal_values(s: Any) -> list[Any] | None:
    if not isinstance(s, dict):
        return None
    if "const" in s:
        return [s["const"]]
    if "enum" in s and isinstance(s["enum"], list):
        return list(s["enum"])
    return None


def _python_like_pattern(p: Any) -> str | None:
    """``p`` where lmqc's reading covers every string Python's ``re.search`` finds a match in, else None.

    lmqc reads classes as ECMA-262 does (``\\d`` is ASCII, ``.`` excludes ``\\r``) and ``$`` as the end; Python's
    ``\\d`` is Unicode, its ``.`` takes ``\\r`` and its ``$`` also matches before a final newline. A trailing ``$``
    becomes ``\\n?$``; a pattern with ``.`` or a letter escape outside that is refused.
    """
    if not isinstance(p, str):
        return None
    in_class = False
    i = 0
    while i < len(p):
        ch = p[i]
        if ch == "\\":
            if i + 1 >= len(p) or p[i + 1].isalnum():
                return None
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if p[i + 1: i + 2] == "^":
                return None  # a negated class takes what lmqc's ANY leaves out (surrogates): keep it simple
        elif ch == ".":
            return None
        elif ch == "$" and i != len(p) - 1:
            return None
        i += 1
    return p[:-1] + "\n?$" if p.endswith("$") and not p.endswith("\\$") else p


def _has_numeric_bounds(s: dict) -> bool:
    return any(k in s for k in _NUMBER_KEYS)
