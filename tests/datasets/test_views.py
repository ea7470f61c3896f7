"""Dataset pages: upload and mapping, detail with findings, Apply fixes, delete, 404s."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http.response import HttpResponseBase
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from datasets import prepare, processing, staging
from datasets.models import File
from jobs.models import FineTuneJob
from models_app import files as model_files
from models_app import processing as model_processing
from models_app.models import Export
from tests.conftest import Persona, streamed
from tests.factories import BaseModelFactory, FileFactory
from tests.workers import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # The personas' passwords are hashed on creation; a fast hasher keeps these tests quick.
    # (Blobs go to a per-test MEDIA_ROOT: tests/datasets/conftest.py's media_dir.)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def browser_client(client: Client, owner: Persona) -> Client:
    client.force_login(owner.user)
    return client


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _file(owner: Persona, rows: list[Any], **fields: Any) -> File:
    data = _jsonl(rows)
    defaults = {"organization": owner.org, "bytes": len(data), "stats": {}}
    file = FileFactory.create(**(defaults | fields), blob__data=data)
    # The validation worker stores the findings right after validating (pages never analyse).
    processing.file_analyse(file_id=file.pk)
    file.refresh_from_db()
    return file


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


UNPREPARED = [{"prompt": f"Question {i}", "completion": f"answer number {i}"} for i in range(6)]


# --- access -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "name"),
    [
        ("get", "datasets:detail"),
        ("get", "datasets:download"),
        ("get", "datasets:export_csv"),
        ("post", "datasets:export_csv_prepare"),
        ("get", "datasets:export_csv_status"),
        ("post", "datasets:fix"),
        ("post", "datasets:delete"),
    ],
)
def test_another_organizations_file_is_404(
    client: Client, owner: Persona, outsider: Persona, method: str, name: str
) -> None:
    file = _file(owner, UNPREPARED)
    client.force_login(outsider.user)

    with mock.patch("models_app.tasks.build_export.delay") as delay:
        response = getattr(client, method)(reverse(name, args=[file.public_id]))

    assert response.status_code == 404
    assert File.objects.filter(pk=file.pk).exists()
    delay.assert_not_called()


def test_pages_need_a_login(client: Client) -> None:
    response = client.get(reverse("datasets:list"))

    assert response.status_code == 302


# --- list -----------------------------------------------------------------------------------


def test_list_shows_token_totals_and_polls_only_while_validating(
    browser_client: Client, owner: Persona
) -> None:
    _file(owner, UNPREPARED, stats={"examples": 6, "tokens": {"total": 1234}})

    page = browser_client.get(reverse("datasets:list"))
    _file(owner, UNPREPARED, status=File.Status.UPLOADED, filename="new.jsonl")
    fragment = browser_client.get(reverse("datasets:list"), headers={"HX-Request": "true"})

    assert b"1234" in page.content
    assert b"hx-trigger" not in page.content
    assert b'id="file-table"' in fragment.content
    assert b"hx-trigger" in fragment.content
    assert b"<html" not in fragment.content


# --- upload ---------------------------------------------------------------------------------


def test_upload_jsonl_creates_the_file(browser_client: Client, owner: Persona) -> None:
    upload = SimpleUploadedFile("train.jsonl", _jsonl(UNPREPARED))

    response = browser_client.post(reverse("datasets:upload"), {"file": upload})

    file = File.objects.get(organization=owner.org)
    assert response.status_code == 302
    assert response["Location"] == file.get_absolute_url()
    assert file.status == File.Status.UPLOADED
    assert file.blob.read() == _jsonl(UNPREPARED)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("notes.md", b"x", "which is not supported"),
        ("data.csv", b"prompt,completion\na,b\na,b,c\n", "line 3: expected 2 fields"),
        ("empty.jsonl", b"", "The submitted file is empty."),
        ("bomb.xlsx", b"PK\x03\x04 not really", "not an XLSX (zip) archive"),
    ],
)
def test_upload_refuses_bad_files_with_a_message(
    browser_client: Client, owner: Persona, name: str, data: bytes, message: str
) -> None:
    response = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile(name, data)}
    )

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not File.objects.exists()


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def test_csv_upload_maps_columns_then_converts_to_jsonl(
    browser_client: Client, owner: Persona, media_dir: Path
) -> None:
    data = _csv(
        [
            ["id", "question", "answer"],
            ["1", "What is 2+2?", "4"],
            ["2", "Capital of France?", "Paris"],
        ]
    )

    response = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("qa.csv", data)}
    )
    mapping_url = response["Location"]
    page = browser_client.get(mapping_url)
    preview = browser_client.get(
        mapping_url,
        {"mode": "chat", "user": "question", "assistant": "answer", "system_text": "Be brief."},
        headers={"HX-Request": "true"},
    )
    done = browser_client.post(
        mapping_url, {"mode": "prompt_completion", "prompt": "question", "completion": "answer"}
    )

    assert page.status_code == 200
    assert b"Based on your file extension, your file is formatted as a CSV file" in page.content
    # The defaults guess question → prompt, answer → completion.
    assert b'<option value="question" selected>' in page.content
    assert b'id="mapping-preview"' in preview.content
    assert b"Be brief." in preview.content
    file = File.objects.get(organization=owner.org)
    assert done["Location"] == file.get_absolute_url()
    assert file.filename == "qa.jsonl"
    assert [json.loads(line) for line in file.blob.read().splitlines()] == [
        {"prompt": "What is 2+2?", "completion": "4"},
        {"prompt": "Capital of France?", "completion": "Paris"},
    ]
    # The staged upload is gone, and its token with it.
    assert not [p for p in (media_dir / "staging").rglob("*") if p.is_file()]
    assert browser_client.get(mapping_url).status_code == 404


def test_a_large_csv_is_read_from_the_temporary_upload_file(
    browser_client: Client, owner: Persona, settings: Any
) -> None:
    # Over FILE_UPLOAD_MAX_MEMORY_SIZE, Django spools the upload to disk.
    rows = [["prompt", "completion"]] + [
        [f"question {i} {'x' * 60}", f"a{i}"] for i in range(40_000)
    ]
    data = _csv(rows)
    assert len(data) > settings.FILE_UPLOAD_MAX_MEMORY_SIZE

    url = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("big.csv", data)}
    )["Location"]
    browser_client.post(
        url, {"mode": "prompt_completion", "prompt": "prompt", "completion": "completion"}
    )

    file = File.objects.get(organization=owner.org)
    assert len(file.blob.read().splitlines()) == 40_000


def test_xlsx_upload_converts_the_first_sheet(browser_client: Client, owner: Persona) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.active.append(["Prompt", "Completion"])
    workbook.active.append(["2+2?", 4])
    buffer = io.BytesIO()
    workbook.save(buffer)

    url = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("book.xlsx", buffer.getvalue())}
    )["Location"]
    browser_client.post(
        url, {"mode": "prompt_completion", "prompt": "Prompt", "completion": "Completion"}
    )

    file = File.objects.get(organization=owner.org)
    assert file.filename == "book.jsonl"
    assert json.loads(file.blob.read()) == {"prompt": "2+2?", "completion": "4"}


def test_mapping_needs_a_completion_column(browser_client: Client) -> None:
    data = _csv([["a", "b"], ["1", "2"]])
    url = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("t.csv", data)}
    )["Location"]

    response = browser_client.post(
        url, {"mode": "prompt_completion", "prompt": "a", "completion": ""}
    )

    assert response.status_code == 400
    assert b"Choose the completion column." in response.content
    assert not File.objects.exists()


def test_a_staged_upload_is_private_to_its_session(
    browser_client: Client, client: Client, member: Persona
) -> None:
    url = browser_client.post(
        reverse("datasets:upload"),
        {"file": SimpleUploadedFile("t.csv", _csv([["prompt", "completion"], ["a", "b"]]))},
    )["Location"]
    other = Client()
    other.force_login(member.user)  # same organization, another session

    assert other.get(url).status_code == 404


def test_an_upload_swept_before_its_mapping_says_it_expired(browser_client: Client) -> None:
    url = browser_client.post(
        reverse("datasets:upload"),
        {"file": SimpleUploadedFile("t.csv", _csv([["prompt", "completion"], ["a", "b"]]))},
    )["Location"]
    assert staging.staging_sweep(max_age_seconds=-1) == 1  # everything is stale

    response = browser_client.get(url, follow=True)

    assert response.redirect_chain[-1][0] == reverse("datasets:upload")
    assert "This upload has expired" in " ".join(_messages(response))
    assert browser_client.get(url).status_code == 404  # forgotten by the session too


# --- detail ---------------------------------------------------------------------------------

STATS = {
    "format": "prompt_completion",
    "task_type": "conditional generation",
    "examples": 6,
    "tokens": {"total": 60, "prompt": 30, "completion": 30},
    "duplicates": {"count": 0, "lines": []},
    "labels": {" yes": 4, " no": 2},
    "example_tokens": {
        "min": 8, "max": 12, "mean": 10.0, "p50": 10, "p90": 12, "p99": 12,
        "histogram": {"edges": [8, 10, 12, 14], "counts": [2, 3, 1]},
    },
}  # fmt: skip


def test_detail_shows_findings_preview_and_charts(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED, stats=STATS)

    response = browser_client.get(file.get_absolute_url())

    content = response.content.decode()
    assert response.status_code == 200
    assert "Add a suffix separator ` -&gt;` to all prompts" in content
    assert "Add a whitespace character to the beginning of the completion" in content
    assert 'data-testid="apply-fixes"' in content
    assert '<script id="chart-example_tokens" type="application/json">' in content
    assert "chart-labels" in content
    assert "answer number 0" in content
    file.refresh_from_db()
    assert file.findings["version"] == 1  # computed once, then stored


def test_detail_shows_stored_findings_without_analysing_the_file(
    browser_client: Client, owner: Persona
) -> None:
    # The validation worker stores the findings; the page only reads them.
    file = _file(owner, UNPREPARED, stats=STATS)
    processing.file_analyse(file_id=file.pk)  # as the validation worker does

    with mock.patch("datasets.processing.load_analysis", side_effect=AssertionError) as analyse:
        response = browser_client.get(file.get_absolute_url())

    analyse.assert_not_called()
    assert "Add a whitespace character to the beginning of the completion" in (
        response.content.decode()
    )


def test_detail_explains_why_there_are_no_findings(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED, stats=STATS, findings={"unavailable": "Too big, sorry."})

    response = browser_client.get(file.get_absolute_url())

    assert "Too big, sorry." in response.content.decode()
    assert 'data-testid="apply-fixes"' not in response.content.decode()


def test_detail_makes_whitespace_and_separators_visible(
    browser_client: Client, owner: Persona
) -> None:
    rows = [{"prompt": f"q{i}\n\n###\n\n", "completion": f" a{i} END"} for i in range(4)]
    file = _file(owner, rows)

    content = browser_client.get(file.get_absolute_url()).content.decode()

    assert '<span class="sep" title="separator (common prompt ending)">' in content
    assert '<span class="ws">\\n</span>' in content
    assert '<span class="ws">␣</span>a0' in content


def test_detail_of_chat_data_shows_a_conversation(browser_client: Client, owner: Persona) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]
        }
    ]
    file = _file(owner, rows, format=File.Format.CHAT)

    content = browser_client.get(file.get_absolute_url()).content.decode()

    assert 'class="msg assistant"' in content
    assert "Hello!" in content
    assert "no system message" in content


def test_detail_of_tool_call_data_shows_calls_tools_and_weights(
    browser_client: Client, owner: Persona
) -> None:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny.", "weight": 0},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Today's weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    }  # fmt: skip
    stats = {"examples": 1, "chat": {"assistant_messages": 3, "weight_0": 1, "examples_with_tools": 1, "tool_calls": 1}}  # fmt: skip
    file = _file(owner, [row], format=File.Format.CHAT, status=File.Status.PROCESSED, stats=stats)

    content = browser_client.get(file.get_absolute_url()).content.decode()

    assert "→ weather({\n  &quot;city&quot;: &quot;Paris&quot;\n}) [c1]" in content
    assert "weather(city)" in content and "Today&#x27;s weather" in content
    assert "answers c1" in content
    assert "weight 0 (not trained)" in content
    assert 'data-testid="stat-tool-calls">1<' in content
    assert 'data-testid="stat-not-trained">1<' in content


def test_detail_polls_until_validated(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED, status=File.Status.UPLOADED)
    File.objects.filter(pk=file.pk).update(findings={})  # uploaded: nothing analysed yet

    validating = browser_client.get(file.get_absolute_url(), headers={"HX-Request": "true"})
    File.objects.filter(pk=file.pk).update(status=File.Status.PROCESSED, stats=STATS)
    # Validated, not yet analysed: the default worker is on it, the page keeps asking.
    with mock.patch("datasets.tasks.analyse_file.delay"):
        analysing = browser_client.get(file.get_absolute_url(), headers={"HX-Request": "true"})
    assert b"hx-trigger" in analysing.content and b'data-testid="analysing"' in analysing.content
    processing.file_analyse(file_id=file.pk)
    done = browser_client.get(file.get_absolute_url(), headers={"HX-Request": "true"})

    assert b'id="file-body"' in validating.content
    assert b"hx-trigger" in validating.content
    assert b"hx-trigger" not in done.content
    assert b"<html" not in done.content


def test_detail_lists_validation_errors_with_line_numbers(
    browser_client: Client, owner: Persona
) -> None:
    errors = [
        {"line": 7, "message": "is not valid JSON at column 3: Expecting value", "param": None}
    ]
    file = _file(owner, UNPREPARED, status=File.Status.ERROR, errors=errors, error_count=3)

    content = browser_client.get(file.get_absolute_url()).content.decode()

    assert "Line 7 is not valid JSON at column 3" in content
    assert "and 2 more" in content


def test_detail_of_an_analysis_error_offers_no_fixes(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, [{"prompt": "same", "completion": f" {i}"} for i in range(4)])

    content = browser_client.get(file.get_absolute_url()).content.decode()
    response = browser_client.post(reverse("datasets:fix", args=[file.public_id]), follow=True)

    assert "All prompts are identical" in content
    assert 'data-testid="apply-fixes"' not in content
    assert "can&#x27;t be fixed automatically" in response.content.decode()
    assert File.objects.count() == 1


# --- apply fixes ----------------------------------------------------------------------------


def test_apply_fixes_creates_a_new_file_and_keeps_the_original(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, UNPREPARED)
    original = file.blob.read()
    analysis = prepare.analyze(UNPREPARED)
    accepted = [r.id for r in analysis.recommended if r.id != prepare.ADD_COMPLETION_ENDING]

    response = browser_client.post(
        reverse("datasets:fix", args=[file.public_id]), {"accept": accepted}
    )

    fixed = File.objects.exclude(pk=file.pk).get()
    assert response["Location"] == fixed.get_absolute_url()
    assert fixed.derived_from == file
    assert fixed.filename == "train_prepared.jsonl"
    assert fixed.status == File.Status.UPLOADED  # validation runs after commit
    rows = [json.loads(line) for line in fixed.blob.read().splitlines()]
    # The separator and the leading space were added, the common prefix removed, no ending.
    assert rows[0] == {"prompt": "Question 0 ->", "completion": " 0"}
    file.refresh_from_db()
    assert file.blob.read() == original


def test_apply_fixes_can_split_classification_data(browser_client: Client, owner: Persona) -> None:
    rows = [
        {"prompt": f"review {i} ->", "completion": " good" if i % 3 else " bad"} for i in range(20)
    ]
    file = _file(owner, rows, filename="reviews.jsonl")

    response = browser_client.post(
        reverse("datasets:fix", args=[file.public_id]), {"accept": [prepare.SPLIT]}, follow=True
    )

    names = sorted(File.objects.exclude(pk=file.pk).values_list("filename", flat=True))
    assert names == ["reviews_prepared_train.jsonl", "reviews_prepared_valid.jsonl"]
    # The browser offers the pre-filled create form, not the CLI's flags (issue #15, item 5).
    page = response.content.decode()
    assert "--classification_positive_class" not in page
    assert "Fine-tune with these files" in page


def test_apply_fixes_with_nothing_to_do_writes_nothing(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, UNPREPARED)

    response = browser_client.post(reverse("datasets:fix", args=[file.public_id]), follow=True)

    assert "Nothing to change" in response.content.decode()
    assert File.objects.count() == 1


def test_apply_fixes_rejects_unknown_remediations(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED)

    response = browser_client.post(
        reverse("datasets:fix", args=[file.public_id]), {"accept": ["drop_tables"]}, follow=True
    )

    assert "review the fixes" in response.content.decode()
    assert File.objects.count() == 1


# --- download, export, delete ---------------------------------------------------------------


def test_download_returns_the_stored_bytes(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED)

    response = browser_client.get(reverse("datasets:download", args=[file.public_id]))

    assert streamed(response) == _jsonl(UNPREPARED)
    assert 'filename="train.jsonl"' in response["Content-Disposition"]


def prepared_csv(client: Client, file: File) -> HttpResponseBase:
    """The CSV export as a user gets it: "Prepare CSV", the worker's build (run here), the
    download."""
    client.post(reverse("datasets:export_csv_prepare", args=[file.public_id]))
    for row in Export.objects.filter(file=file, kind=Export.Kind.CSV):
        model_processing.export_build(export_id=row.pk)
    return client.get(reverse("datasets:export_csv", args=[file.public_id]))


def test_csv_export_neutralises_formulas(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, [{"prompt": "=cmd|' /C calc'!A0", "completion": "-2+3"}])

    response = prepared_csv(browser_client, file)

    text = streamed(response).decode()
    assert text == "prompt,completion\r\n'=cmd|' /C calc'!A0,'-2+3\r\n"
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="train.csv"' in response["Content-Disposition"]


def test_csv_export_is_prepared_then_polled_then_downloaded(
    browser_client: Client, owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    file = _file(owner, UNPREPARED)
    prepare_url = reverse("datasets:export_csv_prepare", args=[file.public_id])
    status_url = reverse("datasets:export_csv_status", args=[file.public_id])
    htmx = {"HX-Request": "true"}

    page = browser_client.get(file.get_absolute_url()).content.decode()
    early = browser_client.get(reverse("datasets:export_csv", args=[file.public_id]))
    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        pending = browser_client.post(prepare_url, headers=htmx)
        twice = browser_client.post(prepare_url, headers=htmx)
    (row,) = Export.objects.filter(file=file)
    polled = browser_client.get(status_url, headers=htmx)
    model_processing.export_build(export_id=row.pk)
    ready = browser_client.get(status_url, headers=htmx)
    again = browser_client.get(file.get_absolute_url()).content.decode()

    assert 'data-testid="csv-prepare"' in page and "Prepare CSV" in page
    assert early.status_code == 302  # not built yet: back to the page, which offers it
    delay.assert_called_once_with(row.pk)  # two clicks, one build
    for fragment in (pending, twice, polled):
        assert b"Preparing the CSV" in fragment.content and b"hx-trigger" in fragment.content
    assert b'data-testid="csv-download"' in ready.content and b"hx-trigger" not in ready.content
    assert 'data-testid="csv-download"' in again  # reused: the page links the finished file
    with mock.patch("models_app.tasks.build_export.delay") as later:
        third = browser_client.post(prepare_url, headers=htmx)
    later.assert_not_called()  # a finished export is not built again
    assert b'data-testid="csv-download"' in third.content


def test_a_failed_csv_export_shows_why_and_can_be_tried_again(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, UNPREPARED)
    status_url = reverse("datasets:export_csv_status", args=[file.public_id])

    with mock.patch("datasets.readers.csv_bytes", side_effect=ValueError("no space left")):
        prepared_csv(browser_client, file)
    failed = browser_client.get(status_url, headers={"HX-Request": "true"}).content.decode()
    retried = prepared_csv(browser_client, file)

    assert "no space left" in failed and "Try again: Prepare CSV" in failed
    assert streamed(retried).startswith(b"prompt,completion")


def test_a_csv_export_whose_worker_died_can_be_started_again(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, UNPREPARED)
    Export.objects.create(
        file=file,
        kind=Export.Kind.CSV,
        status=Export.Status.RUNNING,
        attempts=1,
        lease_until=timezone.now() - timedelta(seconds=1),
        updated_at=timezone.now(),
    )  # what a worker killed mid-export leaves
    status_url = reverse("datasets:export_csv_status", args=[file.public_id])

    lost = browser_client.get(status_url, headers={"HX-Request": "true"}).content.decode()
    response = prepared_csv(browser_client, file)

    assert "The worker preparing it was lost" in lost and "Try again" in lost
    assert streamed(response).count(b"\r\n") == 1 + len(UNPREPARED)
    assert Export.objects.get(file=file).attempts == 1  # restarted from scratch


def test_deleting_a_file_removes_its_csv_export(
    browser_client: Client, owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    file = _file(owner, UNPREPARED)
    streamed(prepared_csv(browser_client, file))
    built = model_files.export_path(Export.Kind.CSV, file)
    assert built.is_file()

    with django_capture_on_commit_callbacks(execute=True):
        browser_client.post(reverse("datasets:delete", args=[file.public_id]))

    assert not built.parent.exists()
    assert not Export.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_builds_the_csv(client: Client, owner: Persona, celery_worker: Any) -> None:
    file = _file(owner, UNPREPARED)
    client.force_login(owner.user)
    htmx = {"HX-Request": "true"}
    status_url = reverse("datasets:export_csv_status", args=[file.public_id])

    client.post(reverse("datasets:export_csv_prepare", args=[file.public_id]), headers=htmx)
    wait_for(
        lambda: b"csv-download" in client.get(status_url, headers=htmx).content,
        90,
        what="the worker's CSV",
    )
    text = streamed(client.get(reverse("datasets:export_csv", args=[file.public_id]))).decode()

    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["prompt", "completion"]] + [[r["prompt"], r["completion"]] for r in UNPREPARED]


def test_delete_is_refused_while_an_unfinished_job_uses_the_file(
    browser_client: Client, owner: Persona
) -> None:
    file = _file(owner, UNPREPARED)
    FineTuneJob.objects.create(
        public_id="ft-inuse",
        api=FineTuneJob.Api.LEGACY,
        organization=owner.org,
        model="tiny-llama",
        base_model=BaseModelFactory.create(),
        training_file=file,
        seed=1,
        status=FineTuneJob.Status.RUNNING,
    )

    response = browser_client.post(reverse("datasets:delete", args=[file.public_id]), follow=True)

    assert response.status_code == 200
    assert "was not deleted" in response.content.decode()
    assert "ft-inuse" in response.content.decode()
    assert File.objects.filter(pk=file.pk).exists()


@pytest.mark.parametrize("status", FineTuneJob.FINISHED)
def test_delete_of_a_file_finished_jobs_used_succeeds_and_the_job_keeps_it(
    browser_client: Client, owner: Persona, status: str
) -> None:
    file = _file(owner, UNPREPARED)
    job = FineTuneJob.objects.create(
        public_id="ft-done",
        api=FineTuneJob.Api.LEGACY,
        organization=owner.org,
        model="tiny-llama",
        base_model=BaseModelFactory.create(),
        training_file=file,
        seed=1,
        status=status,
    )

    response = browser_client.post(reverse("datasets:delete", args=[file.public_id]), follow=True)

    assert response.redirect_chain[-1][0] == reverse("datasets:list")
    assert f"Deleted {file.filename}." in _messages(response)
    assert file.public_id not in response.content.decode()  # gone from the list
    assert browser_client.get(file.get_absolute_url()).status_code == 404
    job.refresh_from_db()
    assert job.training_file.public_id == file.public_id
    assert job.training_file.status == File.Status.DELETED


def test_delete_removes_the_file(browser_client: Client, owner: Persona) -> None:
    file = _file(owner, UNPREPARED)

    response = browser_client.post(reverse("datasets:delete", args=[file.public_id]))

    assert response["Location"] == reverse("datasets:list")
    assert not File.objects.filter(pk=file.pk).exists()


def test_a_csv_without_a_header_is_said_so_and_its_first_row_kept_on_request(
    browser_client: Client, owner: Persona
) -> None:
    data = _csv([["What is two plus two?", "4"], ["Capital of France?", "Paris"]])
    url = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("qa.csv", data)}
    )["Location"]

    page = browser_client.get(url).content.decode()
    as_data = browser_client.get(url, {"first_row_is_data": "1"}).content.decode()
    done = browser_client.post(
        url,
        {
            "first_row_is_data": "1",
            "mode": "prompt_completion",
            "prompt": "column 1",
            "completion": "column 2",
        },
    )

    assert "looks like data rather than column names" in page
    assert "First row is data" in page
    assert '<option value="column 1"' in as_data
    assert done.status_code == 302
    file = File.objects.get(organization=owner.org)
    assert [json.loads(line)["prompt"] for line in file.blob.read().splitlines()] == [
        "What is two plus two?",
        "Capital of France?",
    ]


def test_csv_upload_maps_prompt_chosen_rejected_to_preference_pairs(
    browser_client: Client, owner: Persona
) -> None:
    data = _csv(
        [
            ["prompt", "chosen", "rejected"],
            ["Capital of France?", "Paris.", "Lyon."],
            ["2+2?", "4", "5"],
        ]
    )
    response = browser_client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("prefs.csv", data)}
    )
    mapping_url = response["Location"]
    page = browser_client.get(mapping_url)
    # The columns are recognised: preference mode, with its three columns, is the default.
    assert b'value="preference" id="id_mode_2" checked' in page.content or (
        b'value="preference"' in page.content and b"Preference pairs (DPO)" in page.content
    )
    missing = browser_client.post(mapping_url, {"mode": "preference", "prompt": "prompt"})
    assert missing.status_code == 400 and b"Choose the chosen column." in missing.content
    done = browser_client.post(
        mapping_url,
        {"mode": "preference", "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    )
    file = File.objects.get(organization=owner.org)
    assert done["Location"] == file.get_absolute_url()
    assert [json.loads(line) for line in file.blob.read().splitlines()][0] == {
        "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
        "preferred_output": [{"role": "assistant", "content": "Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
    }


def test_detail_of_preference_data_shows_both_outputs_side_by_side(
    browser_client: Client, owner: Persona
) -> None:
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
            "preferred_output": [{"role": "assistant", "content": "Paris."}],
            "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
        }
    ]
    file = _file(owner, rows, format=File.Format.PREFERENCE)

    content = browser_client.get(file.get_absolute_url()).content.decode()

    assert 'data-testid="pair"' in content
    preferred = content.index('data-testid="preferred"')
    other = content.index('data-testid="non-preferred"')
    assert preferred < content.index("Paris.") < other < content.index("Lyon.")
    assert "Capital of France?" in content
