"""The remote backend against a real `manage.py serve_inference` process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings as django_settings

from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.playground.support import TINY_BASE, MakeFineTune, TinyDirs, ft_name
from tests.playground.test_api import post, sse_chunks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engine_server(tiny_dirs: TinyDirs) -> Iterator[str]:
    """`serve_inference` serving the tiny base; yields its /v1 URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve_inference", "--port", str(port), "--no-registry",
         "--base", f"{TINY_BASE}={tiny_dirs.base}"],
        cwd=django_settings.BASE_DIR,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                requests.get(f"{url}/models", timeout=2)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout else ""
                    pytest.fail(f"serve_inference did not start:\n{output}")
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def remote(settings: Any, engine_server: str) -> str:
    settings.TUNERY_INFERENCE_BACKEND = "remote"
    settings.TUNERY_INFERENCE_URL = engine_server
    return engine_server


def _complete(owner: Persona, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "Hello, how are", "max_tokens": 6, "temperature": 0, **extra}
    response = post(owner.api(), "/v1/completions", body)
    assert response.status_code == 200, response.content
    return dict(response.json())


def test_remote_completions_match_the_local_backend(
    owner: Persona, make_fine_tune: MakeFineTune, settings: Any, engine_server: str
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    local = [_complete(owner, name, logprobs=2) for name in (TINY_BASE, model.name)]

    settings.TUNERY_INFERENCE_BACKEND = "remote"
    settings.TUNERY_INFERENCE_URL = engine_server
    remote = [_complete(owner, name, logprobs=2) for name in (TINY_BASE, model.name)]

    for here, there in zip(local, remote, strict=True):
        assert there["choices"][0]["text"] == here["choices"][0]["text"]
        assert there["choices"][0]["logprobs"]["tokens"] == here["choices"][0]["logprobs"]["tokens"]
        assert there["usage"] == here["usage"]
    assert remote[0]["choices"][0]["text"] != remote[1]["choices"][0]["text"]
    # The adapter was hot-loaded into the server under the fine-tune's name.
    served = requests.get(f"{engine_server}/models", timeout=5).json()
    assert model.name in [m["id"] for m in served["data"]]


def test_remote_streams_and_chats(
    owner: Persona, make_fine_tune: MakeFineTune, remote: str
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org, "stream"))
    whole = _complete(owner, model.name)["choices"][0]["text"]

    response = post(owner.api(), "/v1/completions", {
        "model": model.name, "prompt": "Hello, how are", "max_tokens": 6, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    chunks, done = sse_chunks(response)
    chat = post(owner.api(), "/v1/chat/completions", {
        "model": model.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
        "logprobs": True, "top_logprobs": 1})  # fmt: skip

    assert done
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert chat.status_code == 200, chat.content
    assert chat.json()["model"] == model.name
    assert chat.json()["choices"][0]["logprobs"]["content"]


def test_remote_errors_keep_their_param(owner: Persona, inference_base: Any, remote: str) -> None:
    response = post(
        owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x", "max_tokens": 900}
    )

    assert assert_envelope(response, 400)["param"] == "max_tokens"


def test_deleting_a_model_unloads_it_from_the_server(
    owner: Persona, make_fine_tune: MakeFineTune, remote: str,
    django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    model = make_fine_tune(owner.org, ft_name(owner.org, "gone"))
    _complete(owner, model.name)

    with django_capture_on_commit_callbacks(execute=True):
        assert owner.api().delete(f"/v1/models/{model.name}").status_code == 200

    served = requests.get(f"{remote}/models", timeout=5).json()
    assert model.name not in [m["id"] for m in served["data"]]
    assert not Path(model.artifact_dir).exists()


def test_an_unreachable_server_is_503(owner: Persona, inference_base: Any, settings: Any) -> None:
    settings.TUNERY_INFERENCE_BACKEND = "remote"
    settings.TUNERY_INFERENCE_URL = f"http://127.0.0.1:{_free_port()}/v1"

    response = post(owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x"})

    assert assert_envelope(response, 503)["type"] == "server_error"


def test_the_server_speaks_vllms_lora_api(engine_server: str, tiny_dirs: TinyDirs) -> None:
    load = {"lora_name": "direct", "lora_path": str(tiny_dirs.adapter_b)}

    loaded = requests.post(f"{engine_server}/load_lora_adapter", json=load, timeout=5)
    again = requests.post(f"{engine_server}/load_lora_adapter", json=load, timeout=5)
    completion = requests.post(f"{engine_server}/completions", timeout=30, data=json.dumps(
        {"model": "direct", "prompt": "Hi", "max_tokens": 2}))  # fmt: skip
    unloaded = requests.post(
        f"{engine_server}/unload_lora_adapter", json={"lora_name": "direct"}, timeout=5
    )
    missing = requests.post(
        f"{engine_server}/unload_lora_adapter", json={"lora_name": "direct"}, timeout=5
    )
    bad = requests.post(
        f"{engine_server}/load_lora_adapter",
        json={"lora_name": "x", "lora_path": "/nope"},
        timeout=5,
    )

    assert loaded.status_code == again.status_code == 200
    assert completion.status_code == 200
    assert completion.json()["model"] == "direct"
    assert unloaded.status_code == 200
    assert missing.status_code == 404
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "lora_path"
