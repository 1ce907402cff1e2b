"""Scaling of compile time and table memory with vocabulary size and with the bound of ``len(X) < N``.

    .venv/bin/python benchmarks/scaling.py [--quick] [--json PATH] [--workloads ...]

1. Vocabulary size: the Gemma 3 vocabulary sub-sampled to 32k, 64k, 128k tokens (and the full 262,144). Every
   sub-vocabulary keeps EOS, every special/control id and every single-byte token (so each workload stays
   expressible), plus a seeded random sample of the other tokens; ids are renumbered in their original order,
   EOS and specials mapped consistently. Per size: vocabulary preparation (level arrays) and, per workload,
   compile time (median) and table memory (``automaton.nbytes``).
2. Bound size on the full vocabulary: ``len(X) < N`` and ``len(X) < N and STOPS_AT(X, "\\n")`` for
   N = 50, 200, 500, 1000, 2000: compile time, states, masks, table memory, and the memory once every mask is
   materialized (what a long decode can end up holding).

Nothing is asserted; DESIGN §4 asks for at most linear growth and <= 64 MB of tables per query.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import arg_parser, header, loadavg, med, selected, table, timed, write_json  # noqa: E402

SIZES = (32_768, 65_536, 131_072, 262_144)
BOUNDS = (50, 200, 500, 1000, 2000)


def subsample(vocab: Any, size: int, seed: int = 0) -> Any:
    """A ``size``-token sub-vocabulary keeping EOS, specials and single-byte tokens (ids renumbered in order)."""
    from lmqc.compiler.vocabulary import Vocabulary

    V = vocab.size
    if size >= V:
        return vocab
    lengths = vocab.lengths
    keep = np.zeros(V, bool)
    keep[vocab.eos_id] = True
    keep[vocab.special_ids] = True
    keep[lengths == 0] = True
    keep[lengths == 1] = True
    rest = np.flatnonzero(~keep)
    need = size - int(keep.sum())
    if need < 0:
        raise SystemExit(f"cannot sub-sample to {size}: {int(keep.sum())} tokens must be kept")
    keep[np.random.default_rng(seed).choice(rest, need, replace=False)] = True
    ids = np.flatnonzero(keep)
    new_id = np.full(V, -1, np.int64)
    new_id[ids] = np.arange(len(ids))
    starts, ends = vocab.offsets[ids], vocab.offsets[ids + 1]
    lens = ends - starts
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    gather = np.repeat(starts - offsets[:-1], lens) + np.arange(offsets[-1])
    return Vocabulary.from_arrays(
        {
            "buffer": vocab.buffer[gather],
            "offsets": offsets,
            "eos_id": np.array([new_id[vocab.eos_id]]),
            "special_ids": new_id[vocab.special_ids],
        }
    )


def main() -> None:
    ap = arg_parser(__doc__)
    ap.add_argument("--repeat", type=int, default=None, help="compile runs per point (default 5, quick 1)")
    args = ap.parse_args()
    R = args.repeat or (1 if args.quick else 5)
    mach = header("lmqc scaling benchmark: vocabulary size and length bound")
    import lmqc
    from lmqc.api import compile_query, parse

    full = lmqc.vocabulary()
    full.levels  # noqa: B018
    compile_query(parse('"[X]" where len(X) < 7'), full)  # warm imports
    workloads = selected(args.workloads)

    # -- vocabulary size ----------------------------------------------------------------------------------------
    by_size: dict[int, Any] = {}
    for size in SIZES:
        v = subsample(full, size)
        if v is not full:
            t = time.perf_counter()
            v.levels  # noqa: B018
            prep = time.perf_counter() - t
        else:
            prep = None
        row: dict[str, Any] = {"size": v.size, "eos_id": v.eos_id, "specials": len(v.special_ids), "levels_s": prep}
        for w in workloads:
            times, c = timed(lambda w=w, v=v: compile_query(parse(w.source), v), R)
            a = c.automata["X"]
            row[w.name] = {"compile_s": times, "compile_ms": med(times) * 1e3, "table_bytes": a.nbytes,
                           "states": a.n_states, "masks": a.n_masks}
        by_size[size] = row
        print(f"  vocabulary {v.size}: done", flush=True)
    names = [w.name for w in workloads]
    print(f"\ncompile time (ms, median of {R}) vs vocabulary size:")
    print(table(["workload", *(f"{s:,}" for s in SIZES)],
                [[n, *(by_size[s][n]["compile_ms"] for s in SIZES)] for n in names]))
    print("\ntable memory (MB, automaton.nbytes right after compile) vs vocabulary size:")
    print(table(["workload", *(f"{s:,}" for s in SIZES)],
                [[n, *(by_size[s][n]["table_bytes"] / 2**20 for s in SIZES)] for n in names]))

    # -- bound size ----------------------------------------------------------------------------------------------
    by_bound: dict[str, Any] = {}
    for kind, where in (("len_lt_N", "len(X) < {N}"), ("line_lt_N", 'len(X) < {N} and STOPS_AT(X, "\\n")')):
        for N in BOUNDS:
            src = '"[X]" where ' + where.format(N=N)
            times, c = timed(lambda src=src: compile_query(parse(src), full), R)
            a = c.automata["X"]
            tables = a.nbytes
            t = time.perf_counter()
            a.masks  # noqa: B018 - materialize every allowed set
            mat_s = time.perf_counter() - t
            by_bound[f"{kind}/{N}"] = {
                "kind": kind, "N": N, "source": src, "compile_s": times, "compile_ms": med(times) * 1e3,
                "states": a.n_states, "masks": a.n_masks, "sequences": int(a.next_table.shape[1] - 1),
                "table_bytes": tables, "all_masks_bytes": a.nbytes, "materialize_all_s": mat_s,
            }
        print(f"  {kind}: done", flush=True)
    print(f"\nbound size on the full vocabulary (compile median of {R}; 'all masks' = tables plus every allowed set "
          "materialized as int32 ids, as a long decode may end up holding):")
    print(table(
        ["constraint", "N", "compile ms", "states", "masks", "tables MB", "all masks MB", "materialize ms"],
        [[r["kind"], r["N"], r["compile_ms"], r["states"], r["masks"], r["table_bytes"] / 2**20,
          r["all_masks_bytes"] / 2**20, r["materialize_all_s"] * 1e3] for r in by_bound.values()],
        align="lrrrrrrr",
    ))
    for kind in ("len_lt_N", "line_lt_N"):
        pts = [by_bound[f"{kind}/{N}"] for N in BOUNDS]
        ratio_n = BOUNDS[-1] / BOUNDS[0]
        print(f"  {kind}: N x{ratio_n:.0f} -> compile x{pts[-1]['compile_ms'] / pts[0]['compile_ms']:.1f}, "
              f"tables x{pts[-1]['table_bytes'] / pts[0]['table_bytes']:.2f}, "
              f"all masks x{pts[-1]['all_masks_bytes'] / pts[0]['all_masks_bytes']:.2f}")
    print(f"# load average at end: {loadavg()}")
    write_json(args.json, "scaling.json", {
        "benchmark": "scaling", "machine": mach, "quick": args.quick, "repeat": R,
        "by_vocab_size": {str(k): v for k, v in by_size.items()}, "by_bound": by_bound,
    })


if __name__ == "__main__":
    main()
