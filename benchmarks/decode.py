"""Decoding benchmark on Gemma 3 270M: constrained vs unconstrained tokens/s, per-step constraint overhead,
beam/sample width cost.

    .venv/bin/python benchmarks/decode.py [--tokens 32] [--repeat 2] [--workloads int,json_obj]

Figures printed:

* ``unconstrained``: argmax of exactly N tokens through ``decode_hole`` (and a bare ``eval``+``np.argmax`` loop);
* per workload (DESIGN.md §4, regex equivalents): tokens, model evaluations, wall time (prompt included, cache
  cleared), the wall time of unconstrained decoding of the same prompt and number of tokens, and the speed
  ratio (> 1 means the constrained decode is faster);
* per-step constraint work: the decoder replayed on one real logits vector with a backend that costs nothing,
  so every microsecond is decoder work; the difference to the unconstrained replay is the constraint overhead
  (median / max over the steps);
* ``beam(n=4)`` and ``sample(n=4)`` wall time relative to argmax for the same number of tokens.

Wall-clock figures depend on what else runs on the machine; run it on an idle one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from lmqc.runtime.backend import EvalStats
from lmqc.runtime.decode import Beam, Sample, decode_hole
from lmqc.runtime.models import get_model

WORKLOADS = {
    "int": r" ?[0-9]+",
    "choice": r"(positive|negative|neutral)",
    "stops_at_period": r"[^.]*\.",
    "len_lt_50": r"(.|\n){0,49}",
    "date": r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    "json_obj": r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,3}\}',
    "email": r"[a-z0-9._]+@[a-z0-9]+\.(com|org|net)",
    "line_lt_200": r"[^\n]{0,199}\n",
}

PROMPTS = {
    "int": "Q: How many legs does a spider have? Answer with a number.\nA:",
    "choice": "Review: I loved this movie, it was great!\nSentiment:",
    "stops_at_period": "Write one sentence about the sea.\n",
    "len_lt_50": "Write a short greeting.\n",
    "date": "Q: When did the Apollo 11 mission land on the moon? Give the date.\nA: ",
    "json_obj": "Give a JSON record of a person with name and age.\n",
    "email": "Q: What is a typical email address of a support team?\nA: ",
    "line_lt_200": "Describe a cat in one line.\n",
}


class _Replay:
    """A backend that returns one fixed logits row at no cost (isolates decoder work), timing each step."""

    def __init__(self, real, row: np.ndarray) -> None:
        self.n_vocab = real.n_vocab
        self.bos_id = real.bos_id
        self.eos_id = real.eos_id
        self.n_ctx = real.n_ctx
        self.n_seq = real.n_seq
        self.special_ids = real.special_ids
        self.stats = EvalStats()
        self.vocabulary = real.vocabulary
        self._real = real
        self._row = row[None, :].copy()
        self._row.flags.writeable = False
        self.marks: list[float] = []
        self._cache: dict[int, np.ndarray] = {}

    def tokenize(self, text, *, bos=False):
        return self._real.tokenize(text, bos=bos)

    def detokenize(self, ids):
        return self._real.detokenize(ids)

    def piece(self, t):
        return self._real.piece(t)

    def _rows(self, n: int) -> np.ndarray:
        # a real contiguous array (a broadcast view would make every argmax twice as slow)
        if n not in self._cache:
            self._cache[n] = np.repeat(self._row, n, axis=0)
            self._cache[n].flags.writeable = False
        return self._cache[n]

    def eval(self, contexts):
        self.marks.append(time.perf_counter())
        self.stats.eval_calls += 1
        return self._rows(len(contexts))

    def eval_rows(self, contexts, rows):
        self.marks.append(time.perf_counter())
        return [self._rows(r) for r in rows]

    def reset(self):
        pass


def _timed(fn, repeat: int):
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best = dt if best is None or dt < best else best
    return best, out


def _vocab_timings() -> None:
    """Vocabulary preparation in fresh processes: cold (empty cache dir) and from the disk cache."""
    import os
    import subprocess
    import sys
    import tempfile

    code = (
        "import time, numpy; t = time.perf_counter()\n"
        "from lmqc.runtime.models import get_vocabulary\n"
        "v = get_vocabulary('gemma-3-270m'); v.fingerprint\n"
        "print(f'{time.perf_counter() - t:.3f} {v.size} {v.fingerprint[:12]}')"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LMQC_CACHE_DIR=tmp)
        for label in ("cold", "cached"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            secs, size, fp = out.stdout.split()
            print(f"vocabulary {label}: {float(secs) * 1000:.0f} ms ({size} tokens, fingerprint {fp}; "
                  "numpy import excluded, lmqc/llama_cpp imports included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default $LMQC_N_THREADS or 2)")
    args = ap.parse_args()
    N = args.tokens

    from lmqc.compiler.automaton import TokenAutomaton
    from lmqc.compiler.bytedfa import ByteDFA

    _vocab_timings()

    t0 = time.perf_counter()
    model = get_model("gemma-3-270m", n_threads=args.threads)
    print(f"model load: {time.perf_counter() - t0:.2f} s  ({model!r})")
    vocab = model.vocabulary

    # -- unconstrained baselines ------------------------------------------------------------------------------
    base_prompt = model.tokenize(PROMPTS["len_lt_50"], bos=True)

    def bare(n: int = N) -> float:
        """Prompt + n tokens with a bare eval + np.argmax loop (no decoder at all)."""
        model.reset()
        ctx = list(base_prompt)
        t = time.perf_counter()
        for _ in range(n):
            ctx.append(int(np.argmax(model.eval([ctx])[0])))
        return time.perf_counter() - t

    def uncon(prompt=base_prompt, n: int = N, strategy=None, width: int = 1) -> float:
        """Prompt + exactly n unconstrained tokens through decode_hole (cache cleared first)."""
        model.reset()
        kw = {"strategy": strategy} if strategy is not None else {}
        t = time.perf_counter()
        decode_hole(model, [prompt] * width, None, min_tokens=n, max_tokens=n, rng=0, **kw)
        return time.perf_counter() - t

    bare_s = min(bare() for _ in range(args.repeat))
    uncon_s = min(uncon() for _ in range(args.repeat))
    print(f"unconstrained argmax, prompt + {N} tokens: decode_hole {N / uncon_s:.1f} tok/s, "
          f"bare eval+argmax loop {N / bare_s:.1f} tok/s")

    # -- workloads --------------------------------------------------------------------------------------------
    print(f"\n{'workload':<16}{'tokens':>7}{'evals':>7}{'wall s':>9}{'uncon s':>9}{'speed':>8}"
          f"{'step µs med/max':>18}{'uncon µs':>10}  value")
    row = np.array(model.eval([base_prompt])[0])

    def replay_steps(p, a):
        """Decoder-only µs per step on one real logits row (second run: masks already materialized)."""
        for _ in range(2):
            r = _Replay(model, row)
            decode_hole(r, [p], a, min_tokens=N if a is None else 0, max_tokens=N)
        return np.diff(r.marks) * 1e6 if len(r.marks) > 1 else np.array([0.0])

    du = replay_steps(base_prompt, None)
    for name in args.workloads.split(","):
        a = TokenAutomaton.build(ByteDFA.from_regex(WORKLOADS[name]), vocab)
        p = model.tokenize(PROMPTS[name], bos=True)

        def run(a=a, p=p):
            model.reset()
            model.stats.reset()
            return decode_hole(model, [p], a, max_tokens=N)[0]

        wall, c = _timed(run, args.repeat)
        evals = model.stats.eval_calls
        # unconstrained decoding of the same prompt and the same number of tokens
        ref = min(uncon(p, max(c.n_tokens, 1)) for _ in range(args.repeat))
        d = replay_steps(p, a)
        print(f"{name:<16}{c.n_tokens:>7}{evals:>7}{wall:>9.2f}{ref:>9.2f}{ref / wall:>7.2f}x"
              f"{statistics.median(d):>10.0f}/{d.max():<7.0f}{statistics.median(du):>10.0f}  {c.text[:40]!r}")

    # -- width ------------------------------------------------------------------------------------------------
    n_w = min(N, 16)
    t_arg = min(uncon(n=n_w) for _ in range(args.repeat))
    t_beam = min(uncon(n=n_w, strategy=Beam(4)) for _ in range(args.repeat))
    t_samp = min(uncon(n=n_w, strategy=Sample(temperature=0.8), width=4) for _ in range(args.repeat))
    print(f"\n{n_w} tokens: argmax {t_arg:.2f} s, beam(n=4) {t_beam:.2f} s ({t_beam / t_arg:.2f}x), "
          f"sample(n=4) {t_samp:.2f} s ({t_samp / t_arg:.2f}x)")


if __name__ == "__main__":
    main()
