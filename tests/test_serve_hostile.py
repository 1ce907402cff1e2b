"""``lmqc serve`` under hostile clients (issue 11): every bad input is a clear error, nothing another client gets
changes, the server stays healthy and its memory bounded.

In-process tests drive a :class:`~runtime.server.ServerState` on the tiny backend (its simulated KV cache can be
made small); the HTTP-level ones (chunked bodies, zip bombs, shutdown during a stalled upload, CLI arguments) run
a real ``lmqc serve`` process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from lmqc.runtime import decode  # noqa: E402
from lmqc.runtime.backend import CacheFull, TinyBackend  # noqa: E402
from lmqc.runtime.protocol import PROTOCOL  # noqa: E402
from lmqc.runtime.server import ServerState  # noqa: E402


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
