"""The create form's pre-flight line: the hyperparameters (the user's or the auto ones), tokens,
time and memory, from what the form holds. Shared by the form's first render (also after a
server-side error) and its HTMX refresh, so the line never says "pick a model" when one is."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import QueryDict

from accounts.models import Organization
from datasets.selectors import file_find_for_org
from engine import memory
from jobs import selectors
from models_app.models import BaseModel
from models_app.selectors import base_model_find, usable_model_find

HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")


def _number(params: QueryDict, key: str, cast: type) -> Any:
    try:
        return cast(params[key]) if params.get(key) else None
    except ValueError:
        return None


def memory_estimate(
    base: BaseModel, *, stats: dict[str, Any], method: str, batch_size: int
) -> dict[str, Any] | None:
    config = memory.local_config(base.source, str(settings.TUNERY_MODEL_CACHE_DIR))
    if config is None:
        return None  # never loaded on this server yet: nothing to read the size from
    lengths = stats.get("example_tokens") if isinstance(stats, dict) else None
    longest = lengths.get("max") if isinstance(lengths, dict) else None
    sequence = min(int(longest or base.context_length), base.context_length)
    found = memory.estimate(config, method=method, batch_size=batch_size, sequence_tokens=sequence)
    return {
        "parameters": found.parameters,
        "weights_bytes": found.weights_bytes,
        "peak_bytes": found.peak_bytes,
        "sequence_tokens": sequence,
    }


def preflight_context(*, organization: Organization, params: QueryDict) -> dict[str, Any]:
    file = file_find_for_org(organization=organization, file_id=params.get("training_file", ""))
    name = params.get("model", "")
    fine_tune = usable_model_find(organization=organization, name=name) if name else None
    base = fine_tune.base if fine_tune else (base_model_find(name=name) if name else None)
    missing = [
        label for label, value in (("a model", base), ("a training file", file)) if value is None
    ]
    if missing:
        return {"estimate": None, "missing": " and ".join(missing)}
    assert file is not None and base is not None
    given = {key: _number(params, key, float if "rate" in key else int) for key in HYPERPARAMETERS}
    # The devices it would run on: its speed is measured there, and nobody may be online there.
    target = (
        params.get("device_class", "").strip()
        or base.device_class
        or settings.TUNERY_DEFAULT_DEVICE_CLASS
    )
    count = _number(params, "device_count", int)
    estimate = selectors.job_preflight(
        examples=file.example_count,
        tokens=file.token_count,
        base_model_id=base.pk,
        n_epochs=given["n_epochs"],
        batch_size=given["batch_size"],
        learning_rate_multiplier=given["learning_rate_multiplier"],
        scaling_forecast=params.get("scaling_forecast") == "on",
        device_class=target,
        device_count=count or 1,
        objective="dpo" if params.get("method_type") == "dpo" else "supervised",
        # The form has no early-stopping field: its jobs ask for "auto" (jobs.runner).
        selecting=bool(params.get("validation_file")) and settings.TUNERY_EARLY_STOPPING == "auto",
    )
    estimate["device_class"] = target
    estimate["device_count"] = count
    estimate["workers_online"] = [w for w in selectors.workers_for_class(target) if w.is_online]
    estimate["memory"] = memory_estimate(
        base,
        stats=file.stats or {},
        method=params.get("training_method") or "lora",
        # A DPO step runs both sequences of each pair. Its reference costs no memory: its
        # log-probabilities are computed once before training (docs/adr/0014-dpo.md).
        batch_size=int(estimate["batch_size"]) * (2 if params.get("method_type") == "dpo" else 1),
    )
    # Which values the user typed: the line says "yours" for those, "auto" for the rest.
    estimate["given"] = {key for key, value in given.items() if value is not None}
    return {"estimate": estimate, "file": file, "missing": ""}


def file_hints(*, organization: Organization, params: QueryDict) -> dict[str, Any]:
    """The separator and stop sequence the training file's analysis found (its prompts' and
    completions' common endings): what to send when using the model."""
    file = file_find_for_org(organization=organization, file_id=params.get("training_file", ""))
    findings = file.findings if file is not None and isinstance(file.findings, dict) else {}
    separator, stop = findings.get("prompt_suffix") or "", findings.get("completion_suffix") or ""
    if findings.get("task_type") == "classification":
        stop = ""  # labels share endings by chance ("positive"/"negative"): not a stop sequence
    return {"hints": {"separator": separator, "stop": stop} if separator or stop else None}
