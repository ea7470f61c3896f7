"""scripts/docs_check.py: every shell command in README.md and docs/ is run, here or by a test."""

from __future__ import annotations

import importlib
import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.core.management import call_command

from scripts import docs_check
from scripts.docs_check import Context, all_commands, extract_commands, plan, run_all
from tests.conftest import Persona
from tests.workers import subprocess_env

ROOT = docs_check.ROOT


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def a_repo(tmp_path: Path, *, docs: str, registry: str = "", tests: str = "") -> Path:
    write(tmp_path / "README.md", "# Project\n")
    write(tmp_path / "docs" / "guide.md", docs)
    write(tmp_path / "docs" / "commands.toml", registry)
    write(tmp_path / "tests" / "test_it.py", tests)
    return tmp_path


# --- extraction ------------------------------------------------------------------------------


def test_commands_come_from_shell_blocks_only_with_continuations_joined(tmp_path: Path) -> None:
    root = a_repo(
        tmp_path,
        docs="""
        ```bash
        # a comment line
        make thing   # a trailing comment
        openai api fine_tunes.create -t a.jsonl \\
          -m ada
        echo "a # inside quotes"
        ```

        ```python
        print("not a shell block")
        ```

        ```console
        $ make other
        output line, not a command
        ```

        ```
        make untagged    (not a shell block either)
        ```
        """,
    )

    texts = [c.text for c in extract_commands(root / "docs" / "guide.md", root)]

    assert texts == [
        "make thing",
        "openai api fine_tunes.create -t a.jsonl -m ada",
        'echo "a # inside quotes"',
        "make other",
    ]


def test_a_heredoc_is_one_command_with_its_body(tmp_path: Path) -> None:
    root = a_repo(
        tmp_path,
        docs="""
        ```sh
        python - <<'PY'
        import os  # not a shell comment
        print(os.getcwd())
        PY
        make after
        ```
        """,
    )

    commands = extract_commands(root / "docs" / "guide.md", root)

    assert [c.text for c in commands] == [
        "python - <<'PY'\nimport os  # not a shell comment\nprint(os.getcwd())\nPY",
        "make after",
    ]
    assert [c.line for c in commands] == [2, 6]


def test_ansi_c_quotes_keep_their_escaped_quote() -> None:
    assert docs_check.strip_comment("echo $'it\\'s # here' # gone") == "echo $'it\\'s # here'"


# --- the registry ----------------------------------------------------------------------------

REGISTRY = """
[[command]]
match = 'make thing'
tests = ["tests/test_it.py::test_thing"]
needles = ["make", "thing|stuff"]
how = "runs it"
"""
THING_TEST = """
import subprocess


def test_thing():
    subprocess.run(["make", "stuff"], check=True)
"""


def test_an_unregistered_command_is_a_problem(tmp_path: Path) -> None:
    root = a_repo(tmp_path, docs="```bash\nmake unknown\n```\n")

    problems = plan(root).problems

    assert len(problems) == 1
    assert "docs/guide.md:2: make unknown" in problems[0]
    assert "neither run by scripts/docs_check.py nor listed in docs/commands.toml" in problems[0]


def test_a_registered_command_needs_its_test_to_exist_and_run_it(tmp_path: Path) -> None:
    docs = "```bash\nmake thing\n```\n"
    ok = a_repo(tmp_path / "ok", docs=docs, registry=REGISTRY, tests=THING_TEST)
    missing = a_repo(tmp_path / "missing", docs=docs, registry=REGISTRY, tests="")
    unrelated = a_repo(
        tmp_path / "unrelated", docs=docs, registry=REGISTRY, tests="def test_thing():\n    pass\n"
    )

    assert plan(ok).problems == []
    assert [e.tests for _, e in plan(ok).tested] == [["tests/test_it.py::test_thing"]]
    assert plan(missing).problems == [
        "docs/commands.toml: 'make thing': no such test tests/test_it.py::test_thing"
    ]
    assert plan(unrelated).problems == [
        "docs/commands.toml: 'make thing': tests/test_it.py::test_thing does not contain 'make'"
    ]


def test_an_entry_that_matches_nothing_is_stale(tmp_path: Path) -> None:
    root = a_repo(tmp_path, docs="No commands here.\n", registry=REGISTRY, tests=THING_TEST)

    assert plan(root).problems == ["docs/commands.toml: 'make thing' matches no documented command"]


def test_a_class_method_and_a_parametrized_id_are_found(tmp_path: Path) -> None:
    registry = REGISTRY.replace("test_it.py::test_thing", "test_it.py::TestThing::test_it[a-b]")
    tests = "class TestThing:\n    def test_it(self):\n        'make thing'\n"
    root = a_repo(tmp_path, docs="```bash\nmake thing\n```\n", registry=registry, tests=tests)

    assert plan(root).problems == []


def test_a_broken_relative_link_is_a_problem(tmp_path: Path) -> None:
    root = a_repo(
        tmp_path,
        docs="""
        See [the README](../README.md), [a page](https://example.com/x), [here](#top),
        [the example](../examples/gone.jsonl) and [a section](../README.md#run-it).

        ```bash
        echo "[not a link](nowhere.md)"
        ```
        """,
        registry='[[command]]\nmatch = \'echo .*\'\ntests = ["tests/test_it.py"]\nhow = "x"\n',
        tests="# echo\n",
    )

    assert plan(root).problems == ["docs/guide.md:2: broken link ../examples/gone.jsonl"]


# --- the real docs -----------------------------------------------------------------------------


def test_every_documented_command_is_run_or_registered() -> None:
    work = plan(ROOT)

    assert work.problems == [], "\n".join(work.problems)
    assert work.run and work.tested
    files = {c.path for c in all_commands(ROOT)}
    assert {"README.md", "docs/user-guide.md", "docs/admin-guide.md"} <= files
    assert {f"docs/recipes/{name}.md" for name in ("spam-classification", "sentiment")} <= files


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_commands_the_check_runs_succeed(
    live_server: Any, owner: Persona, tmp_path: Path, inference: str
) -> None:
    # The admin guide's create_api_key acts in the demo organization bootstrap creates, and
    # the README's SDK snippet names the embedded base model, whose row an earlier
    # transactional test may have flushed: put back what the data migration writes.
    call_command("bootstrap", stdout=io.StringIO())
    importlib.import_module("models_app.migrations.0002_default_base_model").add_default(
        django_apps, None
    )
    ctx = Context(
        root=ROOT,
        tmp=tmp_path,
        server=live_server.url,
        key=owner.key,
        database_env={k: subprocess_env()[k] for k in ("DATABASE_URL", "DATA_DIR")},
    )

    failures = run_all(plan(ROOT), ctx)

    assert failures == [], "\n\n".join(failures)
