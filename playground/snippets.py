""" "View code": the same request as curl, the current `openai` SDK and the 0.28 CLI."""

from __future__ import annotations

import json
import shlex
from typing import Any


def _python_literal(value: Any) -> str:
    # Request bodies hold only str/int/float/bool/None/list/dict, whose repr is Python source.
    return repr(value)


def curl(base_url: str, body: dict[str, Any]) -> str:
    path = "chat/completions" if "messages" in body else "completions"
    payload = json.dumps(body, indent=2, ensure_ascii=False)
    return (
        f"curl {base_url}/{path} \\\n"
        '  -H "Authorization: Bearer $OPENAI_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d {shlex.quote(payload)}"
    )


def python_sdk(base_url: str, body: dict[str, Any]) -> str:
    method = "client.chat.completions.create" if "messages" in body else "client.completions.create"
    args = "\n".join(f"    {key}={_python_literal(value)}," for key, value in body.items())
    stream = body.get("stream")
    lines = [
        "from openai import OpenAI",
        "",
        f'client = OpenAI(base_url="{base_url}")  # the key comes from OPENAI_API_KEY',
        f"response = {method}(",
        args,
        ")",
    ]
    if stream and "messages" in body:
        lines += [
            "for chunk in response:",
            '    print(chunk.choices[0].delta.content or "", end="")',
        ]
    elif stream:
        lines += ["for chunk in response:", '    print(chunk.choices[0].text, end="")']
    elif "messages" in body:
        lines += ["print(response.choices[0].message.content)"]
    else:
        lines += ["print(response.choices[0].text)"]
    return "\n".join(lines)


def cli_028(base_url: str, body: dict[str, Any]) -> str:
    """The 0.28 CLI; it has no flags for penalties or logit_bias, so those are left out.

    It always sends echo=true for completions, so its output starts with the prompt.
    """
    env = f"OPENAI_API_BASE={base_url} OPENAI_API_KEY=$OPENAI_API_KEY"
    if "messages" in body:
        parts = ["openai", "api", "chat_completions.create", "-m", body["model"]]
        for message in body["messages"]:
            parts += ["-g", message["role"], message["content"]]
    else:
        parts = ["openai", "api", "completions.create", "-m", body["model"], "-p", body["prompt"]]
        if body.get("logprobs") is not None:
            parts += ["--logprobs", str(body["logprobs"])]
    flags = [("-M", "max_tokens"), ("-t", "temperature"), ("-P", "top_p")]
    for flag, key in flags:
        if body.get(key) is not None:
            parts += [flag, str(body[key])]
    stops = body.get("stop") or []
    if stops:
        parts += ["--stop", stops[0]]  # the 0.28 CLI takes a single stop sequence
    if body.get("stream"):
        parts.append("--stream")
    command = env + " " + " ".join(shlex.quote(p) for p in parts)
    if len(stops) > 1:
        command = "# the 0.28 CLI takes one --stop; the others are left out\n" + command
    return command


def snippets(base_url: str, body: dict[str, Any]) -> dict[str, str]:
    return {
        "curl": curl(base_url, body),
        "python": python_sdk(base_url, body),
        "cli": cli_028(base_url, body),
    }
