"""lmqc.cache: one cache root, atomic writes with unique temporary files (concurrent saves of one path)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import lmqc
from lmqc.cache import atomic_write, cache_dir


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMQC_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path and cache_dir("vocab") == tmp_path / "vocab"
    assert lmqc.api.cache_dir() == tmp_path


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    assert atomic_write(target, b"abc") == target and target.read_bytes() == b"abc"

    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, fail)
    assert atomic_write(target, fail, cache=True) is None
    assert target.read_bytes() == b"abc" and sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_concurrent_saves_of_one_path_never_corrupt_it(tmp_path: Path) -> None:
    compiled = lmqc.compile('"A: [X]" where INT(X) and len(TOKENS(X)) < 5', model="lmqc:tiny", cache=False)
    other = lmqc.compile('"A: [X]" where X in ["yes", "no"]', model="lmqc:tiny", cache=False)
    path = tmp_path / "q.lmqc"
    errors: list[BaseException] = []

    def save(q: object) -> None:
        try:
            for _ in range(20):
                q.save(path)  # type: ignore[attr-defined]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=save, args=(q,)) for q in (compiled, other) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    loaded = lmqc.load(path)  # one of the two, whole
    assert loaded.query.source in (compiled.query.source, other.query.source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.lmqc"]
    assert np.array_equal(loaded.automaton("X").tok_seq, (compiled if loaded.query.source == compiled.query.source else other).automaton("X").tok_seq)
