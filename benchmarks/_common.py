"""Shared pieces of the benchmark scripts: the DESIGN §4 workloads, machine info, tables, JSON output,
real Gemma logits rows, and the per-step constraint-work walk (through the runtime's own decode helpers).

Nothing here asserts on timings; every script prints what it measured and writes it as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    where: str  # the LMQL where-constraint on hole X
    regex: str  # the regex equivalent (DESIGN §4), used by the anchors
    prompt: str  # a realistic prompt for end-to-end runs

    @property
    def source(self) -> str:
        """The workload as a real lmqc query."""
        return f'"[X]" where {self.where}'


WORKLOADS: list[Workload] = [
    Workload("int", "INT(X)", r" ?[0-9]+", "Q: How many legs does a spider have? Answer with a number.\nA:"),
    Workload(
        "choice",
        'X in ["positive", "negative", "neutral"]',
        r"(positive|negative|neutral)",
        "Review: I loved this movie, it was great!\nSentiment (positive, negative or neutral): ",
    ),
    Workload("stops_at_period", 'STOPS_AT(X, ".")', r"[^.]*\.", "Write one sentence about the sea.\n"),
    Workload("len_lt_50", "len(X) < 50", r"(.|\n){0,49}", "Write a short greeting.\n"),
    Workload(
        "date",
        'REGEX(X, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")',
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "Q: When did the Apollo 11 mission land on the moon? Give the date as YYYY-MM-DD.\nA: ",
    ),
    Workload(
        "json_obj",
        r"""REGEX(X, r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,3}\}')""",
        r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,3}\}',
        "Give a JSON record of a person with name and age.\n",
    ),
    Workload(
        "email",
        r'REGEX(X, r"[a-z0-9._]+@[a-z0-9]+\.(com|org|net)")',
        r"[a-z0-9._]+@[a-z0-9]+\.(com|org|net)",
        "Q: What is a typical email address of a support team?\nA: ",
    ),
    Workload(
        "line_lt_200",
        'len(X) < 200 and STOPS_AT(X, "\\n")',
        r"[^\n]{0,199}\n",
        "Describe a cat in one line.\n",
    ),
]

LOGITS_PROMPT = (
    "Below is a customer record as JSON, followed by a one-sentence summary.\n"
    '{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org"}\nSummary:'
)


# -- command line, machine, output --------------------------------------------------------------------------


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a run under a minute or two)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS), help="comma-separated subset")
    return ap


def selected(spec: str) -> list[Workload]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    by = {w.name: w for w in WORKLOADS}
    unknown = [n for n in names if n not in by]
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; known: {list(by)}")
    return [by[n] for n in names]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "compiler", "runtime", "lmqc"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    u = platform.uname()
    load = os.getloadavg()
    return {
        "uname": f"{u.system} {u.node} {u.release} {u.version} {u.machine}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "lmqc_commit": _git_commit(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "LMQC_N_THREADS": os.environ.get("LMQC_N_THREADS"),
    }


def header(title: str) -> dict[str, Any]:
    """Print the command line and the machine; return the machine record."""
    m = machine()
    print(f"# {title}")
    print(f"# command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"# machine: {m['uname']}")
    print(f"# cpu: {m['cpu']} x {m['cores']} cores; load average at start {m['loadavg_start']}")
    print(f"# python {m['python']}, numpy {m['numpy']}, lmqc commit {m['lmqc_commit']}, {m['date']}")
    return m


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_json(path: Path | None, default_name: str, payload: dict[str, Any]) -> Path:
    path = path or RESULTS / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "loadavg_end": loadavg(), "argv": sys.argv}
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"# JSON: {path}")
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None) -> str:
    """An aligned text table; ``align`` is one char per column (``l``/``r``), default: first left, rest right."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    out = []
    for k, r in enumerate(cells):
        out.append(
            "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align, strict=True)).rstrip()
        )
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _fmt(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        if c != c:
            return "nan"
        a = abs(c)
        if a >= 100:
            return f"{c:,.0f}"
        if a >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)


def stats_us(ns: Sequence[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {
        "median": float(np.median(a)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "n": len(a),
    }


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Wall seconds of ``repeat`` calls (gc disabled around each), and the last result."""
    out: Any = None
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return times, out


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# -- the model's vocabulary and real logits -----------------------------------------------------------------


def model_path() -> str:
    from lmqc.runtime.models import resolve_model

    return resolve_model("gemma-3-270m")


def real_logits(n_rows: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """``n_rows`` real next-token logit rows of Gemma 3 270M: greedy decoding after ``LOGITS_PROMPT``.

    Computed once and cached in ``benchmarks/results/`` (keyed by model file and prompt), float32[n_rows, V].
    """
    import hashlib

    p = Path(model_path())
    st = p.stat()
    key = hashlib.sha256(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{LOGITS_PROMPT}\0{n_rows}".encode()).hexdigest()[:16]
    cache = RESULTS / f"gemma_logits_{key}.npy"
    info = {"prompt": LOGITS_PROMPT, "rows": n_rows, "cache": str(cache)}
    if cache.exists():
        rows = np.load(cache, allow_pickle=False)
        if rows.shape[0] == n_rows:
            info["cached"] = True
            return rows, info
    from lmqc.runtime.models import get_model

    m = get_model("gemma-3-270m")
    m.reset()
    ctx = m.tokenize(LOGITS_PROMPT, bos=True)
    rows = np.empty((n_rows, m.n_vocab), np.float32)
    for i in range(n_rows):
        rows[i] = m.eval([ctx])[0]
        ctx.append(int(np.argmax(rows[i])))
    m.reset()
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(cache, rows)
    info["cached"] = False
    return rows, info


# -- per-step constraint work -------------------------------------------------------------------------------


def special_ids(vocab: Any) -> np.ndarray:
    """What a backend reports as ``special_ids``: never-generated ids except EOS."""
    s = np.flatnonzero(vocab.never).astype(np.int32)
    return s[s != vocab.eos_id]


def step_walk(
    automaton: Any, vocab: Any, rows: np.ndarray, steps: int, *, seed: int = 0, passes: int = 1
) -> dict[str, Any]:
    """Per-step constraint work over a random walk, through ``runtime.decode``'s own code path.

    One step, timed: ``HoleTables.allowed`` (state -> cached mask, exactly what the decoder calls), ``choose_argmax`` on a
    real logits row (the decoder's choice, using the runtime's gather / argmax-first / complement paths) and
    ``automaton.step`` for the chosen token (the state advance). The walk itself continues with a random
    allowed non-EOS token (untimed), restarting at the initial state when the hole has ended.

    ``automaton=None`` measures the decoder's unconstrained path (no state advance).

    Pass 1 runs on a fresh automaton, so it includes materializing each mask the first time it is met (what
    the first decoding steps of a fresh process pay); later passes replay the same walk warm. Returns per-step
    nanoseconds: ``cold`` (pass 1) and ``warm`` (per step, the median over the warm passes).
    """
    from lmqc.runtime.decode import HoleSpec
    from lmqc.runtime.decode.hole import HoleTables
    from lmqc.runtime.decode.strategies import choose_argmax

    V, eos = vocab.size, vocab.eos_id
    hole = HoleTables(HoleSpec(automaton), V, eos, special_ids(vocab))
    runs: list[list[int]] = []
    visited: set[int] = set()
    restarts = 0
    # The decoder applies masks to logits the model has just written (cache-warm): copy each row into one
    # buffer before its (timed) step, instead of reading a cold row out of a 64 MB array.
    buf = np.empty(rows.shape[1], rows.dtype)
    for p in range(max(1, passes)):
        rng = np.random.default_rng(seed)
        state = -1 if automaton is None else int(automaton.initial)
        n = 0
        ns: list[int] = []
        gc.collect()
        gc.disable()
        try:
            for i in range(steps):
                buf[:] = rows[i % len(rows)]
                row = buf
                t0 = time.perf_counter_ns()
                ids, dense = hole.allowed(state, n)
                tok = choose_argmax(row, ids, dense)
                if automaton is not None and tok != eos and tok >= 0:
                    automaton.step(state, tok)
                ns.append(time.perf_counter_ns() - t0)
                if p == 0:
                    visited.add(state)
                if automaton is None:
                    continue
                cand = ids if ids is not None else dense.all_ids()
                cand = cand[cand != eos] if len(cand) else cand
                nxt = -1
                if len(cand):
                    nxt = automaton.step(state, int(cand[rng.integers(len(cand))]))
                if nxt < 0 or automaton.is_stopped(nxt):
                    state, n = int(automaton.initial), 0
                    if p == 0:
                        restarts += 1
                else:
                    state, n = nxt, n + 1
        finally:
            gc.enable()
        runs.append(ns)
    cold = np.asarray(runs[0], np.float64)
    warm = np.median(np.asarray(runs[1:], np.float64), axis=0) if len(runs) > 1 else cold
    return {"cold": cold, "warm": warm, "states_visited": len(visited), "restarts": restarts}
