"""Chat training data in OpenAI's format: one schema, one normalisation, one rendering.

The upload validator (`datasets.validation`), the prepare-data analysis, the trainer
(`engine.data`) and serving (`engine.generation.chat_prompt`) all go through this module, so a
file that validates is a file that trains, and a fine-tuned model is prompted at inference
exactly as it was trained.

**The schema** (reference §5.4, OpenAI's `FineTuneChatRequestInput`): one object per line with
`messages` and optionally `tools` (or the deprecated `functions`) and `parallel_tool_calls`.
Messages have a `role` (system, user, assistant, tool, or the deprecated function) and a
`content` that is a string or a list of text parts. Assistant messages may carry `tool_calls`
(with `content: null`), the deprecated `function_call`, and a `weight` of 0 or 1; tool messages
answer an earlier call by its `tool_call_id`. Anything else is an error naming the field, as a
path (`messages[2].tool_calls[0].function.arguments`). `validate_example` checks a whole line;
`validate_messages` a list of messages on its own (for formats that embed them).

**Normalisation** (`normalise_example`) turns a valid line into a `Conversation`: string
contents, tool-call arguments parsed into objects (what chat templates expect), `functions`
and `function_call` converted to their `tools`/`tool_calls` equivalents, `function` messages
to `tool` messages, and a per-message training flag from `weight`.

**Rendering** (`render_chat`, `prompt_text`) goes through the model's own chat template. A
template with native tool support (one that reads both `tools` and `tool_calls`) gets the
tools and calls as they are. Any other template gets the documented fallback below, applied
to the messages before the template sees them, identically in training and serving:

* tool definitions go into the system message (one is added first if there is none) as
  `FALLBACK_TOOLS_INTRO` followed by one JSON object per tool inside `<tools></tools>`;
* an assistant tool call becomes text after the message's content:
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call;
* consecutive tool results become one user message, each result inside
  `<tool_response>\\n...\\n</tool_response>`.

These are the Hermes/Qwen2.5 conventions, so serving can read a call back from the generated
text (`parse_tool_calls`) whichever way the prompt was rendered.

Nothing here imports torch, transformers or jinja2 at import time: the validator's command line
starts in a fraction of a second and imports this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

ROLES = ("system", "user", "assistant", "tool", "function")
# What a request to /v1/chat/completions may also use (OpenAI's newer name for system).
REQUEST_ROLES = (*ROLES, "developer")
EXAMPLE_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "system": ("role", "content", "name"),
    "developer": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    "assistant": ("role", "content", "name", "tool_calls", "function_call", "weight"),
    # `name` is not in OpenAI's tool message, but Hugging Face templates read it; harmless.
    "tool": ("role", "content", "tool_call_id", "name"),
    "function": ("role", "content", "name"),
}
TEXT_PART_KEYS = ("type", "text")
TOOL_KEYS = ("type", "function")
FUNCTION_KEYS = ("name", "description", "parameters", "strict")
TOOL_CALL_KEYS = ("id", "type", "function")
CALL_FUNCTION_KEYS = ("name", "arguments")
# The allowed-key tuples above as sets, for a subset test per object.
_KEY_SETS = {
    keys: frozenset(keys)
    for keys in (
        EXAMPLE_KEYS,
        *MESSAGE_KEYS.values(),
        TEXT_PART_KEYS,
        TOOL_KEYS,
        FUNCTION_KEYS,
        TOOL_CALL_KEYS,
        CALL_FUNCTION_KEYS,
    )
}
# OpenAI's rule for function names.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NON_TEXT_PARTS = {
    "image_url": "an image",
    "input_audio": "audio",
    "file": "a file",
    "refusal": "a refusal",
}

FALLBACK_TOOLS_INTRO = (
    "# Tools\n\nYou can call these functions. To call one, reply with\n"
    '<tool_call>\n{"name": <function name>, "arguments": <JSON object>}\n</tool_call>\n'
)
FALLBACK_ONE_CALL = "\n\nCall at most one function per reply."


# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatError:
    """One thing wrong with a line. `message` reads after "line N: "; `param` is the field."""

    message: str
    param: str
    line: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class ChatFormatError(ValueError):
    """Raised by the normalisers for data that does not validate; carries the first error."""

    def __init__(self, error: FormatError) -> None:
        super().__init__(str(error))
        self.error = error


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Errors:
    """Collects errors for one line; each helper returns False when it added one."""

    def __init__(self, line: int | None) -> None:
        self.line = line
        self.items: list[FormatError] = []

    def add(self, param: str, message: str) -> bool:
        self.items.append(FormatError(message, param, self.line))
        return False

    def type(self, value: Any, param: str, expected: str) -> bool:
        article = "an" if expected[0] in "aeiou" else "a"
        return self.add(param, f"`{param}` must be {article} {expected}, got {json_type(value)}")

    def unknown_keys(self, value: Mapping[str, Any], allowed: tuple[str, ...], param: str) -> bool:
        if value.keys() <= _KEY_SETS[allowed]:
            return True
        extra = [key for key in value if key not in allowed]
        where = f"{param}." if param else ""
        allowed_list = ", ".join(f"`{k}`" for k in allowed)
        return self.add(
            f"{where}{extra[0]}",
            f"`{where}{extra[0]}` is not a field of {'`' + param + '`' if param else 'the example'}"
            f" (allowed: {allowed_list})",
        )


# --- validation ----------------------------------------------------------------------------------


def validate_example(row: Any, *, line: int | None = None) -> list[FormatError]:
    """Everything wrong with one chat training line (at most one error per message)."""
    errors = _Errors(line)
    if not isinstance(row, dict):
        errors.add("", f"must be a JSON object, got {json_type(row)}")
        return errors.items
    if "messages" not in row:
        errors.add("messages", "is missing the `messages` key")
        return errors.items
    if not errors.unknown_keys(row, EXAMPLE_KEYS, ""):
        return errors.items
    names = _validate_definitions(row, errors)
    parallel = row.get("parallel_tool_calls", True)
    if "parallel_tool_calls" in row and type(parallel) is not bool:
        errors.type(parallel, "parallel_tool_calls", "boolean")
        parallel = True
    if errors.items:
        return errors.items
    errors.items += validate_messages(
        row["messages"], line=line, tool_names=names, parallel_tool_calls=parallel
    )
    return errors.items


def _validate_definitions(row: Mapping[str, Any], errors: _Errors) -> frozenset[str] | None:
    """Check `tools` / `functions`; return the function names they define (None: no list)."""
    if "tools" in row and "functions" in row:
        errors.add("functions", "has both `tools` and the deprecated `functions`; use `tools`")
        return None
    if "tools" in row:
        return _validate_tools(row["tools"], errors)
    if "functions" in row:
        return _validate_functions(row["functions"], "functions", errors)
    return None


def _validate_tools(tools: Any, errors: _Errors) -> frozenset[str] | None:
    if not isinstance(tools, list):
        errors.type(tools, "tools", "array")
        return None
    names: list[str] = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            errors.type(tool, param, "object")
            continue
        if not errors.unknown_keys(tool, TOOL_KEYS, param):
            continue
        if tool.get("type") != "function":
            got = json.dumps(tool.get("type")) if "type" in tool else "nothing"
            errors.add(f"{param}.type", f'`{param}.type` must be "function", got {got}')
            continue
        if "function" not in tool:
            errors.add(f"{param}.function", f"`{param}` has no `function`")
            continue
        name = _validate_function(tool["function"], f"{param}.function", errors)
        if name is not None:
            names.append(name)
    return _unique_names(names, "tools", errors)


def _validate_functions(functions: Any, param: str, errors: _Errors) -> frozenset[str] | None:
    if not isinstance(functions, list):
        errors.type(functions, param, "array")
        return None
    names = []
    for i, function in enumerate(functions):
        name = _validate_function(function, f"{param}[{i}]", errors)
        if name is not None:
            names.append(name)
    return _unique_names(names, param, errors)


def _unique_names(names: list[str], param: str, errors: _Errors) -> frozenset[str] | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            errors.add(param, f"`{param}` defines the function `{name}` twice")
            return None
        seen.add(name)
    return frozenset(seen)


def _validate_function(function: Any, param: str, errors: _Errors) -> str | None:
    if not isinstance(function, dict):
        errors.type(function, param, "object")
        return None
    if not errors.unknown_keys(function, FUNCTION_KEYS, param):
        return None
    name = function.get("name")
    if not _check_function_name(name, f"{param}.name", errors):
        return None
    description = function.get("description")
    if "description" in function and not isinstance(description, str):
        errors.type(description, f"{param}.description", "string")
        return None
    parameters = function.get("parameters")
    if "parameters" in function and not isinstance(parameters, dict):
        errors.type(parameters, f"{param}.parameters", "object (a JSON Schema)")
        return None
    strict = function.get("strict")
    if "strict" in function and strict is not None and type(strict) is not bool:
        errors.type(strict, f"{param}.strict", "boolean")
        return None
    return str(name)


def _check_function_name(name: Any, param: str, errors: _Errors) -> bool:
    if name is None:
        return errors.add(param, f"`{param}` is missing")
    if not isinstance(name, str):
        return errors.type(name, param, "string")
    if not FUNCTION_NAME.fullmatch(name):
        return errors.add(
            param,
            f"`{param}` {json.dumps(name)} must be 1 to 64 letters, digits, `_` or `-`",
        )
    return True


def validate_messages(
    messages: Any,
    *,
    line: int | None = None,
    path: str = "messages",
    tool_names: frozenset[str] | None = None,
    parallel_tool_calls: bool = True,
    require_assistant: bool = True,
    roles: Sequence[str] = ROLES,
    strict_keys: bool = True,
) -> list[FormatError]:
    """Everything wrong with a list of chat messages, at most one error per message.

    `tool_names` are the functions `tools` defines (None: no definitions given, any name may be
    called). With `require_assistant`, the list must hold an assistant message with weight 1 (a
    training example); without it, as in a request or a preference pair's input, it need not.
    `roles` may widen the accepted roles (REQUEST_ROLES for requests); without `strict_keys`,
    fields this module doesn't use are ignored rather than refused (requests: clients send back
    the assistant messages they received, with `refusal`, `annotations` and the like).
    """
    errors = _Errors(line)
    if not isinstance(messages, list):
        errors.type(messages, path, "array")
        return errors.items
    if not messages:
        errors.add(path, f"`{path}` is empty")
        return errors.items
    call_ids: set[str] = set()
    has_assistant = trained = False
    for i, message in enumerate(messages):
        param = f"{path}[{i}]"
        if not isinstance(message, dict):
            errors.type(message, param, "object")
            continue
        role = message.get("role")
        if "role" not in message:
            errors.add(f"{param}.role", f"`{param}` has no `role`")
            continue
        if not isinstance(role, str) or role not in roles:
            shown = json.dumps(role) if isinstance(role, str) else json_type(role)
            errors.add(
                f"{param}.role",
                f"`{param}` has unknown role {shown}; use one of {', '.join(roles)}",
            )
            continue
        if role != "assistant" and "weight" in message:
            errors.add(
                f"{param}.weight",
                f"`{param}` has a `weight`, which only assistant messages may have",
            )
            continue
        if strict_keys and not errors.unknown_keys(message, MESSAGE_KEYS[role], param):
            continue
        if role == "assistant":
            has_assistant = True
            ok, weight = _check_assistant(
                message, param, errors, tool_names, parallel_tool_calls, call_ids
            )
            trained = trained or (ok and weight == 1)
        elif role == "tool":
            _check_tool_message(message, param, errors, call_ids)
        elif role == "function":
            _check_function_message(message, param, errors)
        elif _check_name(message, param, errors):
            _check_content(message, param, errors)
    if require_assistant and not errors.items:
        if not has_assistant:
            errors.add(path, "has no assistant message to learn from")
        elif not trained:
            errors.add(path, "every assistant message has weight 0: nothing to learn")
    return errors.items


def _check_name(message: Mapping[str, Any], param: str, errors: _Errors) -> bool:
    name = message.get("name")
    if "name" in message and not isinstance(name, str):
        return errors.type(name, f"{param}.name", "string")
    return True


def _check_content(
    message: Mapping[str, Any], param: str, errors: _Errors, *, nullable: bool = False
) -> bool:
    if "content" not in message:
        return errors.add(f"{param}.content", f"`{param}` has no `content`")
    content = message["content"]
    if isinstance(content, str) or (content is None and nullable):
        return True
    if content is None:
        return errors.add(f"{param}.content", f"`{param}.content` is null")
    if not isinstance(content, list):
        return errors.type(content, f"{param}.content", "string or an array of text parts")
    if not content:
        return errors.add(f"{param}.content", f"`{param}.content` is an empty array")
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if not isinstance(part, dict):
            return errors.type(part, where, "object (a content part)")
        kind = part.get("type")
        if kind != "text":
            if isinstance(kind, str) and kind in NON_TEXT_PARTS:
                return errors.add(
                    f"{where}.type",
                    f"`{where}` is {NON_TEXT_PARTS[kind]} part; these models read text only, so "
                    "content parts must be text parts",
                )
            shown = json.dumps(kind) if isinstance(kind, str) else json_type(kind)
            return errors.add(
                f"{where}.type",
                f'`{where}.type` must be "text", got {shown if kind else "nothing"}',
            )
        if not errors.unknown_keys(part, TEXT_PART_KEYS, where):
            return False
        if not isinstance(part.get("text"), str):
            return errors.type(part.get("text"), f"{where}.text", "string")
    return True


def _check_assistant(
    message: Mapping[str, Any],
    param: str,
    errors: _Errors,
    tool_names: frozenset[str] | None,
    parallel: bool,
    call_ids: set[str],
) -> tuple[bool, int]:
    """(valid, weight)."""
    weight = message.get("weight", 1)
    if type(weight) is not int or weight not in (0, 1):
        errors.add(f"{param}.weight", f"`{param}.weight` must be 0 or 1, got {json.dumps(weight)}")
        return False, 0
    if not _check_name(message, param, errors):
        return False, weight
    calls = message.get("tool_calls")
    function_call = message.get("function_call")
    if "tool_calls" in message and "function_call" in message:
        errors.add(
            f"{param}.function_call",
            f"`{param}` has both `tool_calls` and the deprecated `function_call`; use `tool_calls`",
        )
        return False, weight
    makes_call = "tool_calls" in message or "function_call" in message
    if not _check_content(message, param, errors, nullable=makes_call):
        return False, weight
    if "tool_calls" in message:
        return _check_tool_calls(calls, param, errors, tool_names, parallel, call_ids), weight
    if "function_call" in message:
        where = f"{param}.function_call"
        return _check_call_function(function_call, where, errors, tool_names), weight
    return True, weight


def _check_tool_calls(
    calls: Any,
    param: str,
    errors: _Errors,
    tool_names: frozenset[str] | None,
    parallel: bool,
    call_ids: set[str],
) -> bool:
    where = f"{param}.tool_calls"
    if not isinstance(calls, list):
        return errors.type(calls, where, "array")
    if not calls:
        return errors.add(where, f"`{where}` is empty; leave it out when there is no call")
    if len(calls) > 1 and not parallel:
        return errors.add(
            where, f"`{where}` has {len(calls)} calls but `parallel_tool_calls` is false"
        )
    for k, call in enumerate(calls):
        at = f"{where}[{k}]"
        if not isinstance(call, dict):
            return errors.type(call, at, "object")
        if not errors.unknown_keys(call, TOOL_CALL_KEYS, at):
            return False
        call_id = call.get("id")
        if "id" not in call:
            return errors.add(f"{at}.id", f"`{at}` has no `id`")
        if not isinstance(call_id, str) or not call_id:
            return errors.add(f"{at}.id", f"`{at}.id` must be a non-empty string")
        if call_id in call_ids:
            return errors.add(f"{at}.id", f"`{at}.id` {json.dumps(call_id)} is used twice")
        if call.get("type") != "function":
            got = json.dumps(call.get("type")) if "type" in call else "nothing"
            return errors.add(f"{at}.type", f'`{at}.type` must be "function", got {got}')
        if "function" not in call:
            return errors.add(f"{at}.function", f"`{at}` has no `function`")
        if not _check_call_function(call["function"], f"{at}.function", errors, tool_names):
            return False
        call_ids.add(call_id)
    return True


def _check_call_function(
    function: Any, param: str, errors: _Errors, tool_names: frozenset[str] | None
) -> bool:
    if not isinstance(function, dict):
        return errors.type(function, param, "object")
    if not errors.unknown_keys(function, CALL_FUNCTION_KEYS, param):
        return False
    name = function.get("name")
    if not _check_function_name(name, f"{param}.name", errors):
        return False
    if tool_names is not None and name not in tool_names:
        return errors.add(
            f"{param}.name",
            f"`{param}.name` calls `{name}`, which the example's `tools` don't define",
        )
    if "arguments" not in function:
        return errors.add(f"{param}.arguments", f"`{param}` has no `arguments`")
    _, message = _parse_arguments(function["arguments"])
    if message:
        return errors.add(f"{param}.arguments", f"`{param}.arguments` {message}")
    return True


def _parse_arguments(arguments: Any) -> tuple[dict[str, Any], str | None]:
    """Arguments as an object, or the reason they aren't a JSON-encoded object."""
    if not isinstance(arguments, str):
        return {}, f"must be a string of JSON (an encoded object), got {json_type(arguments)}"
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return {}, f"is not valid JSON ({reason})"
    if not isinstance(value, dict):
        return {}, f"must encode a JSON object, got {json_type(value)}"
    return value, None


def _check_tool_message(
    message: Mapping[str, Any], param: str, errors: _Errors, call_ids: set[str]
) -> bool:
    if "tool_call_id" not in message:
        return errors.add(f"{param}.tool_call_id", f"`{param}` has no `tool_call_id`")
    call_id = message["tool_call_id"]
    if not isinstance(call_id, str):
        return errors.type(call_id, f"{param}.tool_call_id", "string")
    if call_id not in call_ids:
        return errors.add(
            f"{param}.tool_call_id",
            f"`{param}.tool_call_id` {json.dumps(call_id)} answers no earlier tool call",
        )
    return _check_name(message, param, errors) and _check_content(message, param, errors)


def _check_function_message(message: Mapping[str, Any], param: str, errors: _Errors) -> bool:
    if "name" not in message:
        return errors.add(f"{param}.name", f"`{param}` (a function result) has no `name`")
    return _check_name(message, param, errors) and _check_content(message, param, errors)


# --- normalisation -------------------------------------------------------------------------------


@dataclass
class Conversation:
    """A valid example, normalised: what the template renders.

    `messages` hold `role`, a string `content` and, where present, `name`, `tool_calls` (each
    `{"id"?, "type": "function", "function": {"name", "arguments": {...}}}`) and `tool_call_id`.
    `trained[i]` is None for non-assistant messages, else whether message i carries loss.
    """

    messages: list[dict[str, Any]]
    trained: list[bool | None]
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool = True

    @property
    def uses_tools(self) -> bool:
        """Whether rendering depends on tool support (definitions, calls or results)."""
        return bool(self.tools) or any(
            "tool_calls" in m or m["role"] == "tool" for m in self.messages
        )


def content_text(content: Any) -> str:
    """A message's content as one string: text parts joined, null as ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


_PLAIN_ROLES = frozenset({"system", "user", "assistant"})
_PLAIN_KEYS = frozenset({"role", "content", "name", "weight"})


def _plain_conversation(row: Any) -> Conversation | None:
    """The conversation of the commonest valid line, or None for anything else.

    Text-only messages with string contents, no tools: the validator meets millions of these,
    so they skip the general walk. Whatever this accepts, `validate_example` accepts and
    `_normalise_messages` normalises the same way.
    """
    if type(row) is not dict or len(row) != 1 or type(messages := row.get("messages")) is not list:
        return None
    out: list[dict[str, Any]] = []
    trained: list[bool | None] = []
    learns = False
    for message in messages:
        if (
            type(message) is not dict
            or not message.keys() <= _PLAIN_KEYS
            or type(role := message.get("role")) is not str
            or role not in _PLAIN_ROLES
            or type(content := message.get("content")) is not str
        ):
            return None
        item = {"role": role, "content": content}
        if "name" in message:
            if type(name := message["name"]) is not str:
                return None
            item["name"] = name
        if role == "assistant":
            weight = message.get("weight", 1)
            if type(weight) is not int or weight not in (0, 1):
                return None
            trained.append(weight == 1)
            learns = learns or weight == 1
        elif "weight" in message:
            return None
        else:
            trained.append(None)
        out.append(item)
    return Conversation(out, trained) if learns else None


def normalise_example(row: Any, *, line: int | None = None) -> Conversation:
    """The conversation of a training line; raises ChatFormatError if it does not validate."""
    plain = _plain_conversation(row)
    if plain is not None:
        return plain
    errors = validate_example(row, line=line)
    if errors:
        raise ChatFormatError(errors[0])
    tools = None
    if "tools" in row:
        tools = [dict(tool) for tool in row["tools"]]
    elif "functions" in row:
        tools = [{"type": "function", "function": dict(f)} for f in row["functions"]]
    messages, trained = _normalise_messages(row["messages"])
    return Conversation(messages, trained, tools, bool(row.get("parallel_tool_calls", True)))


def normalise_request(
    messages: Any, tools: Any = None, *, parallel_tool_calls: bool = True
) -> Conversation:
    """The conversation of a /v1/chat/completions request (no assistant message needed).

    `developer` messages are system messages to these models. Raises ChatFormatError naming
    the request's param.
    """
    errors = _Errors(None)
    names = _validate_tools(tools, errors) if tools is not None else None
    if isinstance(messages, list):
        # As the SDKs return them: `"tool_calls": null` and the like mean "absent".
        messages = [
            {k: v for k, v in m.items() if v is not None or k == "content"}
            if isinstance(m, dict)
            else m
            for m in messages
        ]
    if not errors.items:
        errors.items += validate_messages(
            messages,
            tool_names=names,
            parallel_tool_calls=parallel_tool_calls,
            require_assistant=False,
            roles=REQUEST_ROLES,
            strict_keys=False,
        )
    if errors.items:
        raise ChatFormatError(errors.items[0])
    normalised, trained = _normalise_messages(messages)
    return Conversation(
        normalised, trained, [dict(t) for t in tools] if tools else None, parallel_tool_calls
    )


def _normalise_messages(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[bool | None]]:
    out: list[dict[str, Any]] = []
    trained: list[bool | None] = []
    names_by_id: dict[str, str] = {}
    for message in messages:
        role = message["role"]
        item: dict[str, Any] = {
            "role": "system" if role == "developer" else role,
            "content": content_text(message.get("content")),
        }
        if "name" in message:
            item["name"] = message["name"]
        if role == "assistant":
            calls = [_normalise_call(call) for call in message.get("tool_calls") or []]
            if "function_call" in message:
                calls = [
                    _normalise_call({"type": "function", "function": message["function_call"]})
                ]
            if calls:
                item["tool_calls"] = calls
                names_by_id.update({c["id"]: c["function"]["name"] for c in calls if "id" in c})
            trained.append(message.get("weight", 1) == 1)
        else:
            trained.append(None)
        if role == "tool":
            item["tool_call_id"] = message["tool_call_id"]
            item.setdefault("name", names_by_id.get(message["tool_call_id"], ""))
            if not item["name"]:
                del item["name"]
        elif role == "function":
            item["role"] = "tool"  # what templates know; the function's name says which call
        out.append(item)
    return out, trained


def _normalise_call(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call["function"]
    arguments, _ = _parse_arguments(function["arguments"])
    out: dict[str, Any] = {}
    if "id" in call:
        out["id"] = call["id"]
    out["type"] = "function"
    out["function"] = {"name": function["name"], "arguments": arguments}
    return out


# --- rendering ---------------------------------------------------------------------------------


class Renderer(Protocol):
    """A chat template: renders messages (with tools) to text."""

    def template(self, tools: list[dict[str, Any]] | None) -> str:
        """The template's source (for the one used with these tools)."""
        ...

    def __call__(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> str: ...


class TemplateError(ValueError):
    """The chat template can't render a conversation, or not as growing prefixes."""


def supports_tools(template: str) -> bool:
    """Whether a template renders tool definitions and tool calls itself.

    Templates that mention neither ignore them silently (ChatML as SmolLM2 ships it); those get
    the fallback rendering so that the model still sees its tools and calls.
    """
    return "tool_calls" in template and re.search(r"\btools\b", template) is not None


def tool_call_text(call: Mapping[str, Any]) -> str:
    """The fallback's text for one call (also what serving parses back)."""
    function = call["function"]
    body = {"name": function["name"], "arguments": function["arguments"]}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def fallback_tools_text(tools: Sequence[Mapping[str, Any]], *, parallel: bool = True) -> str:
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return f"{FALLBACK_TOOLS_INTRO}<tools>\n{lines}\n</tools>" + (
        "" if parallel else FALLBACK_ONE_CALL
    )


def template_inputs(
    conversation: Conversation, *, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, list[bool | None]]:
    """(messages, tools, trained flags) as the template is given them: as they are for a template
    with tool support, else with the fallback rendering applied (see the module docstring)."""
    if native or not conversation.uses_tools:
        return conversation.messages, conversation.tools, conversation.trained
    messages: list[dict[str, Any]] = []
    trained: list[bool | None] = []
    for message, flag in zip(conversation.messages, conversation.trained, strict=True):
        role = message["role"]
        if role == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if messages and messages[-1].get("_tool_responses"):
                messages[-1]["content"] += "\n" + response
            else:
                messages.append({"role": "user", "content": response, "_tool_responses": True})
                trained.append(None)
            continue
        item = {k: v for k, v in message.items() if k != "tool_calls"}
        if message.get("tool_calls"):
            calls = "\n".join(tool_call_text(call) for call in message["tool_calls"])
            item["content"] = f"{item['content']}\n{calls}" if item["content"] else calls
        messages.append(item)
        trained.append(flag)
    for message in messages:
        message.pop("_tool_responses", None)
    if conversation.tools:
        tools_text = fallback_tools_text(
            conversation.tools, parallel=conversation.parallel_tool_calls
        )
        if messages and messages[0]["role"] == "system":
            first = messages[0]
            text = f"{first['content']}\n\n{tools_text}" if first["content"] else tools_text
            messages[0] = {**first, "content": text}
        else:
            messages.insert(0, {"role": "system", "content": tools_text})
            trained.insert(0, None)
    return messages, None, trained


@dataclass
class RenderedChat:
    """A rendered conversation and, per assistant message, its span [start, end) in `text`:
    what the model writes for that turn (its content, calls and end-of-turn marker)."""

    text: str
    spans: list[tuple[int, int, bool]] = field(default_factory=list)  # (start, end, trained)
    # The last assistant message's content as a plain string (a classification label).
    last_reply: str = ""


def render_chat(renderer: Renderer, conversation: Conversation) -> RenderedChat:
    """Render a training conversation and find each assistant turn in the text.

    A turn starts where the prompt for it ends (the conversation before it, rendered with the
    generation prompt, exactly as serving renders it) and ends where the conversation through
    it ends. Templates that don't render conversations as growing prefixes (ones that inject a
    default system prompt only for a non-empty conversation, say) are handled by finding the
    generation prompt in the turn's text; failing that, TemplateError.
    """
    native = supports_tools(renderer.template(conversation.tools))
    messages, tools, trained = template_inputs(conversation, native=native)
    text = _render(renderer, messages, tools, False)
    spans: list[tuple[int, int, bool]] = []
    floor = 0
    last_reply = ""
    for i, flag in enumerate(trained):
        if flag is None:
            continue
        start, end = _turn_span(renderer, messages, tools, i, text)
        if start < floor:
            raise TemplateError(
                "the chat template does not render this conversation as growing prefixes, so "
                "the assistant turns can't be told apart from the prompt"
            )
        spans.append((start, end, flag))
        floor = end
        last_reply = messages[i]["content"]
    return RenderedChat(text, spans, last_reply)


def _render(
    renderer: Renderer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    generation: bool,
) -> str:
    try:
        return renderer(messages, tools, generation)
    except TemplateError:
        raise
    except Exception as exc:  # jinja2's errors, raise_exception() in the template
        raise TemplateError(f"the chat template cannot render this conversation: {exc}") from exc


def _turn_span(
    renderer: Renderer,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    index: int,
    text: str,
) -> tuple[int, int]:
    through = _render(renderer, messages[: index + 1], tools, False)
    if text.startswith(through):
        before = _render(renderer, messages[:index], tools, True)
        if through.startswith(before):
            return len(before), len(through)
        # The prompt doesn't prefix the turn (a default system prompt that an empty
        # conversation doesn't get, say): the turn starts after the generation prompt.
        context = _render(renderer, messages[:index], tools, False)
        header = before[len(context) :] if before.startswith(context) else ""
        at = through.find(header, len(context)) if header and through.startswith(context) else -1
        if at >= 0:
            return at + len(header), len(through)
    raise TemplateError(
        "the chat template does not render this conversation as growing prefixes, so the "
        "assistant turns can't be told apart from the prompt"
    )


def prompt_text(renderer: Renderer, conversation: Conversation) -> str:
    """The prompt for the next assistant turn, rendered as training rendered it."""
    native = supports_tools(renderer.template(conversation.tools))
    messages, tools, _ = template_inputs(conversation, native=native)
    return _render(renderer, messages, tools, True)


# --- the renderers -------------------------------------------------------------------------------


class TokenizerRenderer:
    """A Hugging Face tokenizer's chat template, through `apply_chat_template`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def template(self, tools: list[dict[str, Any]] | None) -> str:
        get = getattr(self.tokenizer, "get_chat_template", None)
        if get is not None:
            try:
                return str(get(None, tools or None))
            except ValueError:
                return ""
        return str(getattr(self.tokenizer, "chat_template", "") or "")

    def __call__(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> str:
        if not messages:
            # apply_chat_template refuses an empty conversation; the prompt for a conversation
            # that opens with the assistant is the template's own rendering of "nothing yet".
            from transformers.utils.chat_template_utils import render_jinja_template

            # transformers annotates it `-> str`; it returns (rendered, generation_indices).
            rendered, _ = render_jinja_template(  # type: ignore[str-unpack]  # see above
                conversations=[[]],
                # Its `tools` is a list of dict | Callable: list is invariant, ours is only dicts.
                tools=tools,  # type: ignore[arg-type]  # see above
                chat_template=self.template(tools),
                add_generation_prompt=add_generation_prompt,
                **self.tokenizer.special_tokens_map,
            )
            return str(rendered[0])
        return str(
            self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        )


class JinjaRenderer:
    """A chat template rendered without transformers (for the validator's token counts).

    The environment is the one `transformers` builds for chat templates (sandboxed, trimmed
    blocks, loop controls, its `tojson`, `raise_exception`, `strftime_now`), so the text is the
    same as `apply_chat_template`'s (tests check this on the templates we ship and test with).
    """

    def __init__(self, template: str, special_tokens: Mapping[str, str] | None = None) -> None:
        self.source = template
        self.special_tokens = dict(special_tokens or {})
        self._compiled = _compile(template)

    def template(self, tools: list[dict[str, Any]] | None) -> str:
        return self.source

    def __call__(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> str:
        return str(
            self._compiled.render(
                messages=messages,
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        )


def _compile(template: str) -> Any:
    import datetime

    import jinja2
    import jinja2.exceptions
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # `{% generation %}…{% endgeneration %}` marks assistant text for transformers' masks;
        # here it only renders its body.
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(format: str) -> str:
        return datetime.datetime.now().strftime(format)  # noqa: DTZ005 (as transformers does)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


# --- reading calls back from generated text ------------------------------------------------------

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]] | None:
    """Split generated text into (content, calls) if it holds `<tool_call>` blocks.

    Each call is `{"name", "arguments": <JSON string>}`. None when there is no block, or one
    isn't a JSON object with a string `name` (the text is then returned to the user as it is).
    """
    blocks = list(_TOOL_CALL_BLOCK.finditer(text))
    if not blocks:
        return None
    calls = []
    for block in blocks:
        try:
            body = json.loads(block.group(1))
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return None
        arguments = body.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"name": body["name"], "arguments": arguments})
    content = _TOOL_CALL_BLOCK.sub("", text).strip()
    return content, calls


# --- preference pairs (DPO) ----------------------------------------------------------------------

# OpenAI's preference format: the conversation so far, and two candidate replies to it.
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
PREFERENCE_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")
_KEY_SETS.update({keys: frozenset(keys) for keys in (PREFERENCE_KEYS, PREFERENCE_INPUT_KEYS)})


@dataclass
class PreferencePair:
    """A valid preference line, normalised: the same conversation ending in either output.

    In both, only the output's assistant messages are trained (`trained` True); assistant
    messages of the input are context (False), whatever their `weight`.
    """

    preferred: Conversation
    non_preferred: Conversation

    def output_texts(self) -> tuple[str, str]:
        """Each output's assistant text (contents and calls), for comparisons and previews."""

        def text(conversation: Conversation) -> str:
            parts = []
            for message, flag in zip(conversation.messages, conversation.trained, strict=True):
                if flag:
                    calls = [tool_call_text(c) for c in message.get("tool_calls", ())]
                    parts.append("\n".join([message["content"], *calls]).strip())
            return "\n".join(parts)

        return text(self.preferred), text(self.non_preferred)


def is_preference_row(row: Any) -> bool:
    """Whether a line is meant as a preference pair (has any of its keys, not `messages`)."""
    return (
        isinstance(row, dict) and "messages" not in row and any(k in row for k in PREFERENCE_KEYS)
    )


def validate_preference(row: Any, *, line: int | None = None) -> list[FormatError]:
    """Everything wrong with one preference line (OpenAI's DPO format), fields named as paths
    (`input.messages[1].content`, `preferred_output[0].role`)."""
    errors = _Errors(line)
    if not isinstance(row, dict):
        errors.add("", f"must be a JSON object, got {json_type(row)}")
        return errors.items
    for key in PREFERENCE_KEYS:
        if key not in row:
            if "messages" in row:
                errors.add(
                    "messages",
                    "is a chat example (`messages`), but the file is preference data (`input`, "
                    "`preferred_output`, `non_preferred_output`)",
                )
            else:
                errors.add(key, f"is missing the `{key}` key")
            return errors.items
    if not errors.unknown_keys(row, PREFERENCE_KEYS, ""):
        return errors.items
    given = row["input"]
    if not isinstance(given, dict):
        errors.type(given, "input", "object")
        return errors.items
    if not errors.unknown_keys(given, PREFERENCE_INPUT_KEYS, "input"):
        return errors.items
    if "messages" not in given:
        errors.add("input.messages", "`input` has no `messages`")
        return errors.items
    definitions = _Errors(line)
    names = _validate_tools(given["tools"], definitions) if "tools" in given else None
    for error in definitions.items:  # the tools' checks name `tools…`: it is `input.tools…` here
        errors.add(f"input.{error.param}", error.message.replace("`tools", "`input.tools"))
    parallel = given.get("parallel_tool_calls", True)
    if "parallel_tool_calls" in given and type(parallel) is not bool:
        errors.type(parallel, "input.parallel_tool_calls", "boolean")
        parallel = True
    if errors.items:
        return errors.items
    errors.items += validate_messages(
        given["messages"],
        line=line,
        path="input.messages",
        tool_names=names,
        parallel_tool_calls=parallel,
        require_assistant=False,
    )
    if errors.items:
        return errors.items
    for key in PREFERENCE_OUTPUTS:
        output = row[key]
        errors.items += validate_messages(
            output,
            line=line,
            path=key,
            tool_names=names,
            parallel_tool_calls=parallel,
            roles=("assistant",),
        )
        if errors.items:
            # An output is assistant messages only: say so rather than "unknown role".
            first = errors.items[0]
            if first.param.endswith(".role"):
                errors.items[0] = FormatError(
                    f"`{first.param[: -len('.role')]}` must be an assistant message: "
                    f"`{key}` holds the reply the model should (or should not) give",
                    first.param,
                    line,
                )
            return errors.items
    return errors.items


def normalise_preference(row: Any, *, line: int | None = None) -> PreferencePair:
    """The pair of conversations of a preference line; raises ChatFormatError if it does not
    validate. Each is the input's messages followed by one output, normalised as a chat example
    is (`_normalise_messages`), with only the output trained."""
    errors = validate_preference(row, line=line)
    if errors:
        raise ChatFormatError(errors[0])
    given = row["input"]
    tools = [dict(tool) for tool in given["tools"]] if given.get("tools") else None
    parallel = bool(given.get("parallel_tool_calls", True))
    context, flags = _normalise_messages(given["messages"])
    context_flags: list[bool | None] = [None if f is None else False for f in flags]

    def conversation(output: list[dict[str, Any]]) -> Conversation:
        messages, trained = _normalise_messages(output)
        return Conversation([*context, *messages], [*context_flags, *trained], tools, parallel)

    return PreferencePair(
        conversation(row["preferred_output"]), conversation(row["non_preferred_output"])
    )
