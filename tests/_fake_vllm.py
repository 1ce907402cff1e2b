"""A fake of the parts of vLLM that lmqc's integration uses, driven by an lmqc backend's logits.

``FakeLLM.generate`` runs requests the way vLLM V1's engine presents them to a logits processor: a persistent
batch whose rows are added (with a live reference to each request's output-token list), removed when a request
finishes, condensed by one-way moves and, every few steps, swapped. Every step the processor's ``update_state``
gets the batch changes, then ``apply`` masks the raw logits (float32 NumPy rows from the backend), then a token is
chosen (greedy at temperature 0, else a seeded sample). EOS and ``stop_token_ids`` end a request (the token is
kept in its output, as vLLM does), so does ``max_tokens``. ``logprobs=0`` and ``prompt_logprobs=0`` return the raw
log-softmax of the chosen / prompt tokens, as vLLM's default ``raw_logprobs`` mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class FakeSamplingParams:
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    stop_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True


@dataclass(frozen=True)
class FakeBatchUpdate:
    batch_size: int
    removed: list[int]
    added: list[tuple[int, Any, list[int] | None, list[int]]]
    moved: list[tuple[int, int, str]]


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[dict[int, Logprob] | None] | None


@dataclass
class _Req:
    i: int
    prompt: list[int]
    params: FakeSamplingParams
    out: list[int] = field(default_factory=list)
    lps: list[dict[int, Logprob]] = field(default_factory=list)
    rng: Any = None
    done: str | None = None


def _log_softmax(row: np.ndarray) -> np.ndarray:
    m = float(row.max())
    return row - (m + np.log(np.exp(row - m).sum()))


class FakeLLM:
    """``vllm.LLM.generate`` over an lmqc backend, with one logits processor instance (like a vLLM engine)."""

    def __init__(self, backend: Any, processor_cls: Any, *, max_num_seqs: int = 3, swap_every: int = 3) -> None:
        self.backend = backend
        self.processor = processor_cls(None, "cpu", False)
        self.max_num_seqs = max_num_seqs
        self.swap_every = swap_every
        self.steps = 0
        self.calls = 0

    def generate(self, prompts: list[dict[str, Any]], params: Any, use_tqdm: bool = False) -> list[RequestOutput]:
        self.calls += 1
        if not isinstance(params, list):
            params = [params] * len(prompts)
        for p in params:
            type(self.processor).validate_params(p)
        b = self.backend
        reqs = [_Req(i, list(p["prompt_token_ids"]), sp) for i, (p, sp) in enumerate(zip(prompts, params, strict=True))]
        for r in reqs:
            r.rng = np.random.default_rng(r.params.seed)
        waiting = list(reqs)
        slots: list[_Req | None] = []
        removed: list[int] = []
        while waiting or any(s is not None for s in slots):
            added: list[tuple[int, Any, list[int] | None, list[int]]] = []
            moved: list[tuple[int, int, str]] = []
            # admit new requests into free rows (lowest first), up to max_num_seqs
            while waiting and sum(s is not None for s in slots) < self.max_num_seqs:
                r = waiting.pop(0)
                free = [k for k, s in enumerate(slots) if s is None]
                k = free[0] if free else len(slots)
                if k == len(slots):
                    slots.append(None)
                slots[k] = r
                added.append((k, r.params, list(r.prompt), r.out))
                if k in removed:
                    removed.remove(k)
            # condense: move the last rows into holes (one-way moves)
            while slots and slots[-1] is None:
                slots.pop()
            for k in range(len(slots)):
                if slots[k] is None:
                    last = len(slots) - 1
                    while last > k and slots[last] is None:
                        last -= 1
                    if last > k:
                        slots[k], slots[last] = slots[last], None
                        moved.append((last, k, "UNIDIRECTIONAL"))
            while slots and slots[-1] is None:
                slots.pop()
            self.steps += 1
            if self.swap_every and len(slots) >= 2 and self.steps % self.swap_every == 0:
                slots[0], slots[1] = slots[1], slots[0]
                moved.append((0, 1, "SWAP"))
            update = FakeBatchUpdate(len(slots), removed, added, moved) if (removed or added or moved) else None
            removed = []
            self.processor.update_state(update)
            if not slots:
                continue
            raw = np.array(b.eval([r.prompt + r.out for r in slots]), dtype=np.float32)
            logits = self.processor.apply(raw.copy())
            for k, r in enumerate(slots):
                row = np.asarray(logits[k], np.float64)
                sp = r.params
                if sp.temperature == 0:
                    tok = int(np.argmax(row))
                else:
                    z = row / sp.temperature
                    if sp.top_k and sp.top_k > 0:
                        cut = np.sort(z)[-sp.top_k]
                        z = np.where(z >= cut, z, -np.inf)
                    p = np.exp(z - z.max())
                    p /= p.sum()
                    tok = int(r.rng.choice(len(p), p=p))
                r.out.append(tok)
                if sp.logprobs is not None:
                    r.lps.append({tok: Logprob(float(_log_softmax(raw[k].astype(np.float64))[tok]))})
                stops = {b.eos_id, *(sp.stop_token_ids or [])}
                if tok in stops:
                    r.done = "stop"
                elif sp.max_tokens is not None and len(r.out) >= sp.max_tokens:
                    r.done = "length"
            for k, r in enumerate(slots):
                if r.done:
                    slots[k] = None
                    removed.append(k)
        results = []
        for r in reqs:
            plp = None
            if r.params.prompt_logprobs is not None:
                rows = b.eval_rows([r.prompt[:-1]], [len(r.prompt) - 1])[0]
                plp = [None] + [
                    {int(t): Logprob(float(_log_softmax(np.asarray(rows[j], np.float64))[int(t)]))}
                    for j, t in enumerate(r.prompt[1:])
                ]
            results.append(
                RequestOutput(r.prompt, [CompletionOutput(list(r.out), r.lps if r.params.logprobs is not None else None, r.done or "length")], plp)
            )
        return results
