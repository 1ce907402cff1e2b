"""Compile time of the compiler core (constraint -> byte DFA -> token automaton) on the Gemma 3 vocabulary.

Usage: .venv/bin/python benchmarks/compile_core.py [--synthetic] [--repeat N]

The vocabulary is prepared once (not timed); each workload is compiled ``--repeat`` times and the median is
reported, with the table sizes. ``--synthetic`` uses a random 262,144-token UTF-8 vocabulary instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmqc.compiler.automaton import TokenAutomaton  # noqa: E402
from lmqc.compiler.bytedfa import ByteDFA  # noqa: E402
from lmqc.compiler.lower import lower_hole  # noqa: E402
from lmqc.compiler.nodes import And, IsInt, LenCmp, OneOf, Regex, StopsAt  # noqa: E402
from lmqc.compiler.vocabulary import Vocabulary  # noqa: E402

WORKLOADS = {
    "int": IsInt("X"),
    "choice": OneOf("X", ("positive", "negative", "neutral")),
    "stops_at_period": StopsAt("X", "."),
    "len_lt_50": LenCmp("X", "<", 50),
    "date": Regex("X", r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "json_obj": Regex("X", r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,3}\}'),
    "email": Regex("X", r"[a-z0-9._]+@[a-z0-9]+\.(com|org|net)"),
    "line_lt_200": And((LenCmp("X", "<", 200), StopsAt("X", "\n"))),
    "len_lt_200": LenCmp("X", "<", 200),
    "len_lt_2000": LenCmp("X", "<", 2000),
}


def synthetic_vocabulary(n: int = 262_144, seed: int = 0) -> Vocabulary:
    rng = np.random.default_rng(seed)
    alphabet = [chr(c) for c in range(32, 127)] + list("éèüßñçαβγδжщ中文字日本語한국") + ["\n", "\t"]
    pieces = [b"<eos>"] + [bytes([b]) for b in range(256)]
    while len(pieces) < n:
        k = int(rng.integers(1, 12))
        pieces.append("".join(rng.choice(alphabet, size=k)).encode())
    return Vocabulary(pieces, 0)


def compile_one(constraint, vocab: Vocabulary) -> TokenAutomaton:
    ir = lower_hole("X", constraint)
    return TokenAutomaton.build(ByteDFA.from_ir(ir), vocab)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.synthetic:
        vocab = synthetic_vocabulary()
    else:
        from _gemma_vocab import gemma_vocabulary

        vocab = gemma_vocabulary()
    vocab.levels  # noqa: B018 - constraint-independent preparation, once per vocabulary
    prep = time.perf_counter() - t0
    print(f"vocabulary: {vocab.size} tokens, prepared in {prep * 1e3:.0f} ms ({vocab.fingerprint[:12]})")
    compile_one(IsInt("X"), vocab)  # warm imports
    print(f"{'workload':<16}{'compile ms':>11}{'dfa ms':>8}{'states':>8}{'seqs':>7}{'masks':>7}{'table MB':>10}")
    for name, c in WORKLOADS.items():
        times, dfa_times = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            dfa = ByteDFA.from_ir(lower_hole("X", c))
            t1 = time.perf_counter()
            a = TokenAutomaton.build(dfa, vocab)
            t2 = time.perf_counter()
            times.append(t2 - t)
            dfa_times.append(t1 - t)
        print(
            f"{name:<16}{statistics.median(times) * 1e3:>11.1f}{statistics.median(dfa_times) * 1e3:>8.1f}"
            f"{a.n_states:>8}{a.next_table.shape[1] - 1:>7}{a.n_masks:>7}{a.nbytes / 2**20:>10.2f}"
        )


if __name__ == "__main__":
    main()
