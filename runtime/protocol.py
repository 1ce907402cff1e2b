"""The wire codec of ``lmqc serve`` and its clients: the only place where lmqc values become JSON and back.

Only the standard library and NumPy are used, so clients need nothing of the server's extra (``lmqc[serve]``).

Protocol (version 1, JSON over HTTP/1.1; every JSON request carries ``"protocol": 1``)
---------------------------------------------------------------------------------------
``GET /health``
    ``{"status": "ok", "protocol": 1}``.
``GET /info``
    ``{"protocol", "lmqc_version", "model", "vocab_fingerprint", "vocab_size", "n_ctx", "limits": {"max_batch",
    "max_len", "max_context"}, "stats": {...}}`` (stats: see ``runtime.server``).
``GET /vocab``
    The vocabulary as ``.npz`` bytes of ``Vocabulary.to_arrays()`` (``buffer``, ``offsets``, ``eos_id``,
    ``special_ids``; no pickled objects); header ``X-Lmqc-Vocab-Fingerprint``. Clients cache it by fingerprint.
``POST /tokenize``
    ``{"texts": [str | {"b64": ...}], "bos": bool, "special": bool}`` -> ``{"ids": [[int]]}`` (the server
    model's tokenizer; ``special`` parses control-token text such as chat role markers, default false).
``PUT /automata/{hash}``
    Body: ``.npz`` of ``TokenAutomaton.to_arrays()``. The server recomputes the content hash
    (:func:`hash_arrays`: sha256 over each array's name, dtype, shape and bytes, sorted by name; first 32 hex
    digits) and checks the arrays against its vocabulary. -> ``{"hash": ...}``.
``POST /decode``
    One :class:`~runtime.decode.DecodeRequest` (:func:`encode_request`): ``{"vocab_fingerprint", "contexts":
    [[int]] (B branches), "automata": [hash | null] (per branch), "strategy": {"name": "argmax"} | {"name":
    "sample", "temperature", "top_k", "top_p"} | {"name": "beam", "n"}, "stops": [[[phrase, keep]]] (per branch;
    phrase a string or {"b64"}), "min_tokens": [int], "max_tokens": [int | null], "heal": [bool] (per branch; a
    single bool applies to all), "max_len": int | null, "rng": numpy bit-generator state | null, "scores":
    [float] | null, "score": bool | null, "forced_text": bool}``
    -> ``{"completions": [{"parent", "tokens", "value" (base64), "context", "logprob", "score", "ending",
    "state"}], "rng": state after the decode, "batch": {"requests", "branches"}}``. Floats: NaN is ``null``,
    infinities ``"inf"`` / ``"-inf"``. The rng state round-trips, so seeded sampling equals in-process.
    With ``"stream": true`` the answer is NDJSON instead: ``{"progress": [[branch, base64 bytes]]}`` lines (each
    branch's new value bytes since the last line: :func:`encode_progress` / :func:`decode_progress`), then
    ``{"result": <the response above>}`` or ``{"error", "message", "status"}`` (see ``runtime.server``).
``POST /score``
    ``{"vocab_fingerprint", "context": [int], "options": [[int]]}`` -> ``{"logprobs": [float]}``.

Errors are ``{"error": code, "message": text}`` (codes: see ``runtime.server``). Malformed fields raise
:class:`ProtocolError` here, which the server answers with 400 ``bad_request``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import math
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import DecodeError, ServeError

from .decode.masks import PerObject

if TYPE_CHECKING:
    from .decode import Completion, DecodeRequest, Strategy

__all__ = [
    "DEFAULT_PORT",
    "PROTOCOL",
    "ProtocolError",
    "arrays_to_npz",
    "automaton_hash",
    "decode_completion",
    "decode_float",
    "decode_progress",
    "decode_request",
    "decode_strategy",
    "decode_text",
    "encode_completion",
    "encode_float",
    "encode_progress",
    "encode_request",
    "encode_strategy",
    "encode_text",
    "hash_arrays",
    "npz_to_arrays",
    "parse_endpoint",
    "request_automata",
    "rng_from_state",
    "rng_state",
    "token_ids",
]

#: Version of the JSON protocol spoken between ``lmqc serve`` and its clients.
PROTOCOL = 1
DEFAULT_PORT = 8080
_RNG_KINDS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


class ProtocolError(ValueError):
    """A malformed field of a request or response."""


def parse_endpoint(endpoint: str) -> str:
    """Normalize ``"HOST:PORT"`` (also ``"lmqc://HOST:PORT"``, ``"http://HOST:PORT"``, ``":PORT"``, ``"HOST"``).

    Raises
    ------
    ServeError
        Not a host and port.
    """
    s = str(endpoint).strip()
    for prefix in ("lmqc://", "http://"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
    s = s.rstrip("/")
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = s, str(DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536 or not host or "/" in host:
        raise ServeError(f"invalid endpoint {endpoint!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return f"{host}:{int(port)}"


# -- arrays --------------------------------------------------------------------------------------------------


def arrays_to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Plain arrays as ``.npz`` bytes (no pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


#: Most bytes the arrays of one ``.npz`` may inflate to (:func:`npz_to_arrays`); an automaton sent by a client is
#: an uncompressed ``np.savez``, so this is also about the largest body a server takes.
MAX_NPZ_BYTES = 256 << 20
_MAX_NPZ_MEMBERS = 64


def npz_to_arrays(data: bytes, max_bytes: int = MAX_NPZ_BYTES) -> dict[str, np.ndarray]:
    """Arrays of ``.npz`` bytes, without pickled objects; ``ValueError`` if malformed or larger than ``max_bytes``.

    Nothing is inflated before its size is known to fit: the archive's declared sizes, then each array's
    header (dtype and shape) are checked first, and reading a member never goes past its declared size. Object
    arrays are refused.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > _MAX_NPZ_MEMBERS:
                raise ValueError(f"{len(infos)} members (at most {_MAX_NPZ_MEMBERS})")
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise ValueError(f"its arrays inflate to {declared} bytes (at most {max_bytes})")
            out: dict[str, np.ndarray] = {}
            for info in infos:
                name = info.filename.removesuffix(".npy")
                with z.open(info) as f:
                    out[name] = _read_npy(f, info.file_size, name)
            return out
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, NotImplementedError) as e:
        raise ValueError(f"not a valid npz archive ({e})") from None


def _read_npy(f: Any, size: int, name: str) -> np.ndarray:
    """One ``.npy`` member of ``size`` (declared) bytes, its header checked before any data is read."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"{name}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not accepted")
    count = 1
    for n in shape:
        count *= int(n)  # Python ints: a huge declared shape cannot overflow
    nbytes = count * dtype.itemsize
    if nbytes > size:
        raise ValueError(f"{name}: its header declares {nbytes} bytes of data, the archive {size}")
    arr = np.empty(count, dtype=dtype)
    view = memoryview(arr).cast("B") if nbytes else memoryview(b"")
    done = 0
    while done < nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise ValueError(f"{name}: truncated array data")
        done += n
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    """Content hash of a set of named arrays (name, dtype, shape and bytes of each; order-independent)."""
    h = hashlib.sha256(b"lmqc-automaton-v1")
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        h.update(f"\0{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


_HASHES = PerObject(256)  # automaton -> its content hash
_HASH_LOCK = threading.Lock()


def automaton_hash(automaton: Any) -> tuple[str, dict[str, np.ndarray]]:
    """The content address of an automaton and its arrays (the hash is cached per automaton object)."""
    arrays = automaton.to_arrays()
    with _HASH_LOCK:
        digest = _HASHES.get(automaton, None, lambda: hash_arrays(arrays))
    return digest, arrays


# -- scalars and texts ---------------------------------------------------------------------------------------


def encode_float(x: float | None) -> float | str | None:
    """Strict-JSON float: NaN -> null, infinities -> ``"inf"`` / ``"-inf"``."""
    if x is None or math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def decode_float(x: Any) -> float:
    if x is None:
        return math.nan
    if x in ("inf", "-inf"):
        return math.inf if x == "inf" else -math.inf
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ProtocolError(f"expected a number, got {x!r}")
    return float(x)


def encode_text(text: str | bytes) -> str | dict[str, str]:
    """A string as itself; bytes as UTF-8 text when they are, else ``{"b64": ...}``."""
    if isinstance(text, bytes | bytearray):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(text)).decode("ascii")}
    return text


def decode_text(x: Any) -> str | bytes:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and isinstance(x.get("b64"), str):
        try:
            return base64.b64decode(x["b64"], validate=True)
        except ValueError as e:
            raise ProtocolError(f"invalid base64 ({e})") from None
    raise ProtocolError(f"expected a string or {{'b64': ...}}, got {type(x).__name__}")


def token_ids(x: Any, name: str, V: int, *, nonempty: bool = False) -> list[int]:
    """A list of token ids in ``range(V)``."""
    if not isinstance(x, list) or not all(type(t) is int for t in x):
        raise ProtocolError(f"{name} must be a list of token ids")
    if x and (min(x) < 0 or max(x) >= V):
        raise ProtocolError(f"{name} holds a token id outside the vocabulary (size {V})")
    if nonempty and not x:
        raise ProtocolError(f"{name} must not be empty")
    return x


def _opt_int(x: Any, name: str) -> int | None:
    if x is None:
        return None
    if type(x) is not int:
        raise ProtocolError(f"{name} must be an integer or null")
    return x


def _per_branch(body: Mapping[str, Any], key: str, B: int) -> list[Any]:
    v = body.get(key)
    if not isinstance(v, list) or len(v) != B:
        raise ProtocolError(f"{key} must be a list with one entry per context ({B})")
    return v


# -- strategies, generators, completions ---------------------------------------------------------------------


def encode_strategy(strategy: Strategy) -> dict[str, Any]:
    """``{"name": ..., **parameters}`` of a strategy (its dataclass fields)."""
    from .decode import strategy_name

    return {"name": strategy_name(strategy), **dataclasses.asdict(strategy)}


def decode_strategy(x: Any) -> Strategy:
    from .decode import parse_strategy

    if not isinstance(x, dict) or not isinstance(x.get("name"), str):
        raise ProtocolError('strategy must be {"name": "argmax" | "sample" | "beam", ...}')
    params = {k: v for k, v in x.items() if k != "name"}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProtocolError(f"strategy parameter {k!r} is not a number")
    try:
        return parse_strategy(x["name"], strict=True, **params)
    except DecodeError as e:
        raise ProtocolError(str(e)) from None


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The JSON form of a generator's bit-generator state (arrays as lists of ints; see :func:`rng_from_state`)."""
    return _plain_state(rng.bit_generator.state)


def _plain_state(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain_state(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    return x


# The state layout of each bit generator numpy accepts from a client: path -> (dtype, length) of an array, or
# (low, high) of an integer. Checked before numpy sees it: numpy trusts an MT19937 ``pos`` or a Philox
# ``buffer_pos`` as an index into its key/buffer (out of range, it reads past them).
_U32 = (0, (1 << 32) - 1)
_U128 = (0, (1 << 128) - 1)
_HALF = {("has_uint32",): (0, 1), ("uinteger",): _U32}
_RNG_LAYOUT: dict[str, dict[tuple[str, ...], tuple[Any, Any]]] = {
    "PCG64": {("state", "state"): _U128, ("state", "inc"): _U128, **_HALF},
    "PCG64DXSM": {("state", "state"): _U128, ("state", "inc"): _U128, **_HALF},
    "Philox": {
        ("state", "counter"): (np.uint64, 4), ("state", "key"): (np.uint64, 2), ("buffer",): (np.uint64, 4),
        ("buffer_pos",): (0, 4), **_HALF,
    },
    "SFC64": {("state", "state"): (np.uint64, 4), **_HALF},
    "MT19937": {("state", "key"): (np.uint32, 624), ("state", "pos"): (0, 624)},
}


def rng_from_state(state: Any) -> np.random.Generator:
    """A generator in exactly the given bit-generator state (only numpy's own bit generators).

    Every field is checked against the generator's layout (types, array lengths, ranges) before numpy sees
    it; arrays may be lists of ints (their JSON form) or arrays.
    """
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    if kind not in _RNG_LAYOUT:
        raise ProtocolError(f"rng state must name one of {', '.join(_RNG_KINDS)}")
    fields: dict[str, Any] = {"bit_generator": kind}
    for path, (a, b) in _RNG_LAYOUT[kind].items():
        where, value = "rng", state
        for key in path:
            where += f".{key}"
            if not isinstance(value, dict) or key not in value:
                raise ProtocolError(f"invalid rng state: {where} is missing")
            value = value[key]
        if isinstance(a, type):  # an array of b unsigned integers
            if isinstance(value, np.ndarray):
                value = value.tolist()
            top = int(np.iinfo(a).max)
            if not isinstance(value, list) or len(value) != b or not all(type(v) is int and 0 <= v <= top for v in value):
                raise ProtocolError(f"invalid rng state: {where} must be {b} integers in [0, {top}]")
            value = np.array(value, dtype=a)
        else:
            if isinstance(value, np.integer):
                value = int(value)
            if type(value) is not int or not a <= value <= b:
                raise ProtocolError(f"invalid rng state: {where} must be an integer in [{a}, {b}]")
        target = fields
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    bg = getattr(np.random, kind)()
    try:
        bg.state = fields
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
        raise ProtocolError(f"invalid rng state ({e})") from None
    return np.random.Generator(bg)


def encode_completion(c: Completion) -> dict[str, Any]:
    return {
        "parent": c.parent,
        "tokens": [int(t) for t in c.tokens],
        "value": base64.b64encode(c.value).decode("ascii"),
        "context": [int(t) for t in c.context],
        "logprob": encode_float(c.logprob),
        "score": encode_float(c.score),
        "ending": c.ending,
        "state": int(c.state),
    }


_ENDINGS = frozenset({"eos", "stop", "max_tokens", "max_len"})


def decode_completion(d: Any, branches: int | None = None) -> Completion:
    """A completion of a ``POST /decode`` response, every field checked (``ProtocolError`` says which).

    ``branches``: the request's number of contexts, which ``parent`` must index.
    """
    from .decode import Completion

    if not isinstance(d, dict):
        raise ProtocolError(f"a completion must be an object, not {type(d).__name__}")
    missing = {"parent", "tokens", "value", "context", "logprob", "score", "ending", "state"} - d.keys()
    if missing:
        raise ProtocolError(f"a completion lacks {', '.join(sorted(missing))}")
    parent = d["parent"]
    if type(parent) is not int or parent < 0 or (branches is not None and parent >= branches):
        raise ProtocolError(f"completion parent {parent!r} is not the index of a context")
    for key in ("tokens", "context"):
        if not isinstance(d[key], list) or not all(type(t) is int and t >= 0 for t in d[key]):
            raise ProtocolError(f"completion {key} must be a list of token ids")
    if not isinstance(d["value"], str):
        raise ProtocolError("completion value must be base64 text")
    try:
        value = base64.b64decode(d["value"], validate=True)
    except ValueError as e:
        raise ProtocolError(f"completion value is not base64 ({e})") from None
    if d["ending"] not in _ENDINGS:
        raise ProtocolError(f"completion ending {d['ending']!r} is not one of {', '.join(sorted(_ENDINGS))}")
    if type(d["state"]) is not int:
        raise ProtocolError("completion state must be an integer")
    return Completion(
        parent=parent,
        tokens=list(d["tokens"]),
        value=value,
        context=list(d["context"]),
        logprob=decode_float(d["logprob"]),
        score=decode_float(d["score"]),
        ending=d["ending"],
        state=d["state"],
    )


# -- decode requests -----------------------------------------------------------------------------------------


def encode_progress(progress: Sequence[tuple[int, bytes]], sent: dict[int, int]) -> dict[str, Any] | None:
    """A streamed ``/decode`` progress line: the bytes each branch's value gained since the last line (``sent``:
    branch -> bytes already sent, updated). None when nothing is new."""
    items = []
    for parent, data in progress:
        k = sent.get(parent, 0)
        if len(data) > k:
            items.append([int(parent), base64.b64encode(data[k:]).decode("ascii")])
            sent[parent] = len(data)
    return {"progress": items} if items else None


def decode_progress(item: Any, branches: int, values: dict[int, bytes]) -> list[tuple[int, bytes]]:
    """Apply a progress line to ``values`` (branch -> value bytes so far) and return them, by branch;
    :class:`ProtocolError` if the line is malformed."""
    items = item.get("progress") if isinstance(item, dict) else None
    if not isinstance(items, list):
        raise ProtocolError("progress must be a list")
    for x in items:
        ok = isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and isinstance(x[1], str)
        if not ok or isinstance(x[0], bool) or not 0 <= x[0] < branches:
            raise ProtocolError(f"malformed progress item {x!r:.80}")
        try:
            values[x[0]] = values.get(x[0], b"") + base64.b64decode(x[1], validate=True)
        except ValueError:  # binascii.Error is a ValueError
            raise ProtocolError("progress bytes are not base64") from None
    return sorted(values.items())


def encode_request(request: DecodeRequest, hashes: Sequence[str | None], fingerprint: str) -> dict[str, Any]:
    """The ``POST /decode`` body of a request whose automata have the content addresses ``hashes``."""
    specs = request.specs
    return {
        "protocol": PROTOCOL,
        "vocab_fingerprint": fingerprint,
        "contexts": [[int(t) for t in c] for c in request.contexts],
        "automata": list(hashes),
        "strategy": encode_strategy(request.strategy),
        "stops": [[[encode_text(p), keep] for p, keep in s.stops] for s in specs],
        "min_tokens": [s.min_tokens for s in specs],
        "max_tokens": [s.max_tokens for s in specs],
        "heal": [s.heal for s in specs],
        "max_len": request.max_len,
        "rng": rng_state(request.rng),
        "scores": None if request.scores is None else [encode_float(x) for x in request.scores],
        "score": request.score,
        "forced_text": request.forced_text,
    }


def request_automata(body: Mapping[str, Any], B: int) -> list[str | None]:
    """The per-branch automaton hashes of a ``POST /decode`` body."""
    hashes = _per_branch(body, "automata", B)
    if any(h is not None and not isinstance(h, str) for h in hashes):
        raise ProtocolError("automata must hold one hash (string) or null per context")
    return hashes


def decode_request(
    body: Mapping[str, Any], contexts: list[list[int]], automaton: Callable[[str], Any]
) -> DecodeRequest:
    """The :class:`~runtime.decode.DecodeRequest` of a ``POST /decode`` body.

    ``contexts`` are the body's contexts, already checked by the server against its limits; ``automaton``
    gives the automaton of a hash (the server has checked that it has all of them).
    """
    from .decode import DecodeRequest, HoleSpec

    B = len(contexts)
    autos = [None if h is None else automaton(h) for h in request_automata(body, B)]
    stops = []
    for i, lst in enumerate(_per_branch(body, "stops", B)):
        if not isinstance(lst, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[1], bool) for r in lst
        ):
            raise ProtocolError(f"stops[{i}] must be a list of [phrase, keep] pairs")
        rules = [(decode_text(r[0]), r[1]) for r in lst]
        if any(not p for p, _ in rules):
            raise ProtocolError(f"stops[{i}]: a stop phrase cannot be empty")
        stops.append(tuple(rules))
    mins = [_opt_int(m, "min_tokens") or 0 for m in _per_branch(body, "min_tokens", B)]
    maxs = [_opt_int(m, "max_tokens") for m in _per_branch(body, "max_tokens", B)]
    heal = body.get("heal", False)
    heals = [heal] * B if isinstance(heal, bool) else _per_branch(body, "heal", B)
    if not all(isinstance(h, bool) for h in heals):
        raise ProtocolError("heal must be a bool or one bool per context")
    max_len = _opt_int(body.get("max_len"), "max_len")
    if max_len is not None and max_len < 1:
        raise ProtocolError("max_len must be positive")
    scores = body.get("scores")
    if scores is not None:
        scores = tuple(decode_float(s) for s in _per_branch(body, "scores", B))
    score = body.get("score")
    if score is not None and not isinstance(score, bool):
        raise ProtocolError("score must be true, false or null")
    rng = rng_from_state(body["rng"]) if body.get("rng") is not None else np.random.default_rng()
    try:
        specs = tuple(HoleSpec(a, s, lo, hi, h) for a, s, lo, hi, h in zip(autos, stops, mins, maxs, heals, strict=True))
    except DecodeError as e:
        raise ProtocolError(str(e)) from None
    return DecodeRequest(
        tuple(contexts), specs, decode_strategy(body.get("strategy")), max_len, rng, scores, score,
        bool(body.get("forced_text", True)),
    )
