"""Client side of two-process mode: a query runs here, its holes are decoded by ``lmqc serve``.

:class:`RemoteModel` is the decoder service of a server (the same ``tokenize`` / ``decode_hole`` /
``score_options`` interface as ``runtime.query.LocalDecoder``), so ``run_compiled`` drives a remote query exactly
like an in-process one: the prompt program, branches and results stay here; per hole, ONE request carries every
branch's context and the server runs :func:`runtime.decode.decode_hole` for the whole hole.

Only the standard library is used here (``http.client`` + ``json``); the server's extra (``lmqc[serve]``) is not
needed by clients. The wire protocol is documented in ``runtime.server``; the codecs both sides share are here.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import math
import os
import tempfile
import threading
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import ArtifactError, DecodeError, ServeError

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

    from .decode import Completion

__all__ = [
    "PROTOCOL",
    "RemoteModel",
    "automaton_hash",
    "parse_endpoint",
    "remote_model",
]

#: Version of the JSON protocol spoken between ``lmqc serve`` and its clients.
PROTOCOL = 1
DEFAULT_PORT = 8080
_RNG_KINDS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


# -- shared codecs -------------------------------------------------------------------------------------------


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


def arrays_to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """Plain arrays as ``.npz`` bytes (no pickled objects)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def npz_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of ``.npz`` bytes, loaded with ``allow_pickle=False``; ``ValueError`` if malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"not a valid npz archive ({e})") from None


def hash_arrays(arrays: dict[str, np.ndarray]) -> str:
    """Content hash of a set of named arrays (name, dtype, shape and bytes of each; order-independent)."""
    h = hashlib.sha256(b"lmqc-automaton-v1")
    for key in sorted(arrays):
        a = np.asarray(arrays[key])
        h.update(f"\0{key}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


_HASHES: weakref.WeakKeyDictionary[Any, tuple[str, bytes | None]] = weakref.WeakKeyDictionary()
_HASH_LOCK = threading.Lock()


def automaton_hash(automaton: Any) -> tuple[str, dict[str, np.ndarray]]:
    """The content address of an automaton and its arrays (cached per automaton object)."""
    arrays = automaton.to_arrays()
    with _HASH_LOCK:
        try:
            hit = _HASHES.get(automaton)
        except TypeError:
            hit = None
    if hit is not None:
        return hit[0], arrays
    digest = hash_arrays(arrays)
    with _HASH_LOCK:
        try:
            _HASHES[automaton] = (digest, None)
        except TypeError:
            pass
    return digest, arrays


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
        raise ValueError(f"expected a number, got {x!r}")
    return float(x)


def encode_text(text: str | bytes) -> str | dict[str, str]:
    return text if isinstance(text, str) else {"b64": base64.b64encode(bytes(text)).decode("ascii")}


def decode_text(x: Any) -> str | bytes:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and isinstance(x.get("b64"), str):
        return base64.b64decode(x["b64"], validate=True)
    raise ValueError(f"expected a string or {{'b64': ...}}, got {type(x).__name__}")


def encode_strategy(strategy: Any) -> dict[str, Any]:
    from . import decode

    if isinstance(strategy, str):
        strategy = decode.parse_strategy(strategy)
    if isinstance(strategy, decode.Argmax):
        return {"name": "argmax"}
    if isinstance(strategy, decode.Sample):
        return {"name": "sample", "temperature": strategy.temperature, "top_k": strategy.top_k, "top_p": strategy.top_p}
    if isinstance(strategy, decode.Beam):
        return {"name": "beam", "n": strategy.n}
    raise DecodeError(f"unknown strategy {strategy!r}")


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


def decode_completion(d: dict[str, Any]) -> Completion:
    from .decode import Completion

    return Completion(
        parent=int(d["parent"]),
        tokens=[int(t) for t in d["tokens"]],
        value=base64.b64decode(d["value"]),
        context=[int(t) for t in d["context"]],
        logprob=decode_float(d["logprob"]),
        score=decode_float(d["score"]),
        ending=str(d["ending"]),
        state=int(d["state"]),
    )


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def rng_from_state(state: Any) -> np.random.Generator:
    """A generator in exactly the given bit-generator state (only numpy's own bit generators)."""
    if not isinstance(state, dict) or state.get("bit_generator") not in _RNG_KINDS:
        raise ValueError(f"rng state must name one of {', '.join(_RNG_KINDS)}")
    bg = getattr(np.random, state["bit_generator"])()
    try:
        bg.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ValueError(f"invalid rng state ({e})") from None
    return np.random.Generator(bg)


def _per_branch(value: Any, B: int, is_scalar: Any) -> list[Any]:
    return [value] * B if is_scalar(value) else list(value)


def _encode_stops(stops: Any, B: int) -> list[list[list[Any]]]:
    from .decode.stops import is_stop_rule

    def rule(r: Any) -> list[Any]:
        phrase, keep = (r.phrase, r.keep) if hasattr(r, "phrase") else r
        return [encode_text(phrase), bool(keep)]

    if isinstance(stops, str | bytes) or is_stop_rule(stops):
        raise DecodeError("stops must be a sequence of stop rules, e.g. [Stop('\\n', keep=False)]")
    shared = len(stops) == 0 or is_stop_rule(stops[0])
    lists = [stops] * B if shared else list(stops)
    return [[rule(r) for r in lst] for lst in lists]


# -- the remote model ----------------------------------------------------------------------------------------


def _vocab_cache_dir() -> Path:
    root = os.environ.get("LMQC_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmqc") / "remote-vocab"


class RemoteModel:
    """The model of an ``lmqc serve`` process, as a decoder service.

    Parameters
    ----------
    endpoint : str
        ``"HOST:PORT"`` of the server.
    timeout : float, optional
        Seconds to wait for any one response (default: no limit; a hole may take long).

    Notes
    -----
    Thread-safe: every call opens its own connection. ``tokenize`` results are cached per process.
    """

    def __init__(self, endpoint: str, *, timeout: float | None = None) -> None:
        self.endpoint = parse_endpoint(endpoint)
        self.host, port = self.endpoint.rsplit(":", 1)
        self.port = int(port)
        self.timeout = timeout
        self._info: dict[str, Any] | None = None
        self._vocab: Vocabulary | None = None
        self._lock = threading.Lock()
        self._tok_cache: OrderedDict[tuple[str | bytes, bool], list[int]] = OrderedDict()
        self._uploaded: set[str] = set()

    def __repr__(self) -> str:
        return f"RemoteModel('lmqc://{self.endpoint}')"

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json"
    ) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            headers = {"Content-Type": content_type} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type", "")
        except ConnectionRefusedError:
            raise ServeError(
                f"cannot reach lmqc serve at {self.endpoint}: connection refused "
                "(start one with `lmqc serve --model M --port PORT`)"
            ) from None
        except (OSError, http.client.HTTPException) as e:
            raise ServeError(f"lmqc serve at {self.endpoint}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        body = None if payload is None else json.dumps(payload, allow_nan=False).encode("utf-8")
        status, data, _ = self._request(method, path, body)
        return self._check(status, data)

    def _check(self, status: int, data: bytes) -> dict[str, Any]:
        try:
            out = json.loads(data.decode("utf-8")) if data else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            out = {"message": data[:200].decode("utf-8", "replace")}
        if not isinstance(out, dict):
            raise ServeError(f"lmqc serve at {self.endpoint}: malformed response")
        if status == 200:
            return out
        msg = str(out.get("message") or out.get("error") or f"HTTP {status}")
        kind = out.get("error")
        if kind == "decode_error":
            raise DecodeError(msg)
        if kind == "vocabulary_mismatch":
            raise ArtifactError(msg)
        if kind == "unknown_automata":
            raise _Missing(list(out.get("missing") or []))
        raise ServeError(f"lmqc serve at {self.endpoint} refused the request (HTTP {status}): {msg}")

    # -- model description ----------------------------------------------------------------------------------

    def info(self, *, refresh: bool = False) -> dict[str, Any]:
        """The server's ``GET /info`` (model, vocabulary fingerprint, versions, limits, batch stats)."""
        if self._info is None or refresh:
            info = self._json("GET", "/info")
            if info.get("protocol") != PROTOCOL:
                raise ServeError(
                    f"lmqc serve at {self.endpoint} speaks protocol {info.get('protocol')!r}; this lmqc speaks "
                    f"{PROTOCOL}: use matching lmqc versions"
                )
            self._info = info
        return self._info

    @property
    def fingerprint(self) -> str:
        return str(self.info()["vocab_fingerprint"])

    @property
    def vocabulary(self) -> Vocabulary:
        """The server model's vocabulary: from memory, the disk cache (by fingerprint), or ``GET /vocab``."""
        with self._lock:
            if self._vocab is not None:
                return self._vocab
            from lmqc.compiler.vocabulary import Vocabulary
            from lmqc.errors import VocabularyError

            fp = self.fingerprint
            path = _vocab_cache_dir() / f"{fp[:32]}.npz"
            vocab = None
            if path.exists():
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(path.read_bytes()))
                    if vocab.fingerprint != fp:
                        vocab = None
                except (OSError, ValueError, VocabularyError):
                    vocab = None
            if vocab is None:
                status, data, _ = self._request("GET", "/vocab")
                if status != 200:
                    self._check(status, data)
                try:
                    vocab = Vocabulary.from_arrays(npz_to_arrays(data))
                except (ValueError, VocabularyError) as e:
                    raise ServeError(f"lmqc serve at {self.endpoint} sent a malformed vocabulary: {e}") from None
                if vocab.fingerprint != fp:
                    raise ServeError(f"lmqc serve at {self.endpoint} sent a vocabulary that does not match its fingerprint")
                _write_atomic(path, data)
            self._vocab = vocab
            return vocab

    # -- the decoder service ------------------------------------------------------------------------------

    def tokenize(self, text: str | bytes, *, bos: bool = False) -> list[int]:
        """Token ids of ``text`` by the server model's tokenizer (cached per process)."""
        key = (text, bool(bos))
        with self._lock:
            hit = self._tok_cache.get(key)
            if hit is not None:
                self._tok_cache.move_to_end(key)
                return list(hit)
        out = self._json("POST", "/tokenize", {"protocol": PROTOCOL, "texts": [encode_text(text)], "bos": bool(bos)})
        ids = [int(t) for t in out["ids"][0]]
        with self._lock:
            self._tok_cache[key] = ids
            while len(self._tok_cache) > 4096:
                self._tok_cache.popitem(last=False)
        return list(ids)

    def decode_hole(
        self,
        contexts: Sequence[Sequence[int]],
        automata: Any = None,
        *,
        strategy: Any = None,
        stops: Any = (),
        min_tokens: int | Sequence[int] = 0,
        max_tokens: int | None | Sequence[int | None] = None,
        max_len: int | None = None,
        rng: np.random.Generator | int | None = None,
        scores: Sequence[float] | None = None,
        score: bool | None = None,
        forced_text: bool = True,
        heal: bool = False,
    ) -> list[Completion]:
        """:func:`runtime.decode.decode_hole` on the server, same arguments and results (one request).

        A ``Generator`` passed as ``rng`` is advanced exactly as an in-process decode would advance it (its
        state travels with the request and comes back), so seeded sampling gives the same values.
        """
        from . import decode

        B = len(contexts)
        if B == 0:
            return []
        autos = _per_branch(automata, B, lambda v: v is None or hasattr(v, "initial"))
        hashes: list[str | None] = []
        arrays: dict[str, dict[str, np.ndarray]] = {}
        for a in autos:
            if a is None:
                hashes.append(None)
                continue
            h, arr = automaton_hash(a)
            hashes.append(h)
            arrays[h] = arr
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        mins = _per_branch(min_tokens, B, lambda v: isinstance(v, int | np.integer))
        maxs = _per_branch(max_tokens, B, lambda v: v is None or isinstance(v, int | np.integer))
        payload = {
            "protocol": PROTOCOL,
            "vocab_fingerprint": self.fingerprint,
            "contexts": [[int(t) for t in c] for c in contexts],
            "automata": hashes,
            "strategy": encode_strategy(strategy if strategy is not None else decode.Argmax()),
            "stops": _encode_stops(stops, B),
            "min_tokens": [int(m) for m in mins],
            "max_tokens": [None if m is None else int(m) for m in maxs],
            "max_len": None if max_len is None else int(max_len),
            "rng": rng_state(gen),
            "scores": None if scores is None else [encode_float(float(s)) for s in scores],
            "score": score,
            "forced_text": bool(forced_text),
            "heal": bool(heal),
        }
        # Upload what this server has not seen from us; the server may also have evicted an automaton.
        for h, arr in arrays.items():
            if h not in self._uploaded:
                self._upload(h, arr)
        for _attempt in range(3):
            try:
                out = self._json("POST", "/decode", payload)
                break
            except _Missing as m:
                for h in m.missing:
                    if h not in arrays:
                        raise ServeError(f"lmqc serve at {self.endpoint} asked for an automaton it was not sent") from None
                    self._upload(h, arrays[h])
        else:
            raise ServeError(f"lmqc serve at {self.endpoint} keeps evicting this query's automata (cache too small?)")
        if out.get("rng") is not None and isinstance(rng, np.random.Generator):
            rng.bit_generator.state = out["rng"]
        try:
            return [decode_completion(c) for c in out["completions"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ServeError(f"lmqc serve at {self.endpoint} sent malformed completions: {e}") from None

    def _upload(self, digest: str, arrays: dict[str, np.ndarray]) -> None:
        status, data, _ = self._request(
            "PUT", f"/automata/{digest}", arrays_to_npz(arrays), content_type="application/octet-stream"
        )
        self._check(status, data)
        self._uploaded.add(digest)

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        """:func:`runtime.decode.score_options` on the server (one request)."""
        out = self._json(
            "POST",
            "/score",
            {
                "protocol": PROTOCOL,
                "vocab_fingerprint": self.fingerprint,
                "context": [int(t) for t in context],
                "options": [[int(t) for t in o] for o in options],
            },
        )
        return np.asarray([decode_float(x) for x in out["logprobs"]], np.float64)


class _Missing(Exception):
    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"server lacks automata {missing}")
        self.missing = missing


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # the cache is an optimization


_remotes: dict[str, RemoteModel] = {}
_remotes_lock = threading.Lock()


def remote_model(endpoint: str) -> RemoteModel:
    """The :class:`RemoteModel` of an endpoint, shared by the whole process."""
    key = parse_endpoint(endpoint)
    with _remotes_lock:
        m = _remotes.get(key)
        if m is None:
            m = _remotes[key] = RemoteModel(key)
        return m
