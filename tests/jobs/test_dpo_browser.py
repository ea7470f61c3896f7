"""In real Chromium: upload preference pairs as a CSV (prompt, chosen, rejected), see both
outputs side by side, and create a DPO job from the form with its beta (a bad beta is an error
on its field)."""

from __future__ import annotations

import csv
import io
import re
from typing import Any
from unittest import mock

import pytest

from datasets.models import File
from jobs.models import FineTuneJob
from tests.conftest import Persona, login
from tests.datasets.test_browser import _validate_waiting

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _pairs_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "chosen", "rejected"])
    for i in range(12):
        writer.writerow([f"Is {i} even?", "yes" if i % 2 == 0 else "no", "maybe"])
    return out.getvalue().encode()


def test_upload_pairs_and_create_a_dpo_job_with_beta(
    page: Any, live_server: Any, owner: Persona, tiny_base: Any
) -> None:
    login(page, live_server, owner.user.username)
    page.goto(f"{live_server.url}/datasets/upload/")
    page.set_input_files(
        "#id_file", files=[{"name": "pairs.csv", "mimeType": "text/csv", "buffer": _pairs_csv()}]
    )
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets/upload/[\w-]+/$"))
    # The columns are recognised as preference pairs; the preview shows the JSONL to come.
    assert page.is_checked("input[name=mode][value=preference]")
    preview = page.locator("[data-testid=mapping-preview]")
    assert '"non_preferred_output"' in preview.inner_text()
    page.click("text=Convert to JSONL and upload")
    page.wait_for_url(re.compile(r".*/datasets/file-\w+/$"))
    # No worker runs here: validate what waits. (A worker another test left behind may have
    # validated it first: then it is done already.)
    _validate_waiting(owner.org.pk)
    file = File.objects.get(organization=owner.org)
    assert file.status == File.Status.PROCESSED, file.status_details
    assert file.format == File.Format.PREFERENCE, file.status_details

    page.reload()
    pair = page.locator("[data-testid=pair]").first
    pair.wait_for()
    assert "yes" in pair.locator("[data-testid=preferred]").inner_text()
    assert "maybe" in pair.locator("[data-testid=non-preferred]").inner_text()

    with mock.patch("jobs.tasks.run_training_job.delay"):
        page.goto(f"{live_server.url}/jobs/new/")
        page.select_option("#id_model", "tiny-llama")
        page.select_option("#id_training_file", file.public_id)
        page.select_option("#id_method_type", "dpo")
        page.fill("#id_beta", "20")
        page.click("text=Create fine-tune")
        page.locator("#id_beta ~ .errorlist, .field:has(#id_beta) .errorlist").first.wait_for()
        assert not FineTuneJob.objects.exists()

        page.fill("#id_beta", "0.25")
        page.click("text=Create fine-tune")
        page.wait_for_url("**/jobs/ftjob-*/")
    job = FineTuneJob.objects.get()
    assert job.method_type == "dpo" and job.hyperparameters["beta"] == 0.25
