"""Two fine-tunes of one base and the base itself: concurrent requests through the web tier,
batched together by the inference service, each answered as a dedicated model would."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from peft import PeftModel

from engine.generation import GenerateRequest, generate
from engine.models import load_model_and_tokenizer
from tests.conftest import Persona
from tests.inference import health
from tests.playground.support import MakeFineTune, TinyDirs, ft_name

pytestmark = pytest.mark.django_db(transaction=True)

PROMPTS = ["Hello, how are", "The capital of France", "Question: what is", "def add(a, b):"]


def references(base: Path, adapter: Path | None, prompts: list[str]) -> list[str]:
    """What a freshly loaded model (no pool, no switching) answers, greedily."""
    model, tokenizer = load_model_and_tokenizer(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    requests = [GenerateRequest(prompt=p, max_tokens=8, temperature=0) for p in prompts]
    return [generate(model, tokenizer, r).choices[0].text for r in requests]


def test_two_adapters_serve_interleaved_concurrent_requests_on_one_base(
    live_server: Any, owner: Persona, make_fine_tune: MakeFineTune, tiny_dirs: TinyDirs,
    fresh_backend: None, inference: str,
) -> None:  # fmt: skip
    first = make_fine_tune(owner.org, ft_name(owner.org, "one"), adapter="a")
    second = make_fine_tune(owner.org, ft_name(owner.org, "two"), adapter="b")
    adapters = {
        first.name: tiny_dirs.adapter_a,
        second.name: tiny_dirs.adapter_b,
        "tiny-base": None,
    }
    jobs = [(name, prompt) for prompt in PROMPTS for name in adapters]  # A, B, base, A, B, base…
    expected = {
        (name, prompt): text
        for name, adapter in adapters.items()
        for prompt, text in zip(PROMPTS, references(tiny_dirs.base, adapter, PROMPTS), strict=True)
    }

    def call(job: tuple[str, str]) -> str:
        body = {"model": job[0], "prompt": job[1], "max_tokens": 8, "temperature": 0}
        response = requests.post(
            f"{live_server.url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {owner.key}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["text"])

    # The session's service is shared: earlier tests may have loaded (and evicted) this base.
    loads_before = health(inference).base_loads.get(str(tiny_dirs.base), 0)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = dict(zip(jobs, pool.map(call, jobs), strict=True))

    assert answers == expected
    # The adapters really differ, so a mix-up could not pass unnoticed.
    assert len({answers[(name, PROMPTS[0])] for name in adapters}) == 3
    served = health(inference)
    # At most one load for all 18 requests over three models (none if it was still loaded).
    assert served.base_loads[str(tiny_dirs.base)] - loads_before <= 1
    loaded = served.adapters[str(tiny_dirs.base)]
    assert {str(Path(m.artifact_dir).resolve()) for m in (first, second)} <= set(loaded)
