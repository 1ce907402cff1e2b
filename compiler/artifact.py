"""Compiled queries and their artifacts.

An artifact is one ``.npz`` file (``numpy.savez``; loaded with ``allow_pickle=False``): a JSON header array
plus each hole slot's automaton arrays. The header holds the format version, lmqc version, the query source and
its hash, the per-slot IR as JSON (rebuilt only from known node classes), and the vocabulary fingerprint.
Loading parses the embedded source again (the program that runs is always compiled from it, never taken from
elsewhere) and checks that its holes lower to the stored IR. Loading never executes query code; a mismatch in
format version or vocabulary is refused with a typed error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmqc.cache import atomic_write
from lmqc.errors import ArtifactError

from . import nodes
from .automaton import TokenAutomaton
from .ir import HoleIR
from .serialize import from_json, to_json

FORMAT = "lmqc-artifact"
FORMAT_VERSION = 2
_HEADER = "header.json"


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class CompiledQuery:
    """A parsed query plus one token automaton per constrained hole, for one vocabulary.

    Attributes
    ----------
    query : nodes.Query
        The parsed query; its program (``program``) is compiled from ``query.source``.
    holes : dict[str, HoleIR]
        IR per hole slot (``checker.hole_slots``: ``NAME``, or ``NAME#2`` for a later occurrence of ``NAME`` with
        other constraints), in source order. Slots whose constraint has Python arguments (``X in options``) have
        no IR here: they are lowered when the hole starts.
    automata : dict[str, TokenAutomaton]
        Token automaton per slot in ``holes``, over the vocabulary with ``vocab_fingerprint``.
    vocab_fingerprint : str
        Fingerprint of the vocabulary the automata were built for.
    model : str | None
        The model spec the query was compiled for (a caller's override, or the query's ``from``).
    """

    query: nodes.Query
    holes: dict[str, HoleIR]
    automata: dict[str, TokenAutomaton]
    vocab_fingerprint: str
    vocab_size: int
    model: str | None = None
    compile_seconds: dict[str, float] = field(default_factory=dict)
    _program: Any = field(default=None, repr=False)
    _slots: dict[int, str] | None = field(default=None, repr=False)
    _constraints: dict[int, Any] | None = field(default=None, repr=False)
    _names: list[str] | None = field(default=None, repr=False)
    runtime_cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # automata of dynamic constraints

    @property
    def source(self) -> str:
        return self.query.source

    @property
    def program(self) -> Any:
        """The compiled prompt program (``compiler.program.Program``), built from ``query.source``."""
        if self._program is None:
            from .program import build

            self._program = build(self.query)
        return self._program

    def constraint(self, index: int) -> Any:
        """The constraint of hole occurrence ``index`` (``checker.hole_constraints``), computed once."""
        if self._constraints is None:
            from .checker import hole_constraints

            self._constraints = hole_constraints(self.query)
        return self._constraints[index]

    def hole_name(self, index: int) -> str:
        """The variable name of hole occurrence ``index``."""
        if self._names is None:
            self._names = [h.name for h in self.query.holes()]
        return self._names[index]

    def slot(self, index: int) -> str:
        """The automaton slot of hole occurrence ``index``."""
        if self._slots is None:
            from .checker import hole_slots

            self._slots = hole_slots(self.query)
        return self._slots[index]

    def automaton(self, var: str) -> TokenAutomaton:
        """The token automaton of hole ``var`` (its first occurrence; ``NAME#2`` ... for later ones)."""
        try:
            return self.automata[var]
        except KeyError:
            raise KeyError(f"query has no hole {var!r}; holes: {', '.join(self.automata) or 'none'}") from None

    # -- artifact ---------------------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        from lmqc import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lmqc_version": __version__,
            "source_hash": source_hash(self.query.source),
            "source": self.query.source,
            "filename": self.query.filename,
            "holes": {var: to_json(ir) for var, ir in self.holes.items()},
            "vocab_fingerprint": self.vocab_fingerprint,
            "vocab_size": self.vocab_size,
            "model": self.model,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact atomically (``lmqc.cache.atomic_write``: unique temp file + rename); return its path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        header = json.dumps(self.header()).encode("utf-8")
        arrays[_HEADER] = np.frombuffer(header, dtype=np.uint8)
        for var, automaton in self.automata.items():
            for key, arr in automaton.to_arrays().items():
                arrays[f"{var}/{key}"] = np.asarray(arr)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))  # a unique temp file: concurrent saves are safe
        return path

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.automata.values())


def load(path: str | os.PathLike[str], *, vocab_fingerprint: str | None = None) -> CompiledQuery:
    """Load an artifact; refuse another format version, another vocabulary (if given) or a corrupt file."""
    path = Path(path)
    files = _read_npz(path)
    raw = files.pop(_HEADER, None)
    if raw is None:
        raise ArtifactError(f"{path} is not an lmqc artifact (no header)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: corrupt artifact header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an lmqc artifact")
    if header.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format version {header.get('format_version')!r}; this lmqc reads version "
            f"{FORMAT_VERSION}: recompile the query with `lmqc compile`"
        )
    _check_header_types(path, header)
    if vocab_fingerprint is not None and header.get("vocab_fingerprint") != vocab_fingerprint:
        raise ArtifactError(
            f"{path} was compiled for another vocabulary (fingerprint {str(header.get('vocab_fingerprint'))[:12]}, "
            f"this model's is {vocab_fingerprint[:12]}): recompile it for this model"
        )
    try:
        source, filename = header["source"], header.get("filename", "<query>")
        if not isinstance(source, str) or not isinstance(filename, str):
            raise ArtifactError(f"{path}: corrupt artifact (source is not text)")
        if source_hash(source) != header["source_hash"]:
            raise ArtifactError(f"{path}: source hash mismatch (corrupt artifact)")
        holes = {var: from_json(ir) for var, ir in header["holes"].items()}
        query = _parse_source(path, source, filename, holes)
        automata = {}
        for var in holes:
            prefix = f"{var}/"
            arrays = {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}
            automata[var] = TokenAutomaton.from_arrays(arrays)
    except ArtifactError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
        raise ArtifactError(f"{path}: corrupt artifact ({type(exc).__name__}: {str(exc)[:200]})") from None
    return CompiledQuery(
        query=query,
        holes=holes,
        automata=automata,
        vocab_fingerprint=header["vocab_fingerprint"],
        vocab_size=int(header["vocab_size"]),
        model=header.get("model"),
    )


MAX_ARTIFACT_BYTES = 1 << 31  # refuse larger files (and larger declared contents) before reading them


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an artifact file, read defensively: a regular file of bounded size, a zip of ``.npy``
    members whose declared shapes match their sizes (no allocation from a forged header), no object arrays."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path} is not a regular file")
    if st.st_size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_ARTIFACT_BYTES} bytes: not an lmqc artifact")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc.strerror or exc}") from None
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if sum(i.file_size for i in infos) > MAX_ARTIFACT_BYTES:
                raise ArtifactError(f"{path}: artifact contents are larger than {MAX_ARTIFACT_BYTES} bytes")
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ArtifactError(f"{path}: unexpected member {info.filename!r} (not an lmqc artifact)")
                with z.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(fh)
                    if dtype.hasobject:
                        raise ArtifactError(f"{path}: member {info.filename!r} holds Python objects (refused)")
                    n = 1
                    for d in shape:
                        n *= int(d)
                    header_len = fh.tell()
                    if n * dtype.itemsize != info.file_size - header_len:
                        raise ArtifactError(f"{path}: member {info.filename!r} is truncated or forged")
                    body = fh.read()
                arr = np.frombuffer(body, dtype=dtype)
                out[info.filename[: -len(".npy")]] = arr.reshape(shape, order="F" if fortran else "C")
    except ArtifactError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, TypeError, NotImplementedError) as exc:
        raise ArtifactError(f"{path} is not a valid lmqc artifact (corrupt or truncated: {str(exc)[:200]})") from None
    return out


def _check_header_types(path: Path, header: dict[str, Any]) -> None:
    def bad(key: str) -> ArtifactError:
        return ArtifactError(f"{path}: corrupt artifact (header field {key!r} has the wrong type)")

    for key, kind in (("source", str), ("source_hash", str), ("vocab_fingerprint", str), ("holes", dict)):
        if not isinstance(header.get(key), kind):
            raise bad(key)
    if not isinstance(header.get("vocab_size"), int) or isinstance(header.get("vocab_size"), bool):
        raise bad("vocab_size")
    for key in ("filename", "model"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise bad(key)
    if not all(isinstance(k, str) and isinstance(v, dict) for k, v in header["holes"].items()):
        raise bad("holes")


def _parse_source(path: Path, source: str, filename: str, holes: dict[str, Any]) -> nodes.Query:
    """Parse the embedded source (never executed here) and check it lowers to the stored IR."""
    from lmqc.errors import LmqcError

    from .checker import hole_constraints, hole_slots
    from .lower import is_dynamic, lower_hole
    from .parser import parse

    try:
        query = parse(source, filename)
    except LmqcError as exc:
        raise ArtifactError(f"{path}: the embedded query does not compile with this lmqc ({exc})") from None
    constraints = hole_constraints(query)
    expected: dict[str, Any] = {}
    names = [h.name for h in query.holes()]
    for index, slot in hole_slots(query).items():
        c = constraints[index]
        if slot not in expected and not is_dynamic(c):
            expected[slot] = lower_hole(names[index], c, source=source, filename=filename)
    for slot, ir in holes.items():
        if not isinstance(ir, HoleIR) or expected.get(slot) != ir:
            raise ArtifactError(f"{path}: corrupt artifact (hole {slot!r} does not match its query)")
    if set(expected) != set(holes):
        raise ArtifactError(f"{path}: corrupt artifact (holes {sorted(holes)} do not match the query's {sorted(expected)})")
    return query
