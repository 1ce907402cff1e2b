"""``lmqc serve`` under hostile clients (issue 11): every bad input is a clear error, nothing another client gets
changes, the server stays healthy and its memory bounded.

In-process tests drive a :class:`~runtime.server.ServerState` on the tiny backend (its simulated KV cache can be
made small); the HTTP-level ones (chunked bodies, zip bombs, shutdown during a stalled upload, CLI arguments) run
a real ``lmqc serve`` process.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import lmqc  # noqa: E402
from lmqc.runtime import decode  # noqa: E402
from lmqc.runtime.backend import CacheFull, TinyBackend  # noqa: E402
from lmqc.runtime.protocol import PROTOCOL, arrays_to_npz, automaton_hash, hash_arrays, rng_state  # noqa: E402
from lmqc.runtime.server import HTTPError, ServerState  # noqa: E402


def _body(fp: str, contexts: list[list[int]], n_tokens: int, **extra: Any) -> dict[str, Any]:
    B = len(contexts)
    body = {
        "protocol": PROTOCOL, "vocab_fingerprint": fp, "contexts": contexts, "automata": [None] * B,
        "strategy": {"name": "argmax"}, "stops": [[]] * B, "min_tokens": [n_tokens] * B,
        "max_tokens": [n_tokens] * B, "max_len": None, "rng": None, "scores": None, "score": None,
        "forced_text": True, "heal": False,
    }
    body.update(extra)
    return body


def _reference(contexts: list[list[int]], n_tokens: int) -> list[list[int]]:
    """The tokens in-process argmax decoding gives (the tiny model's logits do not depend on the batch)."""
    return [c.tokens for c in decode.decode_hole(TinyBackend(), contexts, None, min_tokens=n_tokens, max_tokens=n_tokens)]


def _healthy(state: ServerState) -> None:
    """A normal request succeeds and equals in-process decoding."""
    ctx = [[1, 300, 301]]
    res = state.scheduler.submit(state.decode_job(_body(state.fingerprint, ctx, 5))).result(30)
    assert [c.tokens for c in res["completions"]] == _reference(ctx, 5)


@pytest.fixture
def small_cache() -> Iterator[ServerState]:
    """A server on a tiny model whose KV cache holds 64 cells, fed in chunks of 8 tokens."""
    state = ServerState(TinyBackend(n_seq=16, n_batch=8, n_cells=64), model="lmqc:tiny", max_batch=16)
    yield state
    state.scheduler.close()


# -- 1. a client overflowing the KV cache -----------------------------------------------------------------------


@pytest.mark.parametrize("hostile_first", [True, False])
def test_a_failed_chunked_feed_leaves_the_cache_consistent(hostile_first: bool) -> None:
    """A feed that fails part-way (cache full after some chunks) records nothing it did not write."""
    b = TinyBackend(n_seq=4, n_batch=4, n_cells=24)
    good = [1, 300, 301, 302, 303, 304, 305, 410, 411, 412]
    hostile = [[1] + [400 + i] * 12 for i in range(2)]
    with pytest.raises(CacheFull):
        b.eval(hostile + [good] if hostile_first else [good] + hostile)
    assert np.array_equal(b.eval([good])[0], b.reference_logits(good))
    assert np.array_equal(b.eval([good[:8]])[0], b.reference_logits(good[:8]))


def test_a_client_overflowing_the_cache_does_not_change_another_clients_text(small_cache: ServerState) -> None:
    state = small_cache
    fp = state.fingerprint
    hostile = [[1] + [310 + i] * 29 for i in range(4)]  # 120 cells: more than the whole cache
    good = [[1, 300, 301, 302, 303, 304, 305, 306, 307]]
    with state.scheduler._cv:  # both arrive while the worker is held: their first step is one merged batch
        f_hostile = state.scheduler.submit(state.decode_job(_body(fp, hostile, 4)))
        f_good = state.scheduler.submit(state.decode_job(_body(fp, good, 12)))
    res = f_good.result(30)
    assert [c.tokens for c in res["completions"]] == _reference(good, 12)
    with pytest.raises(CacheFull):
        f_hostile.result(30)
    _healthy(state)


# -- 4. malformed requests are 400s, valid generator states work ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_state() -> Iterator[ServerState]:
    state = ServerState(TinyBackend(n_seq=16), model="lmqc:tiny", max_batch=16)
    yield state
    state.scheduler.close()


def _automaton_arrays() -> tuple[str, dict[str, np.ndarray]]:
    return automaton_hash(lmqc.compile('"A: [X]" from "lmqc:tiny" where INT(X) and len(TOKENS(X)) < 4').automaton("X"))


def _refused(state: ServerState, call: Any, status: int = 400) -> str:
    with pytest.raises(HTTPError) as e:
        call()
    assert e.value.status == status, e.value.message
    return e.value.message


def test_malformed_automaton_arrays_are_400(tiny_state: ServerState) -> None:
    _, arrays = _automaton_arrays()
    cases = {}
    for name, a in arrays.items():
        if a.ndim == 2:
            cases[f"1-D {name}"] = {**arrays, name: a.reshape(-1)}
        cases[f"scalar {name}"] = {**arrays, name: np.asarray(a.reshape(-1)[:1].reshape(()) if a.size else 0)}
    cases["float table"] = {**arrays, "next_table": arrays["next_table"].astype(np.float64)}
    cases["unknown array"] = {**arrays, "extra": np.zeros(3, np.int32)}
    for label, bad in cases.items():
        message = _refused(tiny_state, lambda bad=bad: tiny_state.put_automaton(hash_arrays(bad), arrays_to_npz(bad)))
        assert "automaton upload" in message, label
    _healthy(tiny_state)


def _npz_member(name: str, header: dict[str, Any], payload: bytes, *, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(head, header)
        with z.open(f"{name}.npy", "w", force_zip64=True) as m:
            m.write(head.getvalue())
            for k in range(0, len(payload), 1 << 22):
                m.write(payload[k : k + (1 << 22)])
    return buf.getvalue()


def test_huge_declared_shapes_and_zip_bombs_are_refused_before_inflating(tiny_state: ServerState) -> None:
    from lmqc.runtime.protocol import MAX_NPZ_BYTES

    huge_shape = _npz_member("tok_seq", {"descr": "<i4", "fortran_order": False, "shape": (10**15,)}, b"\0" * 64)
    message = _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, huge_shape))
    assert "declares" in message
    # a few hundred kB that inflate past the bound: refused by the sizes the archive declares, nothing inflated
    n = MAX_NPZ_BYTES // 4 + 1024
    bomb = _npz_member("tok_seq", {"descr": "<i4", "fortran_order": False, "shape": (n,)}, bytes(4 * n), deflate=True)
    assert len(bomb) < MAX_NPZ_BYTES // 100
    message = _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, bomb))
    assert "inflate" in message
    pickled = _npz_member("meta", {"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8)
    assert "object arrays" in _refused(tiny_state, lambda: tiny_state.put_automaton("0" * 32, pickled))
    _healthy(tiny_state)


def test_malformed_decode_fields_are_400(tiny_state: ServerState) -> None:
    fp = tiny_state.fingerprint
    good = _body(fp, [[1, 300]], 3)
    sample = {"name": "sample", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    bad_fields = [
        {"strategy": {"name": "beam", "n": float("nan")}},
        {"strategy": {"name": "beam", "n": float("inf")}},
        {"strategy": {**sample, "top_k": float("nan")}},
        {"strategy": {**sample, "top_k": float("inf")}},
        {"rng": {"bit_generator": "MT19937", "state": {"key": [1, 2], "pos": 3}}},
        {"rng": {"bit_generator": "MT19937", "state": {"key": [0] * 624, "pos": 10**6}}},  # numpy would read past key
        {"rng": {"bit_generator": "Philox", "state": {"counter": [1], "key": [1]}, "buffer": [1], "buffer_pos": 3,
                 "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "Philox", "state": {"counter": [0] * 4, "key": [0] * 2}, "buffer": [0] * 4,
                 "buffer_pos": -1, "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "SFC64", "state": {"state": [1, 2, 3, 2**64]}, "has_uint32": 0, "uinteger": 0}},
        {"rng": {"bit_generator": "PCG64", "state": 5}},
        {"rng": [1, 2]},
    ]
    for extra in bad_fields:
        body = {**good, **extra}
        _refused(tiny_state, lambda body=body: tiny_state.decode_job(body))
    _healthy(tiny_state)


@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937"])
def test_every_numpy_bit_generator_state_round_trips(tiny_state: ServerState, kind: str) -> None:
    """Seeded sampling through the server equals in-process for each bit generator, and the state comes back."""
    gen = np.random.Generator(getattr(np.random, kind)(5))
    gen.random(3)  # a state mid-buffer (Philox/SFC64/MT19937 positions other than the start)
    sample = {"name": "sample", "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    body = json.loads(json.dumps(_body(tiny_state.fingerprint, [[1, 300], [1, 301]], 6, strategy=sample,
                                       rng=rng_state(gen))))
    res = tiny_state.scheduler.submit(tiny_state.decode_job(body)).result(30)
    ref = decode.decode_hole(TinyBackend(), [[1, 300], [1, 301]], None, strategy=decode.Sample(1.0, 0, 1.0),
                             rng=gen, min_tokens=6, max_tokens=6)
    assert [c.tokens for c in res["completions"]] == [c.tokens for c in ref]
    from lmqc.runtime.server import _jsonable

    assert json.loads(json.dumps(_jsonable(res)))["rng"] == json.loads(json.dumps(rng_state(gen)))
