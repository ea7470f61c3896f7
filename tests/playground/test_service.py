"""The inference service as the web tier sees it: a real `serve_inference` process.

The session's service (tests/conftest.py) answers the web tier's requests everywhere; this
module adds a second one with a one-row batch and a one-request queue, to see the queue's
429 and a disconnected client's request leave the batch.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings

from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.inference import free_port, health, inference_service
from tests.playground.support import TINY_BASE, MakeFineTune, TinyDirs, ft_name
from tests.playground.test_api import post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def narrow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A service that decodes one row at a time, queues one request and reads 64-token prompts."""
    log = tmp_path_factory.mktemp("narrow") / "serve_inference.log"
    with inference_service(
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        log=log,
        env={"TUNERY_INFERENCE_MAX_PROMPT_TOKENS": "64"},
    ) as url:
        yield url


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _scheduler(url: str) -> dict[str, Any]:
    (stats,) = health(url).schedulers.values()
    return stats


def _idle(url: str) -> bool:
    stats = _scheduler(url)
    return bool(stats["running"] == 0 and stats["waiting"] == 0)


def _endless(model: str, **extra: Any) -> dict[str, Any]:
    # EOS banned: the tiny model talks until max_tokens.
    return {"model": model, "prompt": "x", "max_tokens": 400, "logit_bias": {"2": -100}, **extra}


def test_past_its_queue_the_service_answers_429_with_retry_after(
    narrow_service: str, tiny_dirs: TinyDirs
) -> None:
    base = str(tiny_dirs.base)
    running = requests.post(f"{narrow_service}/completions", json=_endless(base, stream=True),
                            stream=True, timeout=60)  # fmt: skip
    next(running.iter_lines())  # decoding: the batch's one row is taken
    queued = requests.Session()
    with socket.create_connection(("127.0.0.1", int(narrow_service.split(":")[2][:-3]))) as raw:
        body = json.dumps({"model": base, "prompt": "Hi", "max_tokens": 2}).encode()
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        _wait_for(lambda: _scheduler(narrow_service)["waiting"] == 1)

        refused = queued.post(f"{narrow_service}/completions", timeout=30,
                              json={"model": base, "prompt": "Hi", "max_tokens": 2})  # fmt: skip

        running.close()
        answer = raw.recv(65536)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert set(error) == {"message", "type", "param", "code"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert answer.startswith(b"HTTP/1.1 200")


def test_a_disconnected_clients_request_is_cancelled(
    narrow_service: str, tiny_dirs: TinyDirs
) -> None:
    base = str(tiny_dirs.base)
    # The module's earlier test cancels a request too: count from after it has left the batch.
    _wait_for(lambda: not health(narrow_service).schedulers or _idle(narrow_service), 60)
    stats = _scheduler(narrow_service) if health(narrow_service).schedulers else {}
    before, completed = stats.get("cancelled", 0), stats.get("completed", 0)
    stream = requests.post(f"{narrow_service}/completions", json=_endless(base, stream=True),
                           stream=True, timeout=60)  # fmt: skip
    next(stream.iter_lines())
    stream.close()
    _wait_for(lambda: _scheduler(narrow_service)["cancelled"] == before + 1)
    # A plain (non-streamed) request whose client hangs up before its answer, too: at once,
    # since the tiny model may finish 400 tokens before a slower test could hang up.
    port = int(narrow_service.split(":")[2][:-3])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        body = json.dumps(_endless(base)).encode()
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip

    _wait_for(lambda: _scheduler(narrow_service)["cancelled"] == before + 2)
    assert _scheduler(narrow_service)["completed"] == completed
    assert _scheduler(narrow_service)["running"] == 0


def test_the_service_bounds_prompt_tokens(narrow_service: str, tiny_dirs: TinyDirs) -> None:
    response = requests.post(f"{narrow_service}/completions", timeout=30, json={
        "model": str(tiny_dirs.base), "prompt": "word " * 100, "max_tokens": 1})  # fmt: skip

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_the_web_tier_bounds_messages_and_max_tokens(
    owner: Persona, inference_base: Any, settings: Any
) -> None:
    settings.TUNERY_INFERENCE_MAX_MESSAGES = 3
    settings.TUNERY_INFERENCE_MAX_TOKENS = 50
    messages = [{"role": "user", "content": "hi"}] * 4

    chat = post(owner.api(), "/v1/chat/completions", {"model": TINY_BASE, "messages": messages})
    completion = post(owner.api(), "/v1/completions",
                      {"model": TINY_BASE, "prompt": "x", "max_tokens": 51})  # fmt: skip

    assert "at most 3" in assert_envelope(chat, 400)["message"]
    assert assert_envelope(chat, 400)["param"] == "messages"
    assert assert_envelope(completion, 400)["param"] == "max_tokens"


def test_a_full_queue_reaches_the_web_client_as_429_with_retry_after(
    owner: Persona, inference_base: Any, settings: Any, narrow_service: str, tiny_dirs: TinyDirs
) -> None:
    settings.TUNERY_INFERENCE_URL = narrow_service
    base = str(tiny_dirs.base)
    running = requests.post(f"{narrow_service}/completions", json=_endless(base, stream=True),
                            stream=True, timeout=60)  # fmt: skip
    next(running.iter_lines())
    port = int(narrow_service.split(":")[2][:-3])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        body = json.dumps({"model": base, "prompt": "Hi", "max_tokens": 2}).encode()
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        _wait_for(lambda: _scheduler(narrow_service)["waiting"] == 1)

        refused = post(owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x"})
        running.close()

    error = assert_envelope(refused, 429, "rate_limit_exceeded")
    assert "capacity" in error["message"]
    assert 1 <= int(refused["Retry-After"]) <= 60


def test_remote_errors_keep_their_param(owner: Persona, inference_base: Any) -> None:
    response = post(
        owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x", "max_tokens": 900}
    )

    assert assert_envelope(response, 400)["param"] == "max_tokens"


def test_deleting_a_model_unloads_it_from_the_service(
    owner: Persona, make_fine_tune: MakeFineTune, inference: str,
    django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    model = make_fine_tune(owner.org, ft_name(owner.org, "gone"))
    body = {"model": model.name, "prompt": "Hello", "max_tokens": 2}
    assert post(owner.api(), "/v1/completions", body).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        assert owner.api().delete(f"/v1/models/{model.name}").status_code == 200

    served = requests.get(f"{inference}/models", timeout=5).json()
    assert model.name not in [m["id"] for m in served["data"]]
    adapter = str(Path(model.artifact_dir).resolve())
    assert not any(adapter in paths for paths in health(inference).adapters.values())


def test_an_unreachable_service_is_503(owner: Persona, inference_base: Any, settings: Any) -> None:
    settings.TUNERY_INFERENCE_URL = f"http://127.0.0.1:{free_port()}/v1"

    response = post(owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x"})

    assert assert_envelope(response, 503)["type"] == "server_error"


def test_the_service_speaks_vllms_lora_api(inference: str, tiny_dirs: TinyDirs) -> None:
    load = {"lora_name": "direct", "lora_path": str(tiny_dirs.adapter_b),
            "base_model": str(tiny_dirs.base)}  # fmt: skip

    loaded = requests.post(f"{inference}/load_lora_adapter", json=load, timeout=5)
    again = requests.post(f"{inference}/load_lora_adapter", json=load, timeout=5)
    completion = requests.post(f"{inference}/completions", timeout=30, data=json.dumps(
        {"model": "direct", "prompt": "Hi", "max_tokens": 2}))  # fmt: skip
    unloaded = requests.post(
        f"{inference}/unload_lora_adapter", json={"lora_name": "direct"}, timeout=5
    )
    missing = requests.post(
        f"{inference}/unload_lora_adapter", json={"lora_name": "direct"}, timeout=5
    )
    bad = requests.post(
        f"{inference}/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nope"}, timeout=5
    )

    assert loaded.status_code == again.status_code == 200
    assert completion.status_code == 200
    assert completion.json()["model"] == "direct"
    assert unloaded.status_code == 200
    assert missing.status_code == 404
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "lora_path"


def test_a_full_fine_tune_is_served_as_a_base_of_its_own(
    owner: Persona, inference_base: Any, inference: str
) -> None:
    from engine.generation import GenerateRequest, generate
    from engine.models import load_model_and_tokenizer
    from engine.tiny import build_tiny_model
    from models_app.models import FineTunedModel

    weights = build_tiny_model(
        Path(settings.DATA_DIR) / "models" / f"full-{uuid.uuid4().hex[:8]}", seed=5
    )
    model = FineTunedModel.objects.create(
        name=ft_name(owner.org, "full"), organization=owner.org, base=inference_base,
        artifact_dir=str(weights), method=FineTunedModel.Method.FULL,
    )  # fmt: skip
    reference, tokenizer = load_model_and_tokenizer(weights)
    expected = generate(reference.eval(), tokenizer, GenerateRequest(prompt="Hello", max_tokens=6,
                        temperature=0, stop_on_eos=False))  # fmt: skip

    body = post(owner.api(), "/v1/completions", {"model": model.name, "prompt": "Hello",
                "max_tokens": 6, "temperature": 0, "logit_bias": {"2": -100}}).json()  # fmt: skip

    assert body["model"] == model.name
    assert body["choices"][0]["text"] == expected.choices[0].text
    assert str(weights) in health(inference).bases
    shutil.rmtree(weights, ignore_errors=True)
