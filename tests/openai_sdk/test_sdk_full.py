"""Acceptance: every method of the newest SDK's `client.fine_tuning` and `client.webhooks`,
unchanged, against a live Tunery with a real Celery worker, real (tiny) training, a real webhook
receiver, and `client.webhooks.unwrap` on real deliveries. Every response is checked against the
SDK's own pydantic models (tests/openai_sdk/shapes.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.checkpoints import (
    PermissionCreateResponse,
    PermissionListResponse,
    PermissionRetrieveResponse,
)
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from openai.types.webhooks import (
    FineTuningJobCancelledWebhookEvent,
    FineTuningJobSucceededWebhookEvent,
    WebhookEndpoint,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
)

from accounts.models import WebhookDelivery
from jobs.models import FineTuneJob
from tests.conftest import Persona, sms_subset
from tests.openai_sdk.receiver import webhook_receiver
from tests.openai_sdk.shapes import check
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FINE_TUNING_EVENTS = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
]


# The base both tests train: the tiny model in CI (seconds). TUNERY_SDK_BASE_MODEL=
# SmolLM2-135M-Instruct makes the same calls train the embedded model (minutes; the waits
# stretch by PATIENCE).
BASE = os.environ.get("TUNERY_SDK_BASE_MODEL", "tiny-llama")
PATIENCE = 1 if BASE == "tiny-llama" else 10


@pytest.fixture
def base(request: pytest.FixtureRequest) -> str:
    if BASE == "tiny-llama":
        request.getfixturevalue("tiny_base")
    else:
        request.getfixturevalue("inference")
    return BASE


def sdk(live_server: Any, persona: Persona) -> OpenAI:
    return OpenAI(base_url=f"{live_server.url}/v1", api_key=persona.key, max_retries=0)


def job_row(job_id: str) -> FineTuneJob:
    return FineTuneJob.objects.get(public_id=job_id)


def upload(client: OpenAI, path: Path) -> str:
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    client.files.wait_for_processing(file.id, poll_interval=0.3, max_wait_seconds=120 * PATIENCE)
    return file.id


WORKER_HOOKS = {"TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "TUNERY_WEBHOOK_RETRY_SECONDS": "1"}


def test_every_fine_tuning_and_webhooks_method(
    live_server: Any,
    owner: Persona,
    outsider: Persona,
    base: str,
    tmp_path: Path,
    settings: Any,
) -> None:
    purge_broker()
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True  # the receiver is on 127.0.0.1
    client, other = sdk(live_server, owner), sdk(live_server, outsider)

    with (
        webhook_receiver() as receiver,
        # Two workers, as in production: deliveries (default queue) never wait behind training.
        celery_worker("training", None, None, **WORKER_HOOKS),
        celery_worker("default", None, None, **WORKER_HOOKS),
    ):
        # --- webhooks: the endpoint resource ------------------------------------------------
        types = check(client.webhooks.event_types.list(), WebhookEventTypeList)
        assert types.data == FINE_TUNING_EVENTS
        endpoint = check(
            client.webhooks.create(
                name="ci",
                url=receiver.url,
                # The SDK wants a list of its Literal names; ours holds the same names as str.
                event_types=FINE_TUNING_EVENTS,  # type: ignore[arg-type]  # see above
            ),
            WebhookEndpointWithSecret,
        )
        first_secret = endpoint.signing_secret
        assert first_secret.startswith("whsec_")
        check(client.webhooks.retrieve(endpoint.id), WebhookEndpoint)
        renamed = check(client.webhooks.update(endpoint.id, name="ci hooks"), WebhookEndpoint)
        assert renamed.name == "ci hooks" and not hasattr(renamed, "signing_secret")
        listed = list(client.webhooks.list(limit=1))
        assert [check(e, WebhookEndpoint).id for e in listed] == [endpoint.id]
        result = check(
            client.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded"),
            WebhookEndpointTestResult,
        )
        assert (result.status_code, result.success) == (200, True)
        sample = receiver.deliveries[-1]
        unwrapped = client.webhooks.unwrap(sample.body, sample.headers, secret=first_secret)
        assert isinstance(unwrapped, FineTuningJobSucceededWebhookEvent)
        # Rotated, keeping the old secret for 24 h: deliveries verify with either.
        rotated = check(
            client.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True),
            WebhookEndpointWithSecret,
        )
        secret = rotated.signing_secret
        assert secret != first_secret
        receiver.statuses = [503]  # the next delivery fails once: the worker retries it

        # --- a supervised job with metadata, trained to the end -------------------------------
        train = upload(client, sms_subset(tmp_path, 48))
        valid = upload(client, sms_subset(tmp_path, 16, name="valid.jsonl", split="valid"))
        job = check(
            client.fine_tuning.jobs.create(
                model=base,
                training_file=train,
                validation_file=valid,
                method={
                    "type": "supervised",
                    "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 8}},
                },
                suffix="full",
                seed=11,
                metadata={"team": "nlp", "run": "a"},
            )
        )
        assert (job.seed, job.metadata, job.method.type) == (
            11,
            {"team": "nlp", "run": "a"},
            "supervised",
        )
        # A long second job queues behind it, to pause, resume and cancel.
        long_job = client.fine_tuning.jobs.create(
            model=base,
            training_file=train,
            hyperparameters={"n_epochs": 50, "batch_size": 1},
            metadata={"team": "ops"},
        )
        wait_for(
            lambda: job_row(job.id).status in FineTuneJob.FINISHED, 240 * PATIENCE, what="the job"
        )
        job = check(client.fine_tuning.jobs.retrieve(job.id))
        assert job.status == "succeeded", job.error
        assert job.error is None and job.estimated_finish is None and job.trained_tokens > 0
        assert job.model_extra["user_provided_suffix"] == "full"

        # list: metadata filter (exact), pagination with after/limit/has_more
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "nlp"})] == [job.id]
        page = client.fine_tuning.jobs.list(limit=1)
        assert page.has_more is True and [check(j).id for j in page.data] == [long_job.id]
        assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [long_job.id, job.id]

        # events: newest first, typed, paged
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=7))
        for event in events:
            check(event, FineTuningJobEvent)
        assert events[0].message == "The job has successfully completed"
        metrics = [e for e in events if e.type == "metrics"]
        assert metrics and isinstance(metrics[0].data, dict)
        assert {"step", "train_loss"} <= set(metrics[0].data)

        # checkpoints: one per epoch for the last 3 epochs, each a model
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
        for checkpoint in checkpoints:
            check(checkpoint, FineTuningJobCheckpoint)
        assert [c.step_number for c in checkpoints] == [24, 18, 12]  # 6 steps per epoch
        raw = json.loads(
            client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id, limit=2).text
        )
        assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (
            checkpoints[0].id,
            checkpoints[1].id,
            True,
        )
        ckpt = checkpoints[1].fine_tuned_model_checkpoint
        assert ckpt == f"{job.fine_tuned_model}:ckpt-step-18"
        assert checkpoints[0].metrics.train_loss is not None
        completion = check(client.completions.create(model=ckpt, prompt="Free prize", max_tokens=3))
        assert isinstance(completion, Completion) and completion.model == ckpt
        chat = check(
            client.chat.completions.create(
                model=ckpt, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        )
        assert isinstance(chat, ChatCompletion)

        succeeded = receiver.of_type("fine_tuning.job.succeeded", job.id, timeout=120 * PATIENCE)
        webhook = client.webhooks.unwrap(succeeded.body, succeeded.headers, secret=secret)
        assert isinstance(webhook, FineTuningJobSucceededWebhookEvent)
        assert webhook.data.id == job.id
        # The previous secret still verifies for 24 h after a rotation that kept it.
        client.webhooks.unwrap(succeeded.body, succeeded.headers, secret=first_secret)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.unwrap(succeeded.body, succeeded.headers, secret="whsec_" + "A" * 44)

        # --- pause, resume, cancel ------------------------------------------------------------
        wait_for(lambda: job_row(long_job.id).step > 2, 120 * PATIENCE, what="training steps")
        pausing = check(client.fine_tuning.jobs.pause(long_job.id))
        assert pausing.status in ("pausing", "paused")
        wait_for(lambda: job_row(long_job.id).status == "paused", 60 * PATIENCE, what="the pause")
        paused_at = job_row(long_job.id).step
        status: str = client.fine_tuning.jobs.retrieve(long_job.id).status  # Literal lacks "paused"
        assert status == "paused"
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.pause(long_job.id)
        assert refused.value.param == "fine_tuning_job_id"
        assert check(client.fine_tuning.jobs.resume(long_job.id)).status == "queued"
        wait_for(
            lambda: job_row(long_job.id).step > paused_at, 120 * PATIENCE, what="training to go on"
        )
        messages = [e.message for e in client.fine_tuning.jobs.list_events(long_job.id, limit=100)]
        assert f"Fine-tuning job paused at step {paused_at}" in messages
        assert any(m.startswith(f"Fine-tuning job resumed from step {paused_at}") for m in messages)
        assert messages.count("Fine-tuning job started") == 1
        cancelled = check(client.fine_tuning.jobs.cancel(long_job.id))
        assert cancelled.status == "cancelled"
        gone = receiver.of_type("fine_tuning.job.cancelled", long_job.id, timeout=180 * PATIENCE)
        assert isinstance(
            client.webhooks.unwrap(gone.body, gone.headers, secret=secret),
            FineTuningJobCancelledWebhookEvent,
        )

        # --- sharing a checkpoint (and the model) with another organization ------------------
        with pytest.raises(openai.NotFoundError):
            other.completions.create(model=ckpt, prompt="x", max_tokens=1)
        granted = client.fine_tuning.checkpoints.permissions.create(
            ckpt, project_ids=[outsider.org.public_id]
        )
        [permission] = [check(p, PermissionCreateResponse) for p in granted]
        assert permission.project_id == outsider.org.public_id
        listed = [
            check(p, PermissionListResponse)
            for p in client.fine_tuning.checkpoints.permissions.list(ckpt)
        ]
        assert [p.id for p in listed] == [permission.id]
        with pytest.warns(DeprecationWarning, match="paginated list"):
            retrieved = client.fine_tuning.checkpoints.permissions.retrieve(ckpt)
        assert [p.id for p in check(retrieved, PermissionRetrieveResponse).data] == [permission.id]
        client.fine_tuning.checkpoints.permissions.create(
            job.fine_tuned_model, project_ids=[outsider.org.public_id]
        )

        # The other org uses both, continues from the checkpoint, but sees and deletes nothing.
        assert other.completions.create(model=ckpt, prompt="x", max_tokens=2).choices
        with pytest.raises(openai.PermissionDeniedError):
            other.models.delete(job.fine_tuned_model)
        with pytest.raises(openai.NotFoundError):
            other.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            other.fine_tuning.checkpoints.permissions.list(ckpt).data  # noqa: B018
        theirs = upload(other, sms_subset(tmp_path, 16, name="theirs.jsonl"))
        continued = other.fine_tuning.jobs.create(
            model=ckpt, training_file=theirs, hyperparameters={"n_epochs": 1, "batch_size": 8}
        )
        wait_for(
            lambda: job_row(continued.id).status in FineTuneJob.FINISHED, 120 * PATIENCE, what="it"
        )
        continued = check(other.fine_tuning.jobs.retrieve(continued.id))
        assert continued.status == "succeeded", continued.error
        assert continued.fine_tuned_model.startswith(f"ft:{base}:globex::")

        deleted = client.fine_tuning.checkpoints.permissions.delete(
            permission.id, fine_tuned_model_checkpoint=ckpt
        )
        assert (deleted.id, deleted.deleted, deleted.object) == (
            permission.id,
            True,
            "checkpoint.permission",
        )
        with pytest.raises(openai.NotFoundError):
            other.completions.create(model=ckpt, prompt="x", max_tokens=1)

        # The delivery log: the succeeded event took a retry after a 503.
        log = WebhookDelivery.objects.get(event_id=succeeded.headers["webhook-id"])
        assert (log.status, log.attempts, log.status_code) == ("delivered", 2, 200)
        assert sum(d.headers["webhook-id"] == log.event_id for d in receiver.deliveries) == 2

        gone_endpoint = client.webhooks.delete(endpoint.id)
        assert (gone_endpoint.deleted, gone_endpoint.object) == (True, "webhook_endpoint.deleted")
        with pytest.raises(openai.NotFoundError):
            client.webhooks.retrieve(endpoint.id)


def test_dpo_job_through_the_sdk(
    live_server: Any, owner: Persona, base: str, tmp_path: Path
) -> None:
    """`method.type=dpo`. Built on the `dpo` branch; where it is not, the create call answers 400
    and this skips (the lead re-enables it on merge)."""
    purge_broker()
    client = sdk(live_server, owner)
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": f"Is {i} even?"}]},
            "preferred_output": [{"role": "assistant", "content": "yes" if i % 2 == 0 else "no"}],
            "non_preferred_output": [
                {"role": "assistant", "content": "no" if i % 2 == 0 else "yes"}
            ],
        }
        for i in range(16)
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = client.files.create(file=path.open("rb"), purpose="fine-tune").id
    try:  # before any worker starts: on a branch without DPO this skips in a second
        job = client.fine_tuning.jobs.create(
            model=base,
            training_file=training,
            method={
                "type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 8}},
            },
        )
    except openai.BadRequestError as exc:
        pytest.skip(f"DPO is not on this branch yet: 400 {exc.param}: {exc.message}")
    with celery_worker():
        wait_for(
            lambda: job_row(job.id).status in FineTuneJob.FINISHED, 180 * PATIENCE, what="DPO job"
        )
    job = check(client.fine_tuning.jobs.retrieve(job.id), FineTuningJob)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert list(client.fine_tuning.jobs.checkpoints.list(job.id))
    # The DPO figures, in the metrics events and the results file.
    metrics = [
        e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
    ]
    assert metrics and {"training_reward_margin", "training_preference_accuracy"} <= set(
        metrics[0].data["results"]
    )
    results = client.files.content(job.result_files[0]).text
    assert results.splitlines()[0].startswith(
        "step,elapsed_tokens,elapsed_examples,training_loss,training_reward_margin,"
        "training_preference_accuracy"
    )
