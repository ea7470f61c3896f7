"""Check an SDK response against the SDK's own pydantic model: every required field present,
every value of the declared type (the SDK itself builds its objects without validating)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Statuses Tunery reports that the SDK's `FineTuningJob.status` Literal does not list yet
# (OpenAI's API reference does; docs/adr/0009-paused-status.md).
EXTRA_JOB_STATUSES = {"pausing", "paused"}


def check(obj: Any, model: type[BaseModel] | None = None) -> Any:
    """Validate `obj` (an SDK object as received) against `model` (default: its own type);
    returns `obj` itself."""
    model = model or type(obj)
    data = obj.model_dump(mode="python", exclude_unset=True)
    required = {name for name, f in model.model_fields.items() if f.is_required()}
    missing = required - set(data)
    assert not missing, f"{model.__name__} lacks required {sorted(missing)}: {data}"
    if model.__name__ == "FineTuningJob" and data.get("status") in EXTRA_JOB_STATUSES:
        data = {**data, "status": "running"}  # the rest must still validate
    model.model_validate(data)
    return obj
