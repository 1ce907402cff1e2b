"""Decoding strategies and their token choice: argmax, sample (temperature, top-k, top-p), beam (top-n).

A strategy is a frozen dataclass of its token-choice parameters; the function that picks a token from one logits
row under an allowed set (sparse ids, or a :class:`~.masks.Dense` set) lives beside it. Parameters about the run
rather than the choice (``n`` for sample, ``seed``, ``max_len``) belong to the caller. Every field is a setting of
the decoder settings table (``compiler.decoders.SETTINGS``) and is checked there; the wire codec sends the fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmqc.compiler.decoders import RUNS_AS, check_setting
from lmqc.errors import DecodeError

from .masks import Dense

__all__ = [
    "Argmax",
    "Beam",
    "Sample",
    "Strategy",
    "choose_argmax",
    "choose_sample",
    "parse_strategy",
    "strategy_name",
    "top_n",
]


@dataclass(frozen=True, slots=True)
class Argmax:
    """Greedy decoding: the most likely allowed token at every step."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Ancestral sampling from the allowed tokens, renormalized after temperature, ``top_k`` and ``top_p``.

    ``top_k=0`` and ``top_p=1.0`` disable those filters; ``temperature=0`` is argmax.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True, slots=True)
class Beam:
    """Beam search keeping the ``n`` best sequences by total log-probability; finished ones compete too.

    ``temperature > 0`` is LMQL's ``beam_sample``: each beam proposes ``n`` tokens drawn from its allowed
    distribution at that temperature (duplicates merged) instead of its ``n`` most likely ones; candidates are
    still ranked by their model log-probability.
    """

    n: int = 2
    temperature: float = 0.0

    def __post_init__(self) -> None:
        _check(self)


def _check(strategy: Any) -> None:
    """Check a strategy's fields with the decoder settings table (``compiler.decoders.SETTINGS``)."""
    for f in dataclasses.fields(strategy):
        try:
            check_setting(f.name, getattr(strategy, f.name))
        except ValueError as e:
            raise DecodeError(f"{type(strategy).__name__.lower()}: {e}") from None


Strategy = Argmax | Sample | Beam

_CLASSES: dict[str, type] = {"argmax": Argmax, "sample": Sample, "beam": Beam, "beam_search": Beam}
_DEFAULTS: dict[str, dict[str, Any]] = {"beam_sample": {"temperature": 1.0}}  # LMQL's beam_sample samples at T=1
_NAMES = {Argmax: "argmax", Sample: "sample", Beam: "beam"}


def strategy_name(strategy: Strategy) -> str:
    """``"argmax"``, ``"sample"`` or ``"beam"``."""
    return _NAMES[type(strategy)]


def parse_strategy(name: str, *, strict: bool = False, **params: Any) -> Strategy:
    """Build a strategy from a decoder name and its keyword arguments (``n``, ``temperature``, ...).

    A strategy's parameters are its dataclass fields. Other decoder arguments (``n`` for sample, ``seed``,
    ``max_len``) are ignored here (the caller replicates contexts for ``sample(n=...)`` and creates the generator
    from ``seed``), unless ``strict``, where they are an error (the wire form carries only the fields).
    """
    cls = _CLASSES.get(RUNS_AS.get(name, name))
    if cls is None:
        raise DecodeError(f"unknown decoder {name!r}: use argmax, sample or beam")
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    params = {**_DEFAULTS.get(name, {}), **{k: v for k, v in params.items() if v is not None}}
    if strict and set(params) - set(fields):
        raise DecodeError(f"unknown {name} parameter(s): {', '.join(sorted(set(params) - set(fields)))}")
    kwargs = {}
    for key, kind in fields.items():
        if params.get(key) is None:
            continue
        try:
            kwargs[key] = int(params[key]) if kind == "int" else float(params[key])
        except (TypeError, ValueError, OverflowError):
            raise DecodeError(f"{name} parameter {key} must be a number, got {params[key]!r}") from None
    return cls(**kwargs)


# -- token choice --------------------------------------------------------------------------------------------


def choose_argmax(row: np.ndarray, ids: np.ndarray | None, dense: Dense | None) -> int:
    """The most likely allowed token of a logits row (-1 if nothing is allowed)."""
    if ids is not None:
        if len(ids) == 0:
            return -1
        # methods, not np.* wrappers: a few µs less per step; take with mode="clip" (ids are in range) skips the
        # bounds check of row[ids]: 33k ids on 262k logits 37 -> 31 µs
        return ids.item(row.take(ids, mode="clip").argmax())
    return dense.argmax(row)


def top_n(row: np.ndarray, ids: np.ndarray | None, dense: Dense | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best allowed tokens of a row and their logits (unordered)."""
    if ids is not None:
        vals = row[ids]
        if len(ids) > n:
            part = np.argpartition(vals, -n)[-n:]
            return ids[part], vals[part]
        return ids, vals
    tmp = row + dense.bias
    if n <= 8:  # a few argmax passes beat a partition of the whole vocabulary
        out = []
        for _ in range(n):
            t = int(np.argmax(tmp))
            if not np.isfinite(tmp[t]):
                break
            out.append(t)
            tmp[t] = -np.inf
        top = np.asarray(out, dtype=np.int64)
    else:
        top = np.argpartition(tmp, -n)[-n:]
        top = top[np.isfinite(tmp[top])]
    return top.astype(np.int32), row[top]


_BLOCK = 512  # sampling from a full row: pick a block by its mass, then a token inside it


def _allowed_logits(row: np.ndarray, ids: np.ndarray | None, dense: Dense | None) -> tuple[np.ndarray | None, np.ndarray]:
    """(candidate ids, their float32 logits) to sample from: the allowed ids' logits for a sparse set (a copy),
    else the whole row plus the dense set's bias (-inf on forbidden tokens) with candidates None (= positions)."""
    if ids is not None:
        return ids, row[ids].astype(np.float32)
    return None, np.add(row, dense.bias, dtype=np.float32)


def sample_n(
    row: np.ndarray, ids: np.ndarray | None, dense: Dense | None, temperature: float, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws (with replacement) from softmax(row / T) over the allowed tokens, duplicates merged:
    (token ids int32, their logits float32), at most ``n`` each; empty when nothing is allowed."""
    cand, z = _allowed_logits(row, ids, dense)
    if len(z) == 0 or not np.isfinite(m := z.max()):
        return np.empty(0, np.int32), np.empty(0, np.float32)
    z -= m
    _weights(z, temperature)
    cum = np.cumsum(z, dtype=np.float64)
    picks = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    picks = np.unique(np.minimum(picks, int(np.flatnonzero(z)[-1])))
    toks = picks if cand is None else cand[picks]
    return toks.astype(np.int32), row[toks]


def _draw(w: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to the non-negative float32 weights ``w`` (exact, O(V))."""
    n = len(w)
    if n <= 4 * _BLOCK:
        cum = np.cumsum(w, dtype=np.float64)
        j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        return min(j, int(np.flatnonzero(w)[-1]))
    pad = (-n) % _BLOCK
    ww = np.concatenate([w, np.zeros(pad, w.dtype)]) if pad else w
    blocks = ww.reshape(-1, _BLOCK).sum(axis=1)  # float32 pairwise sums: fast and accurate enough
    cb = np.cumsum(blocks, dtype=np.float64)
    u = rng.random() * cb[-1]
    k = min(int(np.searchsorted(cb, u, side="right")), int(np.flatnonzero(blocks)[-1]))
    u -= cb[k - 1] if k else 0.0
    inner = ww[k * _BLOCK : (k + 1) * _BLOCK]
    cw = np.cumsum(inner, dtype=np.float64)
    j = min(int(np.searchsorted(cw, u, side="right")), int(np.flatnonzero(inner)[-1]))
    return k * _BLOCK + j


def _nucleus(w: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of largest weights holding ``top_p`` of the mass (``w.max() == 1``)."""
    total = float(w.sum())
    thr = 1e-2
    while True:
        # every weight outside {w > thr} is below every weight inside, so if the inside holds top_p of the
        # mass, the nucleus lies inside it
        cand = np.flatnonzero(w > thr)
        if thr < 1e-30 or float(w[cand].sum(dtype=np.float64)) >= top_p * total:
            break
        thr *= 1e-3
    cand = cand[np.argsort(-w[cand], kind="stable")]
    cum = np.cumsum(w[cand], dtype=np.float64)
    return cand[: int(np.searchsorted(cum, top_p * total)) + 1]


def _weights(z: np.ndarray, temperature: float) -> None:
    """``z`` (float32 logits minus their maximum; masked tokens -inf) becomes ``exp(z / T)`` in place.

    The maximum weight is 1 and masked tokens weigh 0 for every positive finite ``T``. A scale ``1/T`` that
    float32 cannot hold is replaced by the exact limit of the softmax: when it underflows to 0 (``T`` above
    ~1e45) every allowed token weighs 1 (uniform), and when it overflows (``T`` below ~3e-39) only the tokens at
    the maximum do (argmax, ties uniform). Multiplying anyway would give ``-inf * 0`` or ``0 * inf``: NaN
    weights, which the draw turns into "always the last token" or a token the mask forbids.
    """
    with np.errstate(over="ignore", under="ignore"):
        scale = np.float32(1.0 / temperature)
    if scale == 0:
        np.copyto(z, np.isfinite(z))
    elif not np.isfinite(scale):
        np.copyto(z, z == 0)
    else:
        with np.errstate(over="ignore", under="ignore"):
            # a large finite scale may push very negative logits past float32: -inf, weight 0, as intended
            z *= scale
            np.exp(z, out=z)


def choose_sample(
    row: np.ndarray, ids: np.ndarray | None, dense: Dense | None, cfg: Sample, rng: np.random.Generator
) -> int:
    """Draw from softmax(row / T) restricted to the allowed tokens, after top-k and top-p."""
    if cfg.temperature == 0:
        return choose_argmax(row, ids, dense)
    if ids is not None and len(ids) == 0:
        return -1
    cand, z = _allowed_logits(row, ids, dense)
    if 0 < cfg.top_k < len(z):
        part = np.argpartition(z, -cfg.top_k)[-cfg.top_k :]
        z = z[part]
        cand = part if cand is None else cand[part]
    m = z.max()
    if not np.isfinite(m):
        return -1
    z -= m
    _weights(z, cfg.temperature)
    if cfg.top_p < 1.0:
        keep = _nucleus(z, cfg.top_p)
        z = z[keep]
        cand = keep if cand is None else cand[keep]
    j = _draw(z, rng)
    return int(j if cand is None else cand[j])
