"""Compiled queries: artifacts round-trip, refuse mismatches and corruption, and the compile cache."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lmqc
from lmqc.compiler import artifact
from lmqc.compiler.vocabulary import Vocabulary
from lmqc.errors import ArtifactError

SRC = '''argmax
    "Q: [A]\\nN: [N]\\nFree: [F]"
from "lmqc:tiny"
where STOPS_AT(A, ".") and len(A) < 20 and INT(N) and len(TOKENS(N)) < 4
'''


@pytest.fixture(scope="module")
def compiled():
    return lmqc.compile(SRC, cache=False)


def test_round_trip_preserves_automata_and_program(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    loaded = lmqc.load(path)
    assert loaded.query == compiled.query
    assert loaded.holes == compiled.holes
    assert loaded.vocab_fingerprint == compiled.vocab_fingerprint
    for var, a in compiled.automata.items():
        b = loaded.automaton(var)
        assert b.n_states == a.n_states and b.unconstrained == a.unconstrained
        for s in range(a.n_states):
            assert np.array_equal(a.allowed(s), b.allowed(s))
            assert a.is_final(s) == b.is_final(s) and a.is_stopped(s) == b.is_stopped(s)
    # a loaded artifact runs exactly like the freshly compiled query
    assert lmqc.run(loaded).prompt == lmqc.run(compiled).prompt


def test_artifact_header_is_json_and_never_pickled(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        header = json.loads(np.load(z.open("header.json.npy"), allow_pickle=False).tobytes())
    assert all(n.endswith(".npy") for n in names)
    assert header["format_version"] == artifact.FORMAT_VERSION
    assert header["vocab_fingerprint"] == compiled.vocab_fingerprint
    assert header["source_hash"] == artifact.source_hash(SRC)


def test_refuses_another_vocabulary(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    with pytest.raises(ArtifactError, match="another vocabulary"):
        artifact.load(path, vocab_fingerprint="0" * 64)
    other = Vocabulary([b"a", b"b", b""], eos_id=2)
    with pytest.raises(ArtifactError, match="another vocabulary"):
        artifact.load(path, vocab_fingerprint=other.fingerprint)


def test_refuses_other_format_version(compiled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "FORMAT_VERSION", artifact.FORMAT_VERSION + 1)
    path = compiled.save(tmp_path / "future.lmqc")
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match="format version"):
        lmqc.load(path)


@pytest.mark.parametrize("cut", [0, 10, 100, -50, -1])
def test_refuses_truncated_files(compiled, tmp_path: Path, cut: int) -> None:
    data = compiled.save(tmp_path / "q.lmqc").read_bytes()
    bad = tmp_path / "bad.lmqc"
    bad.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut] if cut < 0 else b"")
    with pytest.raises(ArtifactError):
        lmqc.load(bad)


def test_refuses_a_pickled_or_foreign_npz(tmp_path: Path) -> None:
    p = tmp_path / "evil.lmqc"
    with open(p, "wb") as fh:
        np.savez(fh, **{"header.json": np.array([{"format": "lmqc-artifact"}], dtype=object)})
    with pytest.raises(ArtifactError):
        lmqc.load(p)
    q = tmp_path / "foreign.lmqc"
    with open(q, "wb") as fh:
        np.savez(fh, x=np.arange(3))
    with pytest.raises(ArtifactError, match="not an lmqc artifact"):
        lmqc.load(q)
    with pytest.raises(ArtifactError, match="cannot read"):
        lmqc.load(tmp_path / "missing.lmqc")


def test_corrupt_automaton_arrays_are_refused(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    key = next(k for k in files if k.endswith("/next_table"))
    files[key] = files[key] + 1000
    bad = tmp_path / "bad.lmqc"
    with open(bad, "wb") as fh:
        np.savez(fh, **files)
    with pytest.raises(ArtifactError):
        lmqc.load(bad)


def test_compile_cache_reuses_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMQC_CACHE_DIR", str(tmp_path))
    a = lmqc.compile(SRC)
    entries = list((tmp_path / "queries").glob("*.lmqc"))
    assert len(entries) == 1
    b = lmqc.compile(SRC)
    assert b.compile_seconds == {}  # loaded, not rebuilt
    assert a.holes == b.holes
    entries[0].write_bytes(b"garbage")  # a damaged cache entry is rebuilt, not an error
    c = lmqc.compile(SRC)
    assert c.holes == a.holes and c.compile_seconds


def test_token_healing_keeps_prompt_and_value_apart() -> None:
    q = lmqc.compile('argmax\n    "Answer: [X]"\nfrom "lmqc:tiny"\nwhere X in ["yes", "no"]', cache=False)
    r = lmqc.run(q)
    assert r.variables["X"] in {"yes", "no"}
    assert r.prompt == "Answer: " + r.variables["X"]


def _rewrite_header(path: Path, out: Path, edit) -> Path:
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    header = json.loads(np.load(__import__("io").BytesIO(files["header.json.npy"]), allow_pickle=False).tobytes())
    edit(header)
    buf = __import__("io").BytesIO()
    np.save(buf, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    files["header.json.npy"] = buf.getvalue()
    with zipfile.ZipFile(out, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return out


def test_the_program_that_runs_is_compiled_from_the_embedded_source(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    # same holes and constraints, other Python: the artifact runs the code its source says
    new_src = SRC.replace('"Q: [A]', 'x = 40 + 2\n    "Q{x}: [A]')

    def edit(h: dict) -> None:
        h["source"], h["source_hash"] = new_src, artifact.source_hash(new_src)

    loaded = lmqc.load(_rewrite_header(path, tmp_path / "edited.lmqc", edit))
    assert "x = 40 + 2" in loaded.program.source
    assert lmqc.run(loaded).prompt.startswith("Q42: ")


def test_source_whose_holes_do_not_match_the_stored_automata_is_refused(compiled, tmp_path: Path) -> None:
    path = compiled.save(tmp_path / "q.lmqc")
    new_src = SRC.replace("len(A) < 20", "len(A) < 21")

    def edit(h: dict) -> None:
        h["source"], h["source_hash"] = new_src, artifact.source_hash(new_src)

    with pytest.raises(ArtifactError, match="does not match"):
        lmqc.load(_rewrite_header(path, tmp_path / "edited.lmqc", edit))


def _forged_header(path: Path, out: Path, raw: bytes | None = None, edit=None, extra: dict | None = None) -> Path:
    import io

    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    if raw is None:
        header = json.loads(np.load(io.BytesIO(files["header.json.npy"]), allow_pickle=False).tobytes())
        edit(header)
        raw = json.dumps(header).encode()
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(raw, dtype=np.uint8))
    files["header.json.npy"] = buf.getvalue()
    files.update(extra or {})
    with zipfile.ZipFile(out, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    return out


def _npy_header_only(shape: str) -> bytes:
    d = "{'descr': '<i4', 'fortran_order': False, 'shape': " + shape + ", }"
    d = d + " " * (118 - len(d)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d.encode()


def test_hostile_files_are_refused_with_artifact_errors(compiled, tmp_path: Path) -> None:
    import os

    good = compiled.save(tmp_path / "q.lmqc")
    np.save(tmp_path / "x.npy", np.arange(10))
    os.mkfifo(tmp_path / "fifo.lmqc")
    (tmp_path / "zero.lmqc").symlink_to("/dev/zero")
    (tmp_path / "empty.lmqc").write_bytes(b"")
    cases = {
        tmp_path / "x.npy": "not a valid lmqc artifact",
        tmp_path / "fifo.lmqc": "not a regular file",  # would block forever on read
        tmp_path / "zero.lmqc": "not a regular file",  # would never end
        tmp_path / "empty.lmqc": "not a valid lmqc artifact",
        _forged_header(good, tmp_path / "h1.lmqc", edit=lambda h: h.update(holes=[1, 2])): "'holes' has the wrong type",
        _forged_header(good, tmp_path / "h2.lmqc", edit=lambda h: h.update(vocab_size="x")): "'vocab_size'",
        _forged_header(good, tmp_path / "h3.lmqc", raw=b"[" * 100_000 + b"]" * 100_000): "corrupt artifact header",
        # a declared shape of 400 GB must not be allocated
        _forged_header(good, tmp_path / "h4.lmqc", edit=lambda h: None,
                       extra={"A/next_table.npy": _npy_header_only("(100000000000,)")}): "truncated or forged",
    }
    for path, message in cases.items():
        with pytest.raises(ArtifactError, match=message):
            lmqc.load(path)


def test_compile_cache_entry_of_another_query_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LMQC_CACHE_DIR", str(tmp_path))
    a = 'argmax\n    "[X]"\nfrom "lmqc:tiny"\nwhere X in ["yes", "no"]\n'
    b = 'argmax\n    "[X]"\nfrom "lmqc:tiny"\nwhere X in ["red", "blue"]\n'
    lmqc.compile(a)
    lmqc.compile(b)
    entries = sorted((tmp_path / "queries").glob("*.lmqc"))
    assert len(entries) == 2
    # plant a's artifact under every key: b must still compile to its own automaton
    data = [p.read_bytes() for p in entries]
    for p in entries:
        p.write_bytes(data[0] if data[0] != p.read_bytes() else data[1])
    assert lmqc.run(b).variables["X"] in ("red", "blue")
    assert lmqc.run(a).variables["X"] in ("yes", "no")
