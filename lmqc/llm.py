"""``lmqc.model(...)``: a model object, as LMQL's ``lmql.LLM``.

It names a model (``model_identifier``, the spec) and is accepted wherever a spec is: ``model=`` of
``lmqc.run``/``compile``/``query``/``generate``/``score``, ``lmqc.set_default_model``, and a query's ``from m``
when ``m`` is an input or global holding it. It has LMQL's generation verbs (``generate``, ``score`` and their
``_sync`` forms), and everything else is the loaded backend's (``tokenize``, ``stats``, ``n_ctx`` ...).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LLM"]


class LLM:
    """A loaded model. Create with :func:`lmqc.model`; one object per spec per process."""

    __slots__ = ("_backend", "model_identifier")

    def __init__(self, spec: str, backend: Any) -> None:
        self.model_identifier = spec
        self._backend = backend

    @property
    def __lmqc_spec__(self) -> str:
        return self.model_identifier

    @property
    def backend(self) -> Any:
        """The loaded backend (``LlamaBackend``, ``TinyBackend``, a remote or vLLM decoder service)."""
        return self._backend

    def __getattr__(self, name: str) -> Any:
        # the backend's own API (tokenize, detokenize, stats, n_ctx, vocabulary ...), as before model objects
        return getattr(self._backend, name)

    def __repr__(self) -> str:
        return f"lmqc.model({self.model_identifier!r})"

    def generate_sync(self, prompt: str, max_tokens: int | None = None, **kwargs: Any) -> Any:
        """Continue ``prompt`` without constraints: the completion (a list for ``decoder="sample", n=2``)."""
        from .api import generate_sync

        return generate_sync(prompt, max_tokens, self.model_identifier, **kwargs)

    async def generate(self, prompt: str, max_tokens: int | None = None, **kwargs: Any) -> Any:
        """Async :meth:`generate_sync` (batched with concurrent queries on this model)."""
        from .api import generate

        return await generate(prompt, max_tokens, self.model_identifier, **kwargs)

    def score_sync(self, prompt: str, values: str | list[str]) -> Any:
        """Log-probabilities of continuations of ``prompt``: an :class:`lmqc.ScoringResult`."""
        from .api import score_sync

        return score_sync(prompt, values, self.model_identifier)

    async def score(self, prompt: str, values: str | list[str]) -> Any:
        """Async :meth:`score_sync`."""
        from .api import score

        return await score(prompt, values, self.model_identifier)
