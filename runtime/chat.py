"""Chat role tags (``{:system}``, ``{:user}``, ``{:assistant}``) rendered for the model context.

When the prompt of a query moves from one role to another, the query driver asks a :class:`ChatFormat` for the
text to put into the *model context* at that point (:meth:`ChatFormat.switch`); the user-visible prompt keeps
LMQL's own markers. Two kinds of format exist:

``plain`` (:func:`plain_format`)
    For models without a chat template. A turn opens with the role name, a colon and a space; every turn but
    the first starts on a new line, and nothing closes a turn::

        switch(None, "system")    == "system: "
        switch("system", "user")  == "\\nuser: "
        close(role)               == ""

    so the conversation system "Be brief.", user "Say hi", assistant "Hi!" renders as
    ``"system: Be brief.\\nuser: Say hi\\nassistant: Hi!"``. Any role name renders this way.

``template`` (:func:`template_format`)
    Derived from a Jinja2 chat template (Hugging Face / GGUF ``tokenizer.chat_template``: ``messages`` as a
    list of ``{"role", "content"}``, ``add_generation_prompt``, ``bos_token``, ``eos_token``). The template is
    rendered with unique marker strings as message contents, and each rendering is cut at the markers: the
    text before the first marker opens the first turn, the text between two markers is the switch between
    their roles, and the text after the last marker closes the last turn. See :func:`template_format` for the
    conversations rendered and for what happens where a template refuses a role sequence.

The text returned by ``switch`` holds the model's control tokens as text (``<start_of_turn>``,
``<|im_start|>``): the driver must tokenize it with special-token parsing (``LlamaBackend.tokenize(...,
special=True)``) so they become control token ids. A leading ``bos_token`` of the template is left out of
``switch(None, role)``: the driver tokenizes the prompt with BOS already (a ``bos_token`` the template emits
later, as Llama-2 templates do in every user turn, is kept).

Contents are the driver's: many templates trim message contents (Gemma 3: ``| trim``), but a format only
supplies the text between contents, so ``"{:user} Say hi"`` puts `` Say hi`` (leading space included) after
the switch unless the driver strips it.

``jinja2`` is imported only by :func:`template_format` (it comes with llama-cpp-python); templates come from
model files, so they run in jinja2's immutable sandbox only, never unsandboxed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from lmqc.errors import ModelError

__all__ = ["ROLES", "ChatFormat", "ChatTemplateError", "chat_format", "plain_format", "template_format"]

ROLES = ("system", "user", "assistant")  # the role tags of LMQL; template formats know these three

# Message contents while deriving a format: plain letters and digits only, so that templates that strip or
# trim contents (Gemma: ``| trim``, Llama-2: ``.strip()``) leave them intact, and unlike anything a template
# writes itself. The closing "X" keeps marker 1 from being a prefix of marker 10.
_MARK = "LMQCmark{}X"


class ChatTemplateError(ModelError):
    """A chat template cannot be used: it does not parse, it breaks the sandbox, or it renders no usable turns."""


class _Refused(Exception):
    """The template refused one probe conversation (``raise_exception``, an error, or it drops a message)."""


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """How role switches render in the model context.

    Attributes
    ----------
    name : str
        ``"template"`` (derived from a chat template) or ``"plain"`` (``"\\nrole: "`` turns).
    reason : str
        Why this format is what it is, when it is not simply the model's template: why ``chat_format`` fell
        back to plain (no template, jinja2 missing, the template does not render), or which documented
        fallback a template format uses (e.g. the template cannot render a system message). Empty otherwise.
    switches : tuple of (previous, role, text)
        Template formats: the text of every switch between ``None``/``ROLES`` and ``ROLES`` (unused by plain).
    closes : tuple of (role, text)
        Template formats: the text that closes a turn of each role.
    """

    name: str
    reason: str = ""
    switches: tuple[tuple[str | None, str, str], ...] = field(default=(), repr=False)
    closes: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def switch(self, previous: str | None, role: str) -> str:
        """Text to insert where the prompt moves from role ``previous`` into role ``role``.

        Parameters
        ----------
        previous : str or None
            The role of the turn open so far; ``None`` at the start of the prompt (nothing open yet).
        role : str
            The role the prompt moves into. A switch into the same role (``previous == role``) starts a new
            turn of that role, as every role tag does.

        Returns
        -------
        str
            Closes the turn of ``previous`` if one is open, then opens a turn of ``role``. At the start of the
            prompt a leading ``bos_token`` is left out (the driver adds BOS itself).

        Raises
        ------
        ValueError
            A template format was asked for a role outside ``ROLES``.
        """
        if self.name == "plain":
            return f"{role}: " if previous is None else f"\n{role}: "
        for p, r, text in self.switches:
            if p == previous and r == role:
                return text
        raise ValueError(f"unknown chat role switch {previous!r} -> {role!r} (roles: {', '.join(ROLES)})")

    def close(self, role: str | None) -> str:
        """Text that closes an open turn of ``role`` (``""`` for ``None`` and for plain formats).

        Raises
        ------
        ValueError
            A template format was asked for a role outside ``ROLES``.
        """
        if self.name == "plain" or role is None:
            return ""
        for r, text in self.closes:
            if r == role:
                return text
        raise ValueError(f"unknown chat role {role!r} (roles: {', '.join(ROLES)})")

    def render(self, messages: Sequence[tuple[str, str]]) -> str:
        """The model-context text of a whole conversation of ``(role, content)`` pairs, last turn closed.

        This is ``switch`` + content for each message, then ``close`` of the last role: the sequence of calls
        the driver makes, in one place (for tests and for showing a format).
        """
        out: list[str] = []
        previous: str | None = None
        for role, content in messages:
            out += [self.switch(previous, role), content]
            previous = role
        out.append(self.close(previous))
        return "".join(out)


def plain_format(reason: str = "") -> ChatFormat:
    """The format for models without a chat template: ``"role: "`` turns, each after a newline but the first.

    ``switch(None, r) == f"{r}: "``, ``switch(p, r) == f"\\n{r}: "``, ``close(r) == ""``, for any role name.
    ``reason`` says why plain is used (see :attr:`ChatFormat.reason`).
    """
    return ChatFormat("plain", reason)


# -- template formats ------------------------------------------------------------------------------------------


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if prefix and text.startswith(prefix) else text


def _compile(template: str) -> tuple[Callable[..., str], type[Exception]]:
    """The template compiled in jinja2's immutable sandbox, set up as Hugging Face ``apply_chat_template`` does.

    Returns the render function and jinja2's ``SecurityError`` (so that callers need not import jinja2).
    """
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
    except ImportError as e:
        raise ChatTemplateError("jinja2 is not installed (it comes with llama-cpp-python)") from e

    class _Sandbox(ImmutableSandboxedEnvironment):
        # The stock sandbox answers an unsafe attribute (``''.__class__``) with an undefined value that prints
        # as "" and fails only when used further: a template probing Python internals is refused outright.
        def unsafe_undefined(self, obj: Any, attribute: Any) -> Any:
            raise SecurityError(
                f"access to attribute {attribute!r} of a {type(obj).__name__} object is unsafe"
            )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # HF's version: keeps non-ASCII text and takes json.dumps' options (jinja2's own escapes HTML)
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    # trim_blocks/lstrip_blocks and loopcontrols as HF renders templates; templates are written for that.
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        compiled = env.from_string(template)
    except jinja2.exceptions.TemplateError as e:  # syntax errors, unknown filters/tests at compile time
        raise ChatTemplateError(f"the chat template does not parse: {e}") from e
    return compiled.render, SecurityError


class _Prober:
    """Renders probe conversations with marker contents and cuts them at the markers."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        self._render, self._security = _compile(template)
        self.bos = bos_token
        self.eos = eos_token

    def render(self, messages: list[dict[str, str]]) -> str:
        try:
            return self._render(
                messages=messages,
                add_generation_prompt=False,
                bos_token=self.bos,
                eos_token=self.eos,
                tools=None,
                documents=None,
            )
        except self._security as e:
            raise ChatTemplateError(f"the chat template breaks the jinja2 sandbox: {e}") from e
        except Exception as e:  # noqa: BLE001 - template code may fail in any way; that means "refused"
            raise _Refused(f"{type(e).__name__}: {e}") from e

    def cut(self, roles: Sequence[str], contents: Sequence[str | None] = ()) -> list[str]:
        """Render ``roles`` (marker contents; ``contents[i]`` replaces marker i when not None) and cut it.

        Returns the n+1 pieces around the n markers: before the first, between each two, after the last.
        """
        msgs = []
        for i, r in enumerate(roles):
            c = contents[i] if i < len(contents) else None
            msgs.append({"role": r, "content": _MARK.format(i) if c is None else c})
        text = self.render(msgs)
        pieces: list[str] = []
        pos = 0
        for i, m in enumerate(msgs):
            if m["content"] != _MARK.format(i):
                continue
            at = text.find(m["content"], pos)
            if at < 0 or text.count(m["content"]) != 1:
                raise _Refused(f"the {m['role']!r} message of {list(roles)} is not rendered once, in order")
            pieces.append(text[pos:at])
            pos = at + len(m["content"])
        pieces.append(text[pos:])
        return pieces


def template_format(template: str, *, bos_token: str = "", eos_token: str = "") -> ChatFormat:
    """The format a Jinja2 chat template renders (Hugging Face / GGUF style); derived once per arguments.

    Derivation (``S`` stands for the marker contents):

    * ``[user S, assistant S, user S, assistant S]`` gives ``switch(None, "user")``, ``switch("user",
      "assistant")``, ``switch("assistant", "user")`` and ``close("assistant")``; ``[user S, assistant S, user
      S]`` gives ``close("user")``. A template that cannot render these is unusable (``ChatTemplateError``).
    * ``[system S, user S, assistant S, user S, assistant S]`` gives ``switch(None, "system")`` and
      ``switch("system", "user")``. If the latter ends with the text that opens a user turn, the system message
      is a turn of its own (ChatML, Llama-3) and the rest of it is ``close("system")``. Otherwise the template
      merges the system message into the first user turn (Gemma 3: ``<start_of_turn>user\\n{system}\\n\\n
      {user}``; Llama-2: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}``): a system turn then opens as at
      the start of the prompt and closes as the template closes ``[system S, user ""]`` (a system message not
      followed by a user message is rendered as if an empty user message followed it).
    * If the template cannot render a leading system message at all (it raises or drops it), system text goes
      at the start of a user turn, ending in a blank line (``"\\n\\n"``) before the user text; ``reason`` says so.
    * Every other switch (``None -> assistant``, ``user -> user``, ``assistant -> system``, ...) is ``close(
      previous) + open(role)``, where ``open(role)`` is a derived switch into ``role`` with the close of the
      previous role taken off its front (kept whole if it does not start with it) and ``switch(None, role)``
      adds the text the template writes before the first turn (e.g. a default system prompt). Such sequences
      are not checked against the template (Gemma's template refuses them, for example).

    The result is checked: for ``[user, assistant, user, assistant]``, ``[user, assistant, user]`` and
    ``[user]``, and for the same conversations after a system message when the template renders one, the
    format's :meth:`ChatFormat.render` equals the template's own rendering (with ``add_generation_prompt``
    false and a leading ``bos_token`` removed).

    Parameters
    ----------
    template : str
        The Jinja2 source, run in jinja2's ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and
        ``lstrip_blocks``, ``raise_exception``, ``strftime_now`` and HF's ``tojson``.
    bos_token, eos_token : str
        The texts the template gets as ``bos_token`` / ``eos_token`` (e.g. ``"<bos>"``, ``"<eos>"``).

    Raises
    ------
    ChatTemplateError
        jinja2 is missing; the template does not parse; it touches unsafe attributes (``''.__class__``, which
        the sandbox refuses); it cannot render a user/assistant conversation; or its renderings cannot be
        split into per-role switches that reproduce it.
    """
    return _derive(template, bos_token, eos_token)


@lru_cache(maxsize=16)  # about a dozen renders per template; formats are immutable, so they are shared
def _derive(template: str, bos_token: str, eos_token: str) -> ChatFormat:
    probe = _Prober(template, bos_token, eos_token)
    try:
        none_user, user_asst, asst_user, _, close_asst = probe.cut(["user", "assistant", "user", "assistant"])
        close_user = probe.cut(["user", "assistant", "user"])[-1]
    except _Refused as e:
        raise ChatTemplateError(f"the chat template cannot render a user/assistant conversation ({e})") from e
    open_user = _strip_prefix(asst_user, close_asst)
    open_asst = _strip_prefix(user_asst, close_user)
    # what the template writes before the first turn when it is a user turn (BOS, a default system prompt)
    preamble = none_user[: -len(open_user)] if open_user and none_user.endswith(open_user) else ""

    reason = ""
    system_first = True
    try:
        none_sys, sys_user = probe.cut(["system", "user", "assistant", "user", "assistant"])[:2]
    except _Refused as e:
        system_first = False
        reason = (
            f"the chat template cannot render a system message ({e}): system text starts a user turn and is "
            "separated from the user text by a blank line"
        )
        none_sys, sys_user, open_sys, close_sys = none_user, "\n\n", open_user, close_user
    if system_first:
        if open_user and sys_user.endswith(open_user):  # a system turn of its own
            close_sys = sys_user[: -len(open_user)]
            open_sys = _strip_prefix(_strip_prefix(none_sys, bos_token), preamble)
        else:  # merged into the first user turn
            open_sys = _strip_prefix(none_sys, preamble)
            try:
                close_sys = probe.cut(["system", "user"], [None, ""])[-1]
            except _Refused:
                close_sys = close_user

    opens = {"system": open_sys, "user": open_user, "assistant": open_asst}
    closes = {"system": close_sys, "user": close_user, "assistant": close_asst}
    derived: dict[tuple[str | None, str], str] = {
        (None, "user"): none_user,
        (None, "system"): none_sys,
        ("system", "user"): sys_user,
        ("user", "assistant"): user_asst,
        ("assistant", "user"): asst_user,
    }
    switches: list[tuple[str | None, str, str]] = []
    for prev in (None, *ROLES):
        for role in ROLES:
            text = derived.get((prev, role))
            if text is None:
                text = preamble + opens[role] if prev is None else closes[prev] + opens[role]
            if prev is None:
                text = _strip_prefix(text, bos_token)
            switches.append((prev, role, text))
    fmt = ChatFormat("template", reason, tuple(switches), tuple((r, closes[r]) for r in ROLES))
    _check(fmt, probe, system_first)
    return fmt


def _check(fmt: ChatFormat, probe: _Prober, system_first: bool) -> None:
    """Raise ChatTemplateError unless ``fmt`` reproduces the template on the usual conversations."""
    shapes = [["user", "assistant", "user", "assistant"], ["user", "assistant", "user"], ["user"]]
    if system_first:
        shapes += [["system", *s] for s in shapes]
    for roles in shapes:
        msgs = [{"role": r, "content": _MARK.format(i)} for i, r in enumerate(roles)]
        try:
            want = _strip_prefix(probe.render(msgs), probe.bos)
        except _Refused as e:
            raise ChatTemplateError(f"the chat template cannot render {roles} ({e})") from e
        got = fmt.render([(m["role"], m["content"]) for m in msgs])
        if got != want:
            raise ChatTemplateError(
                f"the chat template renders turns irregularly: {roles} renders as {want!r}, but its role "
                f"switches put together give {got!r}"
            )


def chat_format(backend: Any) -> ChatFormat:
    """The chat format of a backend's model: its chat template when it has a usable one, else plain.

    The template comes from ``backend.chat_template()`` (``LlamaBackend``: GGUF metadata
    ``tokenizer.chat_template``), ``bos_token``/``eos_token`` from ``backend.token_text(bos_id / eos_id)``.
    Backends without ``chat_template`` (``TinyBackend``, remote models) get the plain format. When the
    template is missing or unusable (see :func:`template_format`, ``ChatTemplateError``), the plain format's
    ``reason`` says why; this function itself does not raise for a bad template.
    """
    get_template = getattr(backend, "chat_template", None)
    template = get_template() if callable(get_template) else None
    if not template:
        return plain_format("the model has no chat template (GGUF metadata tokenizer.chat_template)")
    token_text = getattr(backend, "token_text", None)

    def text_of(token: Any) -> str:
        return token_text(int(token)) if callable(token_text) and token is not None and token >= 0 else ""

    try:
        return template_format(
            template,
            bos_token=text_of(getattr(backend, "bos_id", None)),
            eos_token=text_of(getattr(backend, "eos_id", None)),
        )
    except ChatTemplateError as e:
        return plain_format(f"the model's chat template is not used: {e}")
