"""Completions and chat completions: the one service behind /v1 and the playground page."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User

from accounts.models import ApiKey, Organization
from engine.generation import Usage
from models_app.models import UsageRecord
from models_app.services import Resolved, model_resolve, usage_record
from playground import protocol
from playground.backends import Target, get_backend
from playground.inference import SseStream, UsageHook, run_chat, run_completion


@dataclass(frozen=True)
class Caller:
    """Who is asking: the org always; the API key for /v1, the user for the browser."""

    organization: Organization
    api_key: ApiKey | None = None
    user: User | None = None
    usage_kind: str = UsageRecord.Kind.REQUESTS  # the model page's samples say "samples"


def target_for(resolved: Resolved) -> Target:
    """The one place a resolved model becomes what the inference server runs.

    Bases travel as their source (the service resolves and caches them); only a full
    fine-tune's weights directory is looked up here, which is a cheap path check.
    """
    return Target(
        name=resolved.name,
        base_name=resolved.base.name,
        base_source=resolved.base.source,
        base_dir=resolved.base_dir if resolved.is_full_fine_tune else None,
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
            kind=caller.usage_kind,
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
    return run_completion(
        get_backend(), target_for(resolved), call, on_usage=_usage_hook(caller, resolved.name)
    )


def chat_completion_create(
    *, caller: Caller, body: Mapping[str, Any]
) -> dict[str, Any] | SseStream:
    """POST /v1/chat/completions, for models whose tokenizer has a chat template."""
    call = protocol.parse_chat(body)
    resolved = model_resolve(caller.organization, call.model)
    return run_chat(
        get_backend(), target_for(resolved), call, on_usage=_usage_hook(caller, resolved.name)
    )
