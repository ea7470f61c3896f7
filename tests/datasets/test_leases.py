"""A validation whose worker died: the lease expires, the sweeper sends it again, and a file that
keeps killing its worker ends in `error` (the repro: a killed validation worker left the file
`uploaded` for ever while its job retried every 2 s)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

from django.utils import timezone

from config.celery import app
from datasets import processing, tasks
from datasets.models import File
from tests.conftest import Persona
from tests.datasets.conftest import jsonl
from tests.datasets.test_processing import make_file, rows


def killed_mid_validation(file: File, tries: int = 1) -> None:
    """What a worker killed while validating leaves: `uploaded`, a try counted, a lapsed lease."""
    File.objects.filter(pk=file.pk).update(
        validation_attempts=tries,
        validation_lease_until=timezone.now() - timedelta(seconds=1),
    )


def test_a_lost_validation_is_sent_again_and_completes(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(3)))
    killed_mid_validation(file)

    with mock.patch("datasets.tasks.validate_file.delay") as delay:
        tasks.sweep_validations.run()
        tasks.sweep_validations.run()  # reserved for a lease period: not sent twice

    delay.assert_called_once_with(file.pk)
    processing.file_validate(file_id=file.pk)  # what the re-sent message does
    file.refresh_from_db()
    assert file.status == "processed" and file.validation_attempts == 2


def test_a_file_that_keeps_killing_its_worker_ends_in_error(owner: Persona, settings: Any) -> None:
    settings.TUNERY_WORK_MAX_TRIES = 3
    swept = make_file(owner, jsonl(rows(3)))
    killed_mid_validation(swept, tries=3)
    redelivered = make_file(owner, jsonl(rows(3)))
    killed_mid_validation(redelivered, tries=3)

    # The broker redelivers the killed worker's message (task_reject_on_worker_lost)...
    processing.file_validate(file_id=redelivered.pk)
    # ...and the sweeper finds the other one: both out of tries.
    with mock.patch("datasets.tasks.validate_file.delay") as delay:
        tasks.sweep_validations.run()

    for file in (swept, redelivered):
        file.refresh_from_db()
        assert file.status == "error"
        assert file.status_details.startswith("Validation did not finish after 3 tries")
    delay.assert_not_called()


def test_a_never_started_validation_is_sent_again(owner: Persona, settings: Any) -> None:
    file = make_file(owner, jsonl(rows(3)))  # its message was lost (the broker was down)
    File.objects.filter(pk=file.pk).update(created_at=timezone.now() - timedelta(hours=1))
    fresh = make_file(owner, jsonl(rows(3)))

    assert processing.files_sweep_validations() == [file.pk]
    assert fresh.pk  # a file uploaded a moment ago is left to its message


def test_every_task_goes_back_to_the_queue_when_its_worker_dies() -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    beat = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"datasets.sweep_validations", "models_app.sweep_exports", "jobs.collect_garbage"} <= (
        beat
    )
