"""`manage.py prepare_data` behaviour beyond the recorded transcripts."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from django.core.management import call_command


def _write(path: Path, rows: Sequence[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options: dict[str, object] = {"stdout": out, "stderr": err}
    if stdin is None:
        options["quiet"] = True
    else:
        options["stdin"] = io.StringIO(stdin)
    try:
        call_command("prepare_data", *args, **options)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


UNPREPARED = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]


def test_taken_output_names_get_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # globbing *_prepared* only: other files may appear here
    _write(tmp_path / "data.jsonl", UNPREPARED)

    _run("-f", "data.jsonl")
    _run("-f", "data.jsonl")
    code, out, _ = _run("-f", "data.jsonl")

    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*_prepared*")) == [
        "data_prepared (1).jsonl",
        "data_prepared (2).jsonl",
        "data_prepared.jsonl",
    ]
    assert "Wrote modified file to `data_prepared (2).jsonl`" in out


def test_declining_to_proceed_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "data.jsonl", UNPREPARED)

    # Enter (yes) for every fix, then "n" at "Proceed [Y/n]".
    code, out, _ = _run("-f", "data.jsonl", stdin="\n\n\nn\n")

    assert code == 0
    assert out.endswith("Aborting... did not write the file\n")
    assert not list(tmp_path.glob("*_prepared*"))


def test_end_of_input_takes_the_default_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "data.jsonl", UNPREPARED)

    code, _, _ = _run("-f", "data.jsonl", stdin="")

    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "data_prepared.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "q0 ->", "completion": " a0\n"}


def test_chat_data_is_checked_and_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    _write(tmp_path / "chat.jsonl", [good, bad, good])

    code, out, _ = _run("-f", "chat.jsonl")

    assert code == 0
    assert "1 examples have `example_missing_assistant_message` errors" in out
    assert "- [Necessary] Remove 1 examples with format errors" in out
    assert "- [Recommended] Remove 1 duplicate rows [Y/n]: Y" in out
    assert 'openai api fine_tuning.job.create -t "chat_prepared.jsonl" -m ' in out
    written = (tmp_path / "chat_prepared.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in written] == [good]


def test_a_broken_file_exits_1_with_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{oops\n')

    code, out, err = _run("-f", "bad.jsonl")

    assert code == 1
    assert out == "Analyzing...\n"
    assert err.startswith("\n\nERROR in read_any_format validator: Your file `bad.jsonl` does not")
    assert "(line 2: " in err
