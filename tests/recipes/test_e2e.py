"""Every recipe end to end, for format only: its own commands against a live server.

A tiny random model (`tiny-llama`) stands in for SmolLM2-135M-Instruct, and jobs train one
epoch, so these tests check that each documented command and script runs and that the answers
have the documented shape; the recipes' "what to expect" figures come from real runs. The
commands are read from docs/recipes/*.md, so a page and its test can't drift apart; the only
changes are the model (`-m`), the placeholder ids, and `--n_epochs 1 --batch_size 8`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.models import FineTuneJob
from tests.conftest import Persona
from tests.recipes.support import (
    RECIPES,
    base_env,
    openai_028,
    prepare,
    recipe_command,
    scratch_checkout,
    with_arg,
)
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TINY = "tiny-llama"
FAST = " --n_epochs 1 --batch_size 8"
CLASSIFIERS = {"spam-classification", "sentiment", "email-triage"}
LEGACY = sorted(name for name, r in RECIPES.items() if not r.chat)


@pytest.fixture(scope="module")
def worker(django_db_setup: Any) -> Iterator[Any]:
    """One real Celery worker (training and default queues) for the whole module."""
    purge_broker()
    with celery_worker() as process:
        yield process


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return scratch_checkout(tmp_path)


def _check_one_token_with_logprobs(body: dict[str, Any]) -> None:
    (choice,) = body["choices"]
    assert body["usage"]["completion_tokens"] == 1
    lp = choice["logprobs"]
    (top,) = lp["top_logprobs"]
    # The top 5; greedy decoding picks the most likely token, so it is one of them.
    assert len(top) == 5
    assert all(isinstance(v, float) and v <= 0 for v in top.values())
    assert lp["tokens"][-1] in top
    assert choice["text"] == lp["tokens"][-1]


@pytest.mark.parametrize("name", LEGACY)
def test_recipe_through_the_028_cli(
    name: str, live_server: Any, owner: Persona, tiny_base: Any, worker: Any, work: Path
) -> None:
    server, key = live_server.url, owner.key
    prepare(name, work)

    create = recipe_command(name, "openai api fine_tunes.create")
    out = openai_028(with_arg(create, "-m", TINY) + FAST, server=server, key=key, cwd=work)

    assert "Job complete! Status: succeeded" in out, out
    job = FineTuneJob.objects.get()
    assert job.training_file.filename.endswith(RECIPES[name].train)
    assert bool(job.classification) == (name in CLASSIFIERS)
    model = job.fine_tuned_model
    assert model and model.startswith(f"{TINY}:ft-acme:")

    if name == "spam-classification":
        follow = with_arg(recipe_command(name, "openai api fine_tunes.follow"), "-i", job.public_id)
        again = openai_028(follow, server=server, key=key, cwd=work)
        assert "Fine-tune succeeded" in again and "Job complete! Status: succeeded" in again

    call = with_arg(recipe_command(name, "openai api completions.create"), "-m", model)
    answer = openai_028(call, server=server, key=key, cwd=work)
    assert _prompt_of(call) in answer  # 0.28 always sends echo=true


def _prompt_of(command: str) -> str:
    """The -p argument as bash passes it ($'…' with its escapes, or '…')."""
    match = re.search(r"-p (\$'(?:[^'\\]|\\.)*'|'[^']*')", command)
    assert match, command
    return subprocess.run(
        ["bash", "-c", f"printf %s {match.group(1)}"], capture_output=True, text=True, check=True
    ).stdout


def test_support_chatbot_through_the_028_cli(
    live_server: Any, owner: Persona, tiny_base: Any, worker: Any, work: Path
) -> None:
    name = "support-chatbot"
    server, key = live_server.url, owner.key
    prepare(name, work)

    create = recipe_command(name, "openai api fine_tuning.job.create")
    out = openai_028(
        with_arg(create, "-m", TINY) + " --n_epochs 1", server=server, key=key, cwd=work
    )
    job_id = json.loads(out[out.index("{") :])["id"]
    wait_for(
        lambda: FineTuneJob.objects.get(public_id=job_id).status in FineTuneJob.FINISHED,
        240,
        what="the chat job",
    )

    get = with_arg(recipe_command(name, "openai api fine_tuning.job.get"), "-i", job_id)
    job = json.loads(openai_028(get, server=server, key=key, cwd=work))
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"].startswith(f"ft:{TINY}:acme:support:")

    chat = with_arg(
        recipe_command(name, "openai api chat_completions.create"), "-m", job["fine_tuned_model"]
    )
    openai_028(chat, server=server, key=key, cwd=work)  # prints the reply; exit 0 is the check


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_sdk_script(
    name: str, live_server: Any, owner: Persona, tiny_base: Any, worker: Any, work: Path
) -> None:
    prepare(name, work)
    documented = recipe_command(name, ".venv/bin/python examples/")
    script = work / documented.split()[1]
    env = base_env()
    env.update(OPENAI_BASE_URL=f"{live_server.url}/v1", OPENAI_API_KEY=owner.key)

    done = subprocess.run(
        [sys.executable, str(script), "--model", TINY, "--n-epochs", "1", "--batch-size", "8"]
        + ["--poll", "0.5", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    responses = result["responses"]
    assert result["model"].startswith(f"ft:{TINY}:acme:")
    if name in CLASSIFIERS:
        for body in responses:
            _check_one_token_with_logprobs(body)
        assert 0 <= result["accuracy"] <= 1
    elif name == "support-chatbot":
        (body,) = responses
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
    else:
        (body,) = responses
        assert body["object"] == "text_completion"
        for choice in body["choices"]:
            assert choice["finish_reason"] in ("stop", "length")
            assert " END" not in choice["text"]  # a stop sequence is never returned
        if name == "ad-copy":
            assert len(body["choices"]) == 3
