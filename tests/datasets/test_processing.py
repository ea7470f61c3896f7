"""Validation: streaming, line-numbered errors, statistics (datasets.validation), and the
worker side (datasets.processing): recording the outcome, idempotency, the findings."""

from __future__ import annotations

import io
import json
from typing import Any
from unittest import mock

import pytest

from datasets import processing, validation
from datasets.models import File
from datasets.tokens import TokenCounter
from datasets.validation import analyse_stream, iter_lines
from tests.conftest import Persona
from tests.datasets.conftest import jsonl, validate


def analyse(data: bytes, counter: TokenCounter | None = None, **kwargs: Any) -> Any:
    options = {"context_length": 2048, "max_errors": 100} | kwargs
    return analyse_stream(io.BytesIO(data).read, counter=counter, **options)


def rows(n: int, completion: str = " yes") -> list[dict[str, str]]:
    return [{"prompt": f"Message number {i} ->", "completion": completion} for i in range(n)]


def make_file(persona: Persona, data: bytes, **kwargs: Any) -> File:
    from datasets import services

    with mock.patch("datasets.tasks.validate_file.delay"):
        return services.file_create(
            organization=persona.org,
            uploaded_by=persona.user,
            filename="train.jsonl",
            purpose="fine-tune",
            content=data,
            **kwargs,
        )


# --- reading lines -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 1 << 20])
def test_iter_lines_splits_the_same_whatever_the_chunk_size(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "CHUNK_BYTES", chunk)
    data = b'{"a": 1}\n\nsecond line\r\nno newline at the end'

    lines = list(iter_lines(io.BytesIO(data).read, max_line_bytes=1000))

    assert lines == [b'{"a": 1}', b"", b"second line\r", b"no newline at the end"]


@pytest.mark.parametrize("chunk", [3, 7, 1 << 20])
def test_iter_lines_skips_over_long_lines_without_holding_them(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "CHUNK_BYTES", chunk)
    data = b"short\n" + b"x" * 50 + b"\nafter\n" + b"y" * 30

    lines = list(iter_lines(io.BytesIO(data).read, max_line_bytes=10))

    assert lines == [b"short", None, b"after", None]


def test_a_50_mb_line_is_reported_without_being_read_into_memory() -> None:
    # A stream that hands out a 50 MB line in chunks and remembers the biggest read.
    class Stream(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 50 * 2**20
            self.tail = b'\n{"prompt": "after", "completion": " x"}\n'
            self.biggest = 0

        def read(self, size: int = -1) -> bytes:
            self.biggest = max(self.biggest, size)
            if self.left:
                n = min(size, self.left)
                self.left -= n
                return b"a" * n
            out, self.tail = self.tail[:size], self.tail[size:]
            return out

    stream = Stream()
    report = analyse_stream(
        stream.read, counter=None, context_length=2048, max_errors=10, max_line_bytes=4 << 20
    )

    assert report.errors == [
        {
            "line": 1,
            "message": "is longer than 4,194,304 bytes; no training example can be that long",
            "param": None,
        }
    ]
    assert report.stats["examples"] == 1
    assert stream.biggest <= validation.CHUNK_BYTES


# --- errors ------------------------------------------------------------------------------------


def test_errors_keep_the_first_n_with_line_numbers_and_count_all() -> None:
    data = jsonl(rows(2)) + b"not json\n" * 250

    report = analyse(data, max_errors=100)

    assert report.error_count == 250
    assert len(report.errors) == 100
    assert [e["line"] for e in report.errors[:3]] == [3, 4, 5]
    assert report.summary().startswith("250 errors; line 3: is not valid JSON at column 1")


def test_one_error_per_line_and_good_lines_still_count() -> None:
    data = jsonl(rows(3) + [{"prompt": 1, "completion": 2}] + rows(2))

    report = analyse(data)

    assert report.error_count == 1
    assert report.errors[0] == {
        "line": 4,
        "message": "`prompt` must be a string, got number",
        "param": "prompt",
    }
    assert report.stats["examples"] == 5


def test_format_is_detected_from_the_first_row() -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}

    assert analyse(jsonl([chat])).format == "chat"
    assert analyse(jsonl(rows(1))).format == "prompt_completion"


def test_crlf_line_endings_are_fine() -> None:
    data = jsonl(rows(3)).replace(b"\n", b"\r\n")

    report = analyse(data)

    assert report.ok
    assert report.stats["examples"] == 3


def test_an_empty_file_is_an_error() -> None:
    report = analyse(b"")

    assert report.errors == [{"line": None, "message": "The file is empty.", "param": "file"}]


def test_chat_tool_calls_and_text_parts_are_accepted() -> None:
    row = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny.", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "w"}}],
    }

    assert analyse(jsonl([row])).ok


# --- statistics --------------------------------------------------------------------------------


def test_stats_count_every_token_with_the_default_tokenizer(token_counter: TokenCounter) -> None:
    data = rows(300) + [{"prompt": "", "completion": " a longer completion, with words"}]
    tokenizer = token_counter.tokenizer
    expected_prompt = sum(len(tokenizer.encode(r["prompt"]).ids) for r in data)
    expected_completion = sum(len(tokenizer.encode(r["completion"]).ids) for r in data)

    report = analyse(jsonl(data), counter=token_counter)

    assert report.stats["tokens"] == {
        "total": expected_prompt + expected_completion,
        "prompt": expected_prompt,
        "completion": expected_completion,
    }
    assert report.stats["tokenizer"] == "SmolLM2-135M-Instruct"
    histogram = report.stats["prompt_tokens"]["histogram"]
    assert sum(histogram["counts"]) == 301
    assert len(histogram["edges"]) == len(histogram["counts"]) + 1


def test_chat_tokens_include_the_template(token_counter: TokenCounter) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    }
    rendered = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in row["messages"]
    )
    expected = len(token_counter.tokenizer.encode(rendered, add_special_tokens=False).ids)

    report = analyse(jsonl([row]), counter=token_counter)

    assert report.stats["tokens"]["total"] == expected
    assert report.stats["tokens"]["completion"] == len(
        token_counter.tokenizer.encode("Paris.", add_special_tokens=False).ids
    )
    assert report.stats["roles"] == {"system": 1, "user": 1, "assistant": 1}


def test_chat_tokens_with_tools_are_the_rendered_conversations(token_counter: TokenCounter) -> None:
    from engine import chat_format
    from engine.tiny import SMOLLM2_TEMPLATE

    call = {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"q": 1}'}}
    row = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny.", "weight": 0},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "w"}}],
    }
    # What the trainer renders for the default model (its template is SmolLM2's).
    rendered = chat_format.render_chat(
        chat_format.JinjaRenderer(SMOLLM2_TEMPLATE), chat_format.normalise_example(row)
    )
    encode = token_counter.tokenizer.encode

    def count(text: str) -> int:
        return len(encode(text, add_special_tokens=False).ids)

    trained = sum(count(rendered.text[a:b]) for a, b, flag in rendered.spans if flag)

    report = analyse(jsonl([row]), counter=token_counter)

    assert report.stats["tokens"]["total"] == count(rendered.text)
    assert report.stats["tokens"]["completion"] == trained
    assert "<tools>" in rendered.text
    assert report.stats["chat"] == {
        "assistant_messages": 3,
        "weight_0": 1,
        "examples_with_tools": 1,
        "tool_calls": 1,
    }


def test_duplicate_keys_are_reported_with_the_line_wherever_they_are() -> None:
    good = '{"prompt": "a \\"quoted\\" text", "completion": " b"}'
    lines = [
        good,
        '{"prompt": "a", "completion": " b", "completion": " c"}',
        '{"prompt": "\\u0022", "completion": " b"}',  # a quote spelled \u0022: no duplicate
        '{"\\u0070rompt": "a", "prompt": "b", "completion": " c"}',  # the same key, escaped
    ]

    report = analyse(("\n".join(lines) + "\n").encode())

    assert [(e["line"], e["param"]) for e in report.errors] == [(2, "completion"), (4, "prompt")]
    assert "twice" in report.errors[0]["message"]
    assert report.stats["examples"] == 2


def test_duplicates_and_labels_of_classification_data(token_counter: TokenCounter) -> None:
    data = rows(30, " yes") + rows(10, " no") + rows(2, " yes")  # rows 41-42 repeat 1-2

    stats = analyse(jsonl(data), counter=token_counter).stats

    assert stats["duplicates"] == {"count": 2, "lines": [41, 42]}
    assert stats["task_type"] == "classification"
    assert stats["labels"] == {" yes": 32, " no": 10}


def test_generation_data_has_no_label_distribution() -> None:
    data = [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(20)]

    stats = analyse(jsonl(data)).stats

    assert stats["task_type"] == "conditional generation"
    assert stats["labels"] is None


def test_rows_over_the_context_length_are_counted_with_their_lines(
    token_counter: TokenCounter,
) -> None:
    data = rows(3) + [{"prompt": "word " * 60, "completion": " x"}] + rows(1)

    stats = analyse(jsonl(data), counter=token_counter, context_length=50).stats

    assert stats["over_context"] == {"count": 1, "lines": [4]}
    assert stats["context_length"] == 50


def test_big_files_keep_compact_histograms_not_row_lists(token_counter: TokenCounter) -> None:
    data = [{"prompt": " x" * (i % 97), "completion": " y"} for i in range(20_000)]
    longest = len(token_counter.tokenizer.encode(" x" * 96, add_special_tokens=False).ids)

    stats = analyse(jsonl(data), counter=token_counter).stats

    assert len(json.dumps(stats)) < 5000
    assert stats["prompt_tokens"]["max"] == longest
    assert stats["examples"] == 20_000


# --- the task's use case -----------------------------------------------------------------------


def test_file_validate_marks_a_good_file_processed(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(12)))

    file = validate(file)

    assert file.status == File.Status.PROCESSED
    assert file.is_usable_for_training
    assert file.format == File.Format.PROMPT_COMPLETION
    assert file.stats["examples"] == 12
    assert file.stats["tokens"]["total"] > 0
    assert file.status_details.startswith("12 examples,")


def test_file_validate_marks_a_bad_file_error_with_a_readable_summary(owner: Persona) -> None:
    data = jsonl(rows(6)) + b'{"prompt": "x" "completion": " y"}\n' + jsonl(rows(2))
    file = make_file(owner, data)

    file = validate(file)

    assert file.status == File.Status.ERROR
    assert not file.is_usable_for_training
    assert file.error_count == 1
    assert file.errors[0]["line"] == 7
    assert file.status_details == (
        "1 error; line 7: is not valid JSON at column 16: Expecting ',' delimiter"
    )


@pytest.mark.parametrize("status", [File.Status.PROCESSED, File.Status.ERROR])
def test_file_validate_is_a_noop_unless_uploaded(owner: Persona, status: str) -> None:
    # A duplicate or redelivered message must not validate (or overwrite) twice.
    file = make_file(owner, jsonl(rows(2)))
    File.objects.filter(pk=file.pk).update(status=status, status_details="kept")

    with mock.patch("datasets.processing.analyse_stream") as analyse_mock:
        processing.file_validate(file_id=file.pk)

    analyse_mock.assert_not_called()
    file.refresh_from_db()
    assert (file.status, file.status_details) == (status, "kept")


def test_file_validate_of_a_missing_blob_ends_in_error(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(2)))
    assert file.blob.name  # stored: it has a name
    file.blob.storage.delete(file.blob.name)

    file = validate(file)

    assert file.status == File.Status.ERROR
    assert file.status_details == "The stored file is missing."


def test_file_validate_without_a_tokenizer_still_finishes(owner: Persona) -> None:
    # A broken model cache must not leave clients polling forever.
    file = make_file(owner, jsonl(rows(3)))

    with mock.patch("datasets.tokens.get_counter", side_effect=RuntimeError("no model")):
        file = validate(file)

    assert file.status == File.Status.PROCESSED
    assert file.stats["tokens"] is None
    assert file.stats["examples"] == 3


def test_the_validate_task_calls_the_worker_side_use_case() -> None:
    from datasets import tasks

    with mock.patch("datasets.processing.file_validate") as use_case:
        tasks.validate_file(42)

    use_case.assert_called_once_with(file_id=42)
    assert tasks.validate_file.name == "datasets.validate_file"


def test_validation_goes_to_the_default_queue_not_the_training_one() -> None:
    from config.celery import app

    route = app.amqp.router.route({}, "datasets.validate_file", args=(1,), kwargs={})

    assert route["queue"].name == "default"


# --- the findings, stored by the worker after validating ------------------------------------------


def test_file_validate_stores_the_prepare_data_findings(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(12, completion="yes")))

    file = validate(file)

    assert file.findings["examples"] == 12
    ids = [f["id"] for f in file.findings["findings"]]
    assert "completion_leading_space" in ids


def test_a_file_too_large_to_analyse_gets_a_note_instead(
    owner: Persona, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing, "ANALYZE_MAX_BYTES", 10)
    file = make_file(owner, jsonl(rows(3)))

    file = validate(file)

    assert file.status == File.Status.PROCESSED
    assert "too large to analyse here" in file.findings["unavailable"]
    assert "manage.py prepare_data" in file.findings["unavailable"]


def test_a_failing_analysis_neither_fails_validation_nor_is_retried(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(3)))

    with mock.patch("datasets.prepare.analyze", side_effect=KeyError("bug")):
        file = validate(file)

    assert file.status == File.Status.PROCESSED
    assert file.findings == {"unavailable": "The analysis failed unexpectedly."}


def test_file_analyse_is_idempotent_and_skips_unvalidated_files(owner: Persona) -> None:
    file = make_file(owner, jsonl(rows(3)))

    with mock.patch("datasets.processing.load_analysis") as analyse:
        processing.file_analyse(file_id=file.pk)  # still `uploaded`: nothing to analyse
    analyse.assert_not_called()

    file = validate(file)
    stored = file.findings
    with mock.patch("datasets.processing.load_analysis") as analyse:
        processing.file_analyse(file_id=file.pk)  # already stored
    analyse.assert_not_called()
    file.refresh_from_db()
    assert file.findings == stored


def test_validation_spells_the_file_formats_as_the_model_does() -> None:
    # datasets.validation can't import the models (it must start without Django).
    assert validation.PROMPT_COMPLETION == File.Format.PROMPT_COMPLETION
    assert validation.CHAT == File.Format.CHAT


# --- python -m datasets.validation ---------------------------------------------------------------


def test_the_command_line_reports_like_the_worker(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(rows(5)) + b"not json\n")

    code = validation.main([str(path), "--json"])

    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["errors"] == [
        {"line": 6, "message": "is not valid JSON at column 1: Expecting value", "param": None}
    ]
    assert out["stats"]["examples"] == 5
    assert out["stats"]["tokens"]["total"] > 0
    assert set(out["seconds"]) == {"tokenizer", "validation"}


def test_the_command_line_prints_a_summary_and_exits_0_for_a_good_file(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(rows(4)))

    code = validation.main([str(path), "--no-tokens"])

    assert code == 0
    assert capsys.readouterr().out == f"{path}: 4 examples.\n"


def test_the_command_line_starts_without_django_setup(tmp_path: Any) -> None:
    # What makes it start fast: no app registry, no models, no Celery app, no database.
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(rows(3)))
    probe = (
        "import sys; from datasets import validation; code = validation.main(sys.argv[1:]); "
        "from django.apps import apps; "
        "print(apps.ready, 'datasets.models' in sys.modules, 'celery' in sys.modules, code)"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path), "--no-tokens"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False False False 0"
