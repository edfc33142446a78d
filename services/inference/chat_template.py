"""A model's chat template (Jinja2, from its tokenizer_config.json) rendered as Hugging Face's apply_chat_template does.

The template runs in Jinja2's ImmutableSandboxedEnvironment with ``trim_blocks`` and ``lstrip_blocks``, the
``loopcontrols`` extension, a ``{% generation %}`` block that renders its body, and the names Hugging Face
gives it: ``raise_exception(message)``, ``strftime_now(format)``, a ``tojson`` filter that does not escape
HTML (``ensure_ascii``, ``indent``, ``separators``, ``sort_keys``), ``dict`` and a ``namespace`` that refuses
underscore names. It sees ``messages`` (dicts of genmesh.messages.template_messages), ``tools`` (None, or
the request's tools as transformers passes JSON-schema tools: ``{"type": "function", "function": {"name",
"description", "parameters"}}`` dicts), ``documents`` (None), ``add_generation_prompt`` and the model's special
tokens (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``, ... as Hugging Face passes its
``special_tokens_map``; each left undefined when the model has none). A template error, including its own
``raise_exception``, is INVALID_ARGUMENT naming ``messages``.

A model without a template gets DEFAULT_CHAT_TEMPLATE: the plain format genmesh has always prompted with
(system text, then ``Question: …`` and ``Answer: …`` turns, ending with ``Answer:``), after the BOS token. With
tools it first lists them and asks for Hermes calls (``<tool_call>\n{"name": …, "arguments": …}\n</tool_call>``,
what the default parser reads); an assistant turn with tool calls renders them as those blocks, right after
``Answer:`` as the model wrote them, so that the next step's prompt extends the last one's (the prefix cache).
The rendered text already holds the special tokens, so it is encoded without adding any (as Hugging Face's
``apply_chat_template(tokenize=True)`` does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from genmesh.errors import InvalidArgument

DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token if bos_token is defined else '' }}\n"
    "{%- if tools %}\n"
    "    {{- 'Tools:\\n<tools>\\n' }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- (tool['function'] if tool['function'] is defined else tool) | tojson + '\\n' }}\n"
    "    {%- endfor %}\n"
    "    {{- '</tools>\\nTo call tools, answer with one block per call:\\n' }}\n"
    '    {{- \'<tool_call>\\n{"name": <name>, "arguments": <arguments object>}\\n</tool_call>\\n\\n\' }}\n'
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if message['role'] == 'system' %}\n"
    "        {{- message['content'] + '\\n\\n' }}\n"
    "    {%- elif message['role'] == 'user' %}\n"
    "        {{- 'Question: ' + message['content'] + '\\n' }}\n"
    "    {%- elif message['role'] == 'assistant' and message['tool_calls'] %}\n"
    "        {{- 'Answer:' + (' ' + message['content'] if message['content'] else '') }}\n"
    "        {%- for call in message['tool_calls'] %}\n"
    "            {{- ('' if loop.first else '\\n') + '<tool_call>\\n{\"name\": \"' + call['function']['name'] }}\n"
    "            {{- '\", \"arguments\": ' + call['function']['arguments'] | tojson + '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '\\n\\n' }}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- 'Answer: ' + message['content'] + '\\n\\n' }}\n"
    "    {%- elif message['role'] == 'tool' %}\n"
    "        {{- 'Tool result: ' + message['content'] + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- 'Answer:' }}\n"
    "{%- endif %}\n"
)
"""The template of a model without one: system text, ``Question: …``/``Answer: …`` turns, then ``Answer:``."""

_QUOTED_ERROR_CHARS = 300


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Dict:
    """``dict(...)`` and ``dict.fromkeys(...)`` in a template, and nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names (a way to CPython internals) as Hugging Face's does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's own trick: a field may be named "self"
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``, which marks assistant text for training: renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    """One model's chat template, compiled once; ``render`` turns a conversation into prompt text."""

    def __init__(
        self,
        source: str | None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """``source``: the template (None: DEFAULT_CHAT_TEMPLATE). Raises ValueError, once, for a template that does
        not compile (the inference service then fails to start, naming the file)."""
        self.source = DEFAULT_CHAT_TEMPLATE if source is None else source
        self.is_default = source is None
        given = {"bos_token": bos_token, "eos_token": eos_token}
        self._special = {**(special_tokens or {}), **{k: v for k, v in given.items() if v is not None}}
        try:
            self._template = _environment().from_string(self.source)
        except jinja2.exceptions.TemplateSyntaxError as error:
            raise ValueError(f"the chat template does not compile: line {error.lineno}: {error.message}") from error
        self.folds_system = not self._renders(_SYSTEM_TRIAL) and self._renders(_SYSTEM_TRIAL[1:])
        """The template refuses a system turn (Gemma's; old Mistral's strict alternation): system text is then
        put at the head of the first user message (fold_system)."""

    def _renders(self, messages: list[dict[str, Any]]) -> bool:
        try:
            self._render(messages, True, None)
        except Exception:  # a template is a program: any failure is a refusal
            return False
        return True

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tools: Any) -> str:
        return self._template.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **self._special
        )

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text of ``messages``; raises InvalidArgument naming ``messages`` when the template refuses
        the conversation or fails on it."""
        try:
            return self._render(
                fold_system(messages) if self.folds_system else list(messages), add_generation_prompt, tools
            )
        except Exception as error:  # a template is a program: any failure is its verdict on these messages
            detail = str(error) or type(error).__name__
            if len(detail) > _QUOTED_ERROR_CHARS:
                detail = detail[:_QUOTED_ERROR_CHARS] + "…"
            raise InvalidArgument.field(
                "messages", f"the model's chat template cannot render them: {detail}"
            ) from error


_SYSTEM_TRIAL = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def fold_system(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` without system turns: their text, each followed by a blank line, heads the first user message
    (a user message of its own when there is none)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    prefix = "".join(f"{text}\n\n" for text in system)
    first_user = next((m for m in rest if m["role"] == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": prefix.rstrip("\n")}, *rest]
    first_user["content"] = prefix + first_user["content"]
    return rest


SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
"""The special tokens a tokenizer names (transformers' SPECIAL_TOKENS_ATTRIBUTES); a template sees each it has."""


def special_token(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
