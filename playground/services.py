"""Completions and chat completions: the one service behind /v1 and the playground page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User

from accounts.models import ApiKey, Organization
from engine.generation import Usage
from models_app.services import Resolved, model_resolve, usage_record
from playground import protocol
from playground.backends import Backend, LocalBackend, Target, get_backend
from playground.inference import SseStream, UsageHook, run_chat, run_completion


@dataclass(frozen=True)
class Caller:
    """Who is asking: the org always; the API key for /v1, the user for the browser."""

    organization: Organization
    api_key: ApiKey | None = None
    user: User | None = None


def target_for(resolved: Resolved, backend: Backend) -> Target:
    # A remote server loads bases by name; only the local pool (or a full fine-tune's own
    # weights) needs a directory, and resolving a GGUF base means dequantizing it once.
    needs_dir = isinstance(backend, LocalBackend) or resolved.is_full_fine_tune
    return Target(
        name=resolved.name,
        base_name=resolved.base.name,
        base_dir=resolved.base_dir if needs_dir else None,
        adapter_dir=resolved.adapter_dir,
        full_weights=resolved.is_full_fine_tune,
    )


def _usage_hook(caller: Caller, model_name: str) -> UsageHook:
    def record(usage: Usage) -> None:
        usage_record(
            organization=caller.organization,
            model_name=model_name,
            api_key=caller.api_key,
            user=caller.user,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    return record


def completion_create(
    *, caller: Caller, body: Mapping[str, Any], model: str | None = None
) -> dict[str, Any] | SseStream:
    """POST /v1/completions: a JSON dict, or a primed SSE stream when `stream` is true.

    `model` overrides the body's (the 0.28 client's /v1/engines/{engine}/completions).
    """
    call = protocol.parse_completion(body, model=model)
    resolved = model_resolve(caller.organization, call.model)
    backend = get_backend()
    target = target_for(resolved, backend)
    return run_completion(backend, target, call, on_usage=_usage_hook(caller, resolved.name))


def chat_completion_create(
    *, caller: Caller, body: Mapping[str, Any]
) -> dict[str, Any] | SseStream:
    """POST /v1/chat/completions, for models whose tokenizer has a chat template."""
    call = protocol.parse_chat(body)
    resolved = model_resolve(caller.organization, call.model)
    backend = get_backend()
    target = target_for(resolved, backend)
    return run_chat(backend, target, call, on_usage=_usage_hook(caller, resolved.name))
