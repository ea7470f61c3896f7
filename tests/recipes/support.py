"""What the recipe tests share: the recipes, their documented commands, a scratch checkout."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from scripts.docs_check import extract_commands, manage_command, shell

ROOT = Path(settings.BASE_DIR)
EXAMPLES = ROOT / "examples"
RECIPES_DOCS = ROOT / "docs" / "recipes"
OPENAI_028_BIN = ROOT / ".venv-openai028" / "bin"


@dataclass(frozen=True)
class Recipe:
    name: str
    data: str  # the committed data file, in examples/<name>/
    train: str  # the file the recipe trains on (prepare_data's output, or the data itself)
    valid: str | None = None
    chat: bool = False

    def page(self) -> str:
        return (RECIPES_DOCS / f"{self.name}.md").read_text(encoding="utf-8")


RECIPES = {
    r.name: r
    for r in [
        Recipe(
            "spam-classification",
            "spam.jsonl",
            "spam_prepared_train.jsonl",
            "spam_prepared_valid.jsonl",
        ),
        Recipe(
            "sentiment", "tweets.csv", "tweets_prepared_train.jsonl", "tweets_prepared_valid.jsonl"
        ),
        Recipe(
            "email-triage",
            "emails.jsonl",
            "emails_prepared_train.jsonl",
            "emails_prepared_valid.jsonl",
        ),
        Recipe("ad-copy", "products.jsonl", "products.jsonl"),
        Recipe("entity-extraction", "articles.jsonl", "articles.jsonl"),
        Recipe("support-chatbot", "conversations.jsonl", "conversations.jsonl", chat=True),
        Recipe("product-descriptions", "attributes.csv", "attributes_prepared.jsonl"),
    ]
}


def recipe_command(name: str, prefix: str) -> str:
    """The one command of the recipe page that starts with `prefix`, as the page shows it."""
    found = [
        c.text
        for c in extract_commands(RECIPES_DOCS / f"{name}.md", ROOT)
        if c.text.startswith(prefix)
    ]
    assert len(found) == 1, f"docs/recipes/{name}.md: {len(found)} commands start with {prefix!r}"
    return found[0]


def scratch_checkout(tmp: Path) -> Path:
    """A directory laid out like the repository root, holding a copy of examples/ (so commands
    that write next to their input don't touch the checkout)."""
    shutil.copytree(EXAMPLES, tmp / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}


def prepare(name: str, work: Path) -> str:
    """Run the recipe's own `prepare_data` command in `work`; return what it printed."""
    command = recipe_command(name, ".venv/bin/python manage.py prepare_data")
    return shell(manage_command(command, ROOT), cwd=work, env=base_env(), timeout=300)


def with_arg(command: str, flag: str, value: str) -> str:
    """Replace the value of `flag` (quoted or not) in a documented command, e.g. the model
    placeholder `-m 'SmolLM2-135M-Instruct:ft-demo:spam-…'`."""
    new, n = re.subn(
        rf"(?<=\s){re.escape(flag)} ('[^']*'|\"[^\"]*\"|\S+)",
        lambda _: f"{flag} '{value}'",
        command,
    )
    assert n == 1, f"{flag} appears {n} times in {command!r}"
    return new


def openai_028(command: str, *, server: str, key: str, cwd: Path, timeout: float = 300) -> str:
    """A documented `openai api …` command with the 0.28 CLI, pointed at `server` the way the
    recipes' "Before you start" section says."""
    env = base_env()
    env.update(
        PATH=f"{OPENAI_028_BIN}{os.pathsep}{env.get('PATH', '')}",
        OPENAI_API_BASE=f"{server}/v1",
        OPENAI_API_KEY=key,
    )
    return shell(command, cwd=cwd, env=env, timeout=timeout)
