"""The official clients against a live server: the current SDK and the 0.28 CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from django.conf import settings

from models_app.models import BaseModel, FineTunedModel
from tests.conftest import Persona
from tests.playground.support import TINY_BASE, MakeFineTune, ft_name

pytestmark = pytest.mark.django_db(transaction=True)

VENV_028 = Path(settings.BASE_DIR) / ".venv-openai028"


@pytest.fixture(scope="session")
def cli_028() -> Path:
    """The 0.28.1 `openai` CLI from its own venv (it cannot share one with the 1.x SDK)."""
    cli = VENV_028 / "bin" / "openai"
    if not cli.exists():
        subprocess.run(["python3.11", "-m", "venv", str(VENV_028)], check=True)
        requirements = Path(settings.BASE_DIR) / "requirements-openai028.txt"
        subprocess.run(
            [str(VENV_028 / "bin" / "pip"), "install", "-q", "-r", str(requirements)], check=True
        )
    return cli


def run_028(cli: Path, live_server: Any, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OPENAI_API_BASE": f"{live_server.url}/v1",  # no trailing slash (reference §1.1)
        "OPENAI_API_KEY": key,
    }
    return subprocess.run(
        [str(cli), "api", *args], env=env, capture_output=True, text=True, timeout=120
    )


def sdk(live_server: Any, persona: Persona) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=persona.key, max_retries=0)


def test_sdk_completions_with_logprobs_stop_n_and_stream(
    live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = sdk(live_server, owner)

    response = client.completions.create(
        model=model.name,
        prompt="Hello, how are",
        max_tokens=6,
        logprobs=2,
        stop=["zz"],
        n=2,
        seed=3,
    )
    streamed = client.completions.create(
        model=model.name, prompt="Hello, how are", max_tokens=6, temperature=0, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    greedy = client.completions.create(
        model=model.name, prompt="Hello, how are", max_tokens=6, temperature=0
    )

    assert response.model == model.name
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert choice.logprobs is not None and choice.logprobs.tokens is not None
        assert "".join(choice.logprobs.tokens) == choice.text
        assert "zz" not in choice.text
    assert response.usage is not None
    assert response.usage.completion_tokens > 0
    assert text == greedy.choices[0].text


def test_sdk_chat_completions(live_server: Any, owner: Persona, inference_base: BaseModel) -> None:
    client = sdk(live_server, owner)
    messages: Any = [{"role": "user", "content": "Say hi"}]

    response = client.chat.completions.create(
        model=TINY_BASE,
        messages=messages,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    stream = client.chat.completions.create(
        model=TINY_BASE, messages=messages, max_tokens=4, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].logprobs is not None
    assert streamed == response.choices[0].message.content


def test_sdk_models_list_retrieve_delete(
    live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, f"ft:{TINY_BASE}:{owner.org.slug}:sdk:abcd1234")
    client = sdk(live_server, owner)

    listed = [m.id for m in client.models.list()]
    retrieved = client.models.retrieve(model.name)
    deleted = client.models.delete(model.name)  # the 1.x SDK sends ':' unescaped

    assert model.name in listed
    assert TINY_BASE in listed
    assert retrieved.id == model.name
    assert retrieved.owned_by == owner.org.slug
    assert deleted.deleted is True
    assert deleted.id == model.name
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model=model.name, prompt="x", max_tokens=1)
    assert info.value.code == "model_not_found"
    assert not Path(model.artifact_dir).exists()


def test_sdk_member_delete_is_permission_denied(
    live_server: Any, owner: Persona, member: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    with pytest.raises(openai.PermissionDeniedError):
        sdk(live_server, member).models.delete(model.name)

    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is None


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout")
def test_028_cli_completions_create_and_models_delete(
    live_server: Any, owner: Persona, make_fine_tune: MakeFineTune, cli_028: Path
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org, "cli"))

    completion = run_028(cli_028, live_server, owner.key,
                         "completions.create", "-m", model.name, "-p", "Hello there", "-M", "4")  # fmt: skip
    streamed = run_028(cli_028, live_server, owner.key,
                       "completions.create", "-m", model.name, "-p", "Hello", "-M", "3", "--stream")  # fmt: skip
    deleted = run_028(cli_028, live_server, owner.key, "models.delete", "-i", model.name)
    again = run_028(cli_028, live_server, owner.key,
                    "completions.create", "-m", model.name, "-p", "Hello", "-M", "1")  # fmt: skip

    assert completion.returncode == 0, completion.stderr
    # The 0.28 CLI always sends echo=true, so the prompt comes back first.
    assert completion.stdout.startswith("Hello there")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.startswith("Hello")
    assert deleted.returncode == 0, deleted.stderr
    assert '"deleted": true' in deleted.stdout
    assert not Path(model.artifact_dir).exists()
    assert again.returncode == 1
    assert "does not exist" in again.stderr + again.stdout
