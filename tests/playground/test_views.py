"""The playground page, its streaming endpoint (session auth) and "view code"."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from models_app.models import UsageRecord
from playground.forms import parse_stops
from playground.snippets import snippets
from tests.conftest import Persona
from tests.playground.support import TINY_BASE, MakeFineTune, ft_name
from tests.playground.test_api import sse_chunks

FORM = {
    "mode": "completion", "prompt": "Hello, how are", "system": "", "temperature": "0",
    "max_tokens": "5", "top_p": "1", "stop": "", "presence_penalty": "0",
    "frequency_penalty": "0", "logprobs": "2",
}  # fmt: skip


def browser(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def test_page_lists_fine_tunes_and_bases_and_preselects_a_comparison(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    page = browser(owner).get("/playground/", {"model": [model.name, TINY_BASE]}).content.decode()

    assert page.count(f'value="{model.name}"') == 3  # one option per model selector
    assert f'<option value="{model.name}" data-chat="1" selected>' in page
    assert f'<option value="{TINY_BASE}" data-chat="1" selected>' in page


def test_stream_endpoint_streams_the_api_chunks_with_logprobs(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    response = browser(owner).post("/playground/stream", {**FORM, "model": model.name})

    chunks, done = sse_chunks(response)
    assert done
    assert all(c["model"] == model.name for c in chunks)
    assert all(
        c["choices"][0]["logprobs"]["top_logprobs"] for c in chunks if c["choices"][0]["text"]
    )
    row = UsageRecord.objects.get(model_name=model.name)
    assert row.user == owner.user
    assert row.api_key is None


def test_stream_endpoint_chat_mode(owner: Persona, inference_base: Any) -> None:
    form = {**FORM, "mode": "chat", "system": "Be brief.", "model": TINY_BASE}

    chunks, done = sse_chunks(browser(owner).post("/playground/stream", form))

    assert done
    assert chunks[0]["object"] == "chat.completion.chunk"


def test_stream_endpoint_errors_are_json(owner: Persona, inference_base: Any) -> None:
    client = browser(owner)

    bad_form = client.post("/playground/stream", {**FORM, "temperature": "9", "model": TINY_BASE})
    bad_model = client.post("/playground/stream", {**FORM, "model": "nope"})

    assert bad_form.status_code == 400
    assert bad_form.json()["error"]["param"] == "temperature"
    assert bad_model.status_code == 404
    assert bad_model.json()["error"]["code"] == "model_not_found"


def test_stream_endpoint_needs_a_login_and_csrf(owner: Persona, inference_base: Any) -> None:
    assert Client().post("/playground/stream", {**FORM, "model": TINY_BASE}).status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(owner.user)
    assert strict.post("/playground/stream", {**FORM, "model": TINY_BASE}).status_code == 403


def test_view_code_renders_curl_sdk_and_028_cli(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    form = {**FORM, "stop": "\\n", "models": [model.name, TINY_BASE, ""]}

    page = (
        browser(owner)
        .post("/playground/code", form, headers={"HX-Request": "true"})
        .content.decode()
    )

    assert page.count('data-testid="code-curl"') == 2
    assert "http://testserver/v1/completions" in page
    assert "client.completions.create(" in page
    assert "openai api completions.create -m" in page


def test_snippets_are_runnable_as_written() -> None:
    body = {
        "model": "m:ft-x",
        "prompt": "it's true",
        "max_tokens": 5,
        "stop": ["\n", "END"],
        "logprobs": 1,
    }

    code = snippets("http://host/v1", body)

    python = code["python"]
    compile(python, "<snippet>", "exec")
    assert 'prompt="it\'s true"' in python
    assert json.loads(code["curl"].split("-d ", 1)[1].strip("'").replace("'\"'\"'", "'")) == body
    assert "OPENAI_API_BASE=http://host/v1 " in code["cli"]
    assert "--stop '\n'" in code["cli"]
    assert "one --stop" in code["cli"]


def test_stops_are_one_per_line_with_escapes() -> None:
    assert parse_stops("\\n\nEND\n") == ["\n", "END"]
