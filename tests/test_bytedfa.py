"""Byte DFA: char language + stop rules expanded to UTF-8, checked against brute force."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _oracle import ALPHABET, all_strings, constraints, stream_status
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmqc.compiler.bytedfa import ByteDFA, apply_stops, cut_value, utf8_ranges
from lmqc.compiler.ir import HoleIR, Stop
from lmqc.compiler.lower import lower_hole
from lmqc.compiler.nodes import And, LenCmp, Not, OneOf, Or, Regex, Span, StopsAt, StopsBefore
from lmqc.errors import ConstraintError

GOLDEN = Path(__file__).parent / "fixtures" / "automata"
UPDATE = os.environ.get("LMQC_UPDATE_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text + "\n")
    assert path.read_text() == text + "\n"


def dfa_status(dfa: ByteDFA, text: str) -> str:
    s = dfa.initial
    for b in text.encode():
        s = int(dfa.trans[s, dfa.classes[b]])
        if s < 0:
            return "dead"
        if dfa.stopped[s]:
            return "stopped"
    return "final" if dfa.final[s] else "open"


def coreachable(dfa: ByteDFA) -> np.ndarray:
    alive = dfa.final | dfa.stopped
    while True:
        nxt = alive | (alive[np.maximum(dfa.trans, 0)] & (dfa.trans >= 0)).any(axis=1)
        if (nxt == alive).all():
            return alive
        alive = nxt


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints())
def test_dfa_matches_brute_force(c):
    ir = lower_hole("X", c)
    try:
        dfa = ByteDFA.from_ir(ir)
    except ConstraintError as e:
        assert "never be satisfied" in str(e)
        for text in all_strings(4):
            assert stream_status(ir, text) not in ("final", "stopped")
        return
    assert coreachable(dfa).all()  # dead states removed
    for text in all_strings(4):
        want = stream_status(ir, text)
        got = dfa_status(dfa, text)
        if want == "dead":
            assert got == "dead", text
        elif want in ("final", "stopped"):
            assert got == want, (text, want, got)
        else:  # open: not acceptable now; the DFA either rejects (no extension works) or keeps going
            assert got in ("open", "dead"), (text, got)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 0x10FFFF), st.integers(0, 0x10FFFF))
def test_utf8_ranges_exact(a, b):
    lo, hi = min(a, b), max(a, b)
    hi = min(hi, lo + 5000)  # keep the brute force small
    seqs = utf8_ranges(lo, hi)
    want = {chr(c).encode() for c in range(lo, hi + 1) if not 0xD800 <= c <= 0xDFFF}
    for cp in list(range(max(0, lo - 2), lo)) + list(range(hi + 1, min(0x110000, hi + 3))):
        if not 0xD800 <= cp <= 0xDFFF:
            assert not any(_in_seq(chr(cp).encode(), s) for s in seqs)
    for e in list(want)[:300]:
        assert sum(_in_seq(e, s) for s in seqs) == 1


def _in_seq(data: bytes, seq) -> bool:
    return len(data) == len(seq) and all(lo <= x <= hi for x, (lo, hi) in zip(data, seq, strict=True))


def test_multibyte_and_invalid_bytes():
    dfa = ByteDFA.from_regex("é+")
    assert dfa.accepts("ééé".encode())
    assert not dfa.accepts(b"\xc3")
    assert dfa.run(b"\xc3") >= 0  # a partial character is a live prefix
    assert dfa.run(b"\xc3\xa8") == -1
    assert dfa.run(b"\xff") == -1
    anyc = ByteDFA.from_ir(HoleIR("X", LenCmp("X", "<", 3)))
    assert anyc.accepts("中\n".encode())
    assert not anyc.accepts(b"\xed\xa0\x80")  # a UTF-8-encoded surrogate is not text
    assert not anyc.accepts(b"\xc0\x80")  # overlong
    assert not anyc.accepts(b"abc")


def test_stop_semantics():
    at = ByteDFA.from_ir(HoleIR("X", Regex("X", "[a-z]*\\."), (Stop(".", True),)))
    assert dfa_status(at, "ab.") == "stopped"
    assert dfa_status(at, "ab.zz") == "stopped"  # bytes after the stop inside a token are cut off
    assert dfa_status(at, "ab") == "open"
    before = ByteDFA.from_ir(HoleIR("X", Regex("X", "[a-z]*"), (Stop(".", False),)))
    assert dfa_status(before, "ab.") == "stopped"
    assert dfa_status(before, "ab") == "final"
    assert dfa_status(before, "a1") == "dead"
    # the first occurrence of any phrase decides, the longest phrase ending there wins
    multi = (Stop("b.", False), Stop(".", True))
    assert cut_value("ab.c.", multi) == ("a", True)
    dfa = ByteDFA.from_ir(HoleIR("X", OneOf("X", ("a",)), multi))
    assert dfa_status(dfa, "ab.") == "stopped"
    assert dfa_status(dfa, "a.") == "dead"  # value 'a.' (STOPS_AT keeps '.') is not in the language


def test_len_bound_linear_growth():
    sizes = [ByteDFA.from_ir(HoleIR("X", LenCmp("X", "<", n))).n_states for n in (50, 200, 2000)]
    per_char = [s / n for s, n in zip(sizes, (50, 200, 2000), strict=True)]
    assert max(per_char) < 9


def test_unconstrained_is_flagged():
    dfa = ByteDFA.from_ir(HoleIR("X"))
    assert dfa.unconstrained and dfa.n_states == 1
    assert str(dfa) == "ByteDFA unconstrained"


def test_golden_dfas():
    golden("dfa_int.txt", str(ByteDFA.from_ir(lower_hole("X", And((Regex("X", " ?[0-9]+"),))))))
    golden("dfa_choice.txt", str(ByteDFA.from_ir(lower_hole("X", OneOf("X", ("yes", "no", "né"))))))
    golden("dfa_stops_before.txt", str(ByteDFA.from_ir(lower_hole("X", StopsBefore("X", "\n")))))
    golden(
        "dfa_len_or_not.txt",
        str(ByteDFA.from_ir(lower_hole("X", Or((LenCmp("X", "<", 2), Not(Regex("X", "[^a]*"))))))),
    )


SRC = 'x\nwhere REGEX(X, r"(a)\\1") and len(X) < 5\n'


@pytest.mark.parametrize(
    "constraint, name",
    [
        (Regex("X", r"(a)\1", span=Span(2, 7, 2, 25)), "err_backref.txt"),
        (Regex("X", r"a(?=b)", span=Span(2, 7, 2, 25)), "err_lookahead.txt"),
        (Regex("X", r"^a$", span=Span(2, 7, 2, 25)), "err_anchor.txt"),
        (And((LenCmp("X", "<", 2, span=Span(2, 7, 2, 17)), OneOf("X", ("abc",))), span=Span(2, 7, 2, 40)), "err_empty.txt"),
        (And((OneOf("X", ("a.b",)), StopsAt("X", "."))), "err_empty_with_stops.txt"),
    ],
)
def test_golden_errors(constraint, name):
    with pytest.raises(ConstraintError) as e:
        ByteDFA.from_ir(lower_hole("X", constraint, source=SRC, filename="q.lmql"), source=SRC, filename="q.lmql")
    golden(name, str(e.value))


def test_alphabet_constant_is_small():
    assert len(ALPHABET) < 10


# -- small-DFA fast paths produce exactly what the NumPy paths produce ------------------------------------------


def _same_chardfa(x, y) -> bool:
    return (
        x.initial == y.initial
        and all(
            np.array_equal(getattr(x, f), getattr(y, f)) and getattr(x, f).dtype == getattr(y, f).dtype
            for f in ("starts", "iclass", "trans", "final", "stopped")
        )
    )


@st.composite
def _raw_chardfas(draw):
    """Arbitrary small char DFAs: dead and unreachable states, duplicate columns, classes over several intervals."""
    from lmqc.compiler import charlang

    s, k = draw(st.integers(1, 10)), draw(st.integers(1, 4))
    trans = draw(st.lists(st.integers(-1, s - 1), min_size=s * k, max_size=s * k))
    final = draw(st.lists(st.booleans(), min_size=s, max_size=s))
    stopped = draw(st.lists(st.booleans(), min_size=s, max_size=s))
    extra = draw(st.lists(st.integers(0, k - 1), max_size=4))
    iclass = draw(st.permutations(list(range(k)))) + extra
    starts = sorted(draw(st.sets(st.integers(1, 0x10FFFF), min_size=len(iclass) - 1, max_size=len(iclass) - 1)))
    return charlang._make([0, *starts], iclass, trans, draw(st.integers(0, s - 1)), final, stopped)


@st.composite
def _loop_free_chardfas(draw):
    """Small char DFAs whose only cycles are self-loops (the one-pass minimization's case), states shuffled."""
    from lmqc.compiler import charlang

    s, k = draw(st.integers(1, 12)), draw(st.integers(1, 4))
    perm = draw(st.permutations(list(range(s))))
    trans = [[-1] * k for _ in range(s)]
    for i in range(s):  # state i moves to itself or to a later state (or rejects)
        for c in range(k):
            t = draw(st.sampled_from([-1, i, *range(i + 1, s)]))
            trans[perm[i]][c] = -1 if t < 0 else perm[t]
    final = draw(st.lists(st.booleans(), min_size=s, max_size=s))
    stopped = draw(st.lists(st.booleans(), min_size=s, max_size=s))
    starts = sorted(draw(st.sets(st.integers(1, 0x10FFFF), min_size=k - 1, max_size=k - 1)))
    return charlang._make([0, *starts], list(range(k)), trans, draw(st.integers(0, s - 1)), final, stopped)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_raw_chardfas(), _loop_free_chardfas(), constraints()))
def test_small_minimize_is_the_numpy_minimize(d):
    from lmqc.compiler import charlang

    if not isinstance(d, charlang.CharDFA):
        try:
            d = charlang.compile_language(d)
        except ConstraintError:  # token bounds under or/not: no character language
            return
    fast = charlang._minimize_small(d)
    assert fast is not None
    assert _same_chardfa(fast, charlang._minimize_arrays(d))


@settings(max_examples=300, deadline=None)
@given(st.one_of(_raw_chardfas(), constraints()), st.lists(st.sampled_from(["a", ".", "é", "\n", "ab"]), max_size=2))
def test_small_byte_expansion_is_the_numpy_expansion(d, phrases):
    from lmqc.compiler import bytedfa, charlang

    if not isinstance(d, charlang.CharDFA):
        try:
            d = charlang.compile_language(d)
        except ConstraintError:
            return
    d = charlang.minimize(d)
    if phrases:  # stopped states (absorbing) come from stop rules
        d = charlang.minimize(bytedfa.apply_stops(d, tuple(Stop(p, i % 2 == 0) for i, p in enumerate(phrases))))
    fast = ByteDFA._from_minimal_small(d, bytedfa._template(d.starts, d.iclass))
    slow = ByteDFA._from_minimal_arrays(d)
    assert fast.initial == slow.initial
    for f in ("trans", "classes", "final", "stopped"):
        assert np.array_equal(getattr(fast, f), getattr(slow, f)) and getattr(fast, f).dtype == getattr(slow, f).dtype


@st.composite
def _regexes(draw, depth: int = 0):
    """Regexes of literals, sets, groups, alternation and every repetition form (some with categories or '.',
    which the position construction leaves to interegular)."""
    atoms = ["a", "b", "1", r"\.", "é", "-", "[ab]", "[^a]", "[a-c1]", "[^.é]", "[b-b]", r"\d", "."]
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        if depth < 1 and draw(st.booleans()):  # one level of groups: interegular is slow on deeper nests
            alts = draw(st.lists(_regexes(depth + 1), min_size=1, max_size=2))
            atom = "(" + "|".join(alts) + ")"
        else:
            atom = draw(st.sampled_from(atoms))
        atom += draw(st.sampled_from(["", "", "?", "*", "+", "{2}", "{0,2}", "{2,}", "*?"]))
        parts.append(atom)
    return "".join(parts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_regexes())
@example("(a|b)")  # classes that differ only until their targets merge: one class in the minimal DFA
@example("(é|è)x")
def test_position_dfa_is_interegulars_language(pattern):
    from lmqc.compiler import charlang

    fast = charlang.position_dfa(pattern)
    if fast is None:
        assert "\\d" in pattern or "." in pattern.replace("\\.", "")
        return
    slow = charlang.minimize(charlang.regex_dfa(pattern))
    assert _same_chardfa(charlang.minimize(fast), slow)


@pytest.mark.parametrize("n", [17, 60, 400])
def test_small_minimize_of_long_chains(n):
    """Chains longer than the Moore rounds of the list path finish with Hopcroft: still the NumPy result."""
    from lmqc.compiler import charlang

    chain = charlang.length_dfa("<", n)
    stopped = apply_stops(charlang.minimize(chain), (Stop("\n", True),))
    both = charlang.product(chain, charlang.contains_dfa("ab"), "and")
    for d in (chain, stopped, both):
        if d.n_states * d.n_classes <= charlang._SMALL_CELLS:
            assert _same_chardfa(charlang._minimize_small(d), charlang._minimize_arrays(d))


def test_small_minimize_with_many_intervals():
    """Hundreds of alphabet intervals take the NumPy class merge inside the list path: still the same result."""
    from lmqc.compiler import charlang

    starts = [0] + [0x100 + 3 * i + j for i in range(200) for j in (0, 1)]
    iclass = [0] + [(i % 4) + 1 if j == 0 else 0 for i in range(200) for j in (0, 1)]
    trans = [[-1, 1, 2, 1, 3], [-1, 2, 2, 2, 3], [-1, 3, -1, 3, -1], [-1, -1, -1, -1, -1]]  # classes 1 and 3 merge
    d = charlang._make(starts, iclass, trans, 0, [False, True, False, True])
    assert len(d.iclass) > 256 and d.n_states * d.n_classes <= charlang._SMALL_CELLS
    assert _same_chardfa(charlang._minimize_small(d), charlang._minimize_arrays(d))
