"""In real Chromium: upload a CSV, map its columns, read the findings, apply the fixes, and see
the fixed file validated with its statistics."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from datasets import processing
from datasets.models import File
from tests.conftest import Persona, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _reviews_csv() -> bytes:
    things, verdicts = ["film", "book", "play"], ["ok", "great", "dull", "long"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "review", "sentiment"])
    for i in range(40):
        review = f"Review {i}: the {things[i % 3]} was {verdicts[i % 4]}"
        writer.writerow([i, review, "positive" if i % 4 else "negative"])
    writer.writerow([99, "Review 1: the book was great", "positive"])  # a duplicate of row 1
    return out.getvalue().encode()


def _validate_waiting(organization_id: int) -> list[File]:
    """What the `default` queue's worker does, run here: no worker runs in this test."""
    waiting = list(File.objects.filter(organization_id=organization_id, status="uploaded"))
    for file in waiting:
        processing.file_validate(file_id=file.pk)
    return waiting


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # Autouse runs before the persona fixtures: their passwords get the fast hasher.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_upload_map_review_fix_and_see_statistics(
    page: Any, live_server: Any, owner: Persona
) -> None:
    login(page, live_server, owner.user.username)

    # Upload a CSV: it goes to the mapping step, not straight into storage.
    page.goto(f"{live_server.url}/datasets/upload/")
    page.set_input_files(
        "#id_file",
        files=[{"name": "reviews.csv", "mimeType": "text/csv", "buffer": _reviews_csv()}],
    )
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets/upload/[\w-]+/$"))
    assert "Based on your file extension, your file is formatted as a CSV file" in page.content()

    # Map the columns; the JSONL preview follows each change (HTMX).
    page.check("input[name=mode][value=prompt_completion]")
    page.select_option("#id_prompt", "review")
    page.select_option("#id_completion", "sentiment")
    preview = page.locator("[data-testid=mapping-preview]")
    preview.filter(has_text='"completion": "negative"').wait_for()
    assert '"prompt": "Review 0: the film was ok"' in preview.inner_text()
    page.click("text=Convert to JSONL and upload")
    page.wait_for_url(re.compile(r".*/datasets/file-\w+/$"))
    assert page.locator("[data-testid=file-status]").inner_text() == "uploaded"

    (converted,) = _validate_waiting(owner.org.pk)
    assert converted.filename == "reviews.jsonl"

    # The page polls until validation is done, then shows the prepare-data findings.
    page.locator("[data-testid=file-status]", has_text="processed").wait_for()
    findings = page.locator("[data-testid=findings]").inner_text()
    # One numbering (the file's lines), grammatical counts, the product's words (issue #15,
    # items 5 and 6): the CLI's "There are 1 duplicated ... rows: [40]" and `ada` stay in the CLI.
    assert "1 example is a duplicate of an earlier one." in findings
    assert "Line 41" in findings  # the 41st row of the CSV, line 41 of the JSONL
    assert "rows: [" not in findings and "There are 1" not in findings
    assert "This looks like classification data" in findings and "`ada`" not in findings
    assert "does not contain a common separator" in findings
    assert "should start with a whitespace character" in findings
    form = page.locator("[data-testid=fix-form]")
    assert "[Recommended] Add a suffix separator ` ->` to all prompts" in form.inner_text()
    assert "Split into training and validation set" in form.inner_text()

    # Apply every recommended fix: a new, fixed train/validation pair; the original stays.
    page.click("[data-testid=apply-fixes]")
    page.wait_for_url(re.compile(r".*/datasets/file-\w+/$"))
    assert "reviews.jsonl is unchanged" in page.content()
    assert "--classification" not in page.content()  # no CLI flags in the browser
    fixed = _validate_waiting(owner.org.pk)
    assert sorted(f.filename for f in fixed) == [
        "reviews_prepared_train.jsonl",
        "reviews_prepared_valid.jsonl",
    ]
    assert all(f.derived_from_id == converted.pk for f in fixed)
    assert File.objects.get(pk=converted.pk).blob.read().startswith(b'{"prompt":"Review 0')

    # The fixed file becomes `processed` and its statistics and charts appear.
    page.locator("[data-testid=file-status]", has_text="processed").wait_for()
    # 40 unique rows: 32 to train, 8 to validate.
    assert page.locator("[data-testid=stat-examples]").inner_text() == "32"
    page.locator("#chart-labels-plot .main-svg").first.wait_for()
    # Nothing left to fix; only the split is offered again, as the original tool did.
    assert "[Recommended] Remove" not in page.locator("#findings").inner_text()
    assert "Split into training and validation set" in page.locator("#findings").inner_text()

    # "Fine-tune with these files": the create form with both halves and the classification
    # options, the rarer class ("negative", 8 of 40) as the positive one.
    page.click("[data-testid=fine-tune-with]")
    page.wait_for_url(re.compile(r".*/jobs/new/\?.*"))
    train, valid = sorted(fixed, key=lambda f: f.filename)
    assert page.input_value("#id_training_file") == train.public_id
    assert page.input_value("#id_validation_file") == valid.public_id
    assert page.is_checked("#id_compute_classification_metrics")
    assert page.input_value("#id_classification_positive_class") == " negative"
    options = page.locator("#id_classification_positive_class option").all_inner_texts()
    assert any(o.startswith('" negative"') for o in options)  # quoted: the space shows


def test_csv_export_is_prepared_by_a_worker_then_downloaded(
    page: Any, live_server: Any, owner: Persona
) -> None:
    """Prepare CSV → "Preparing…" → (the worker's build) → the link, with no page reload."""
    from models_app import processing as model_processing
    from models_app.models import Export
    from tests.factories import FileFactory

    rows = [{"prompt": "=1+1", "completion": " two"}, {"prompt": "Hi", "completion": " there"}]
    data = "".join(f"{json.dumps(r)}\n" for r in rows).encode()
    file = FileFactory.create(organization=owner.org, bytes=len(data), blob__data=data, stats={})
    processing.file_analyse(file_id=file.pk)
    login(page, live_server, owner.user.username)
    page.goto(f"{live_server.url}{file.get_absolute_url()}")
    page.evaluate("window.sameDocument = true")

    page.get_by_test_id("csv-prepare").click()
    page.get_by_test_id("csv-preparing").wait_for()
    (row,) = Export.objects.filter(file=file)
    model_processing.export_build(export_id=row.pk)  # what the default worker does
    link = page.get_by_test_id("csv-download")
    link.wait_for(timeout=10_000)  # the fragment polls every 2 s
    with page.expect_download() as download:
        link.click()

    assert page.evaluate("window.sameDocument") is True  # swapped in place, never reloaded
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".csv")
    assert Path(path).read_bytes() == b"prompt,completion\r\n'=1+1, two\r\nHi, there\r\n"
