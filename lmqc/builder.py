"""``lmqc.QueryBuilder``: a query put together from its clauses in code (LMQL's ``lmql.QueryBuilder``).

    query = (lmqc.QueryBuilder()
             .set_decoder("sample", temperature=0.7)
             .set_prompt("What is the capital of France? [ANSWER]")
             .set_where("len(TOKENS(ANSWER)) < 10")
             .build())
    result = query.run_sync()          # or: await query.run()

The built query is ordinary query source (``str(query)``), parsed and type-checked by ``build()``, so a mistake
in a clause is a located :class:`~lmqc.QuerySyntaxError` / :class:`~lmqc.QueryTypeError` there, not at run time.
"""

from __future__ import annotations

from typing import Any

from lmqc.compiler.decoders import DECODERS, SETTINGS, decoder_arg

__all__ = ["BuiltQuery", "QueryBuilder"]


class BuiltQuery:
    """A query made by :class:`QueryBuilder`: its source and the run verbs."""

    __slots__ = ("query_string",)

    def __init__(self, query_string: str) -> None:
        self.query_string = query_string

    def __str__(self) -> str:
        return self.query_string

    def __repr__(self) -> str:
        return f"BuiltQuery({self.query_string!r})"

    def run_sync(self, **kwargs: Any) -> Any:
        """Run it (``lmqc.run``): inputs and run options as keyword arguments."""
        import lmqc

        return lmqc.run(self.query_string, **kwargs)

    async def run(self, **kwargs: Any) -> Any:
        """Run it from async code (``lmqc.run_async``)."""
        import lmqc

        return await lmqc.run_async(self.query_string, **kwargs)


class QueryBuilder:
    """Builds a query clause by clause; every setter returns the builder, ``build()`` the query."""

    def __init__(self) -> None:
        self._decoder: tuple[str, dict[str, Any]] | None = None
        self._prompt: str | None = None
        self._model: str | None = None
        self._where: list[str] = []
        self._distribution: tuple[str, str] | None = None

    def set_decoder(self, decoder: str = "argmax", **kwargs: Any) -> QueryBuilder:
        """The decoder clause: ``argmax``, ``sample``, ``beam``, ``beam_var`` and their arguments."""
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}: one of {', '.join(DECODERS)}")
        for key, value in kwargs.items():
            if key in SETTINGS:
                decoder_arg(key, value)  # the settings table's own check and message
            elif not isinstance(value, int | float | str | bool | None):
                raise ValueError(f"decoder argument {key} must be a number, a string or a bool, not {value!r}")
        self._decoder = (decoder, dict(kwargs))
        return self

    def set_prompt(self, prompt: str) -> QueryBuilder:
        """The prompt: one query string (``[HOLE]`` holes, ``{expr}`` interpolation of the inputs)."""
        if self._prompt is not None:
            raise ValueError("the prompt is already set: give the whole prompt in one set_prompt call")
        if not isinstance(prompt, str):
            raise ValueError(f"the prompt must be a string, not {type(prompt).__name__}")
        self._prompt = prompt
        return self

    def set_model(self, model: str) -> QueryBuilder:
        """The model (the ``from`` clause): a model name, a ``.gguf`` path or an lmqc model spec."""
        if not isinstance(model, str):
            raise ValueError(f"the model must be a string, not {type(model).__name__}")
        self._model = model
        return self

    def set_where(self, where: str) -> QueryBuilder:
        """Add a constraint; several are joined with ``and`` (write ``or`` inside one call)."""
        self._where.append(where)
        return self

    def set_distribution(self, variable: str, expr: str) -> QueryBuilder:
        """``distribution VARIABLE in EXPR``: ``expr`` is Python source, e.g. ``'["A", "B"]'``."""
        self._distribution = (variable, expr)
        return self

    def build(self) -> BuiltQuery:
        """The query, parsed and checked (no model is loaded)."""
        import lmqc

        if self._prompt is None:
            raise ValueError("a query needs a prompt: call set_prompt first")
        lines = []
        if self._decoder is not None:
            name, kwargs = self._decoder
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            lines.append(f"{name}({args})" if args else name)
        lines.append("    " + repr(self._prompt) if self._decoder is not None else repr(self._prompt))
        if self._model is not None:
            lines.append(f"from {self._model!r}")
        if self._where:
            lines.append("where " + " and ".join(f"({w})" if len(self._where) > 1 else w for w in self._where))
        if self._distribution is not None:
            lines.append(f"distribution {self._distribution[0]} in {self._distribution[1]}")
        source = "\n".join(lines) + "\n"
        lmqc.parse(source, filename="<QueryBuilder>")
        return BuiltQuery(source)
