"""The inference pool: one base load, one batching scheduler per base, correct under concurrency."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.batching import BatchSettings, QueueFull
from engine.generation import GenerateRequest, generate
from engine.pool import ModelPool

PROMPTS = ["Hello world", "The quick brown fox", "123 456", "spam"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters with different random weights (B is not zero), as after training."""
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        path = tmp_path_factory.mktemp(f"adapter{seed}")
        get_peft_model(base, config).save_pretrained(str(path))
        paths.append(path)
    return paths


class CountingLoader:
    def __init__(self, model_dir: Path, *, gate: threading.Event | None = None) -> None:
        self.model_dir = model_dir
        self.calls: Counter[str] = Counter()
        self.started = threading.Event()
        self.gate = gate

    def __call__(self, base_key: str) -> tuple[Any, Any]:
        self.calls[base_key] += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        return model, AutoTokenizer.from_pretrained(self.model_dir)


def _request(prompt: str) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, max_tokens=8, temperature=0, stop_on_eos=False)


def _fresh_output(model_dir: Path, adapter: Path | None, prompt: str) -> list[int]:
    """What a dedicated, freshly loaded model produces: the reference for the pool."""
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return generate(model.eval(), tokenizer, _request(prompt)).choices[0].token_ids


def _pooled_output(
    pool: ModelPool, adapter: Path | None, prompt: str, base: str = "tiny"
) -> list[int]:
    return pool.submit(base, adapter, _request(prompt)).result().choices[0].token_ids


def test_pool_serves_interleaved_adapters_from_threads_like_dedicated_models(
    tiny_model_dir: Path, adapters: list[Path]
) -> None:
    variants: list[Path | None] = [None, *adapters]
    expected = {(str(v), p): _fresh_output(tiny_model_dir, v, p) for v in variants for p in PROMPTS}
    # Otherwise the test could pass with the adapters ignored.
    assert len({tuple(expected[(str(v), PROMPTS[0])]) for v in variants}) == 3
    loader = CountingLoader(tiny_model_dir)
    pool = ModelPool(loader)
    start = threading.Barrier(4)
    results: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        try:
            start.wait()
            for i in range(6):
                variant, prompt = variants[(thread + i) % 3], PROMPTS[(thread * 7 + i) % 4]
                results[(thread, i)] = _pooled_output(pool, variant, prompt)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors
    for (t, i), output in results.items():
        variant, prompt = variants[(t + i) % 3], PROMPTS[(t * 7 + i) % 4]
        assert output == expected[(str(variant), prompt)], (t, i)
    assert len(results) == 24
    stats = pool.stats()
    assert loader.calls == Counter({"tiny": 1})
    assert stats.base_loads == {"tiny": 1}
    assert stats.adapter_loads == 2
    pool.close()


def test_pool_request_during_load_waits_for_it(tiny_model_dir: Path) -> None:
    gate = threading.Event()
    loader = CountingLoader(tiny_model_dir, gate=gate)
    pool = ModelPool(loader)
    outputs: list[list[int]] = []

    def request() -> None:
        outputs.append(_pooled_output(pool, None, PROMPTS[0]))

    first = threading.Thread(target=request)
    first.start()
    assert loader.started.wait(timeout=30)
    second = threading.Thread(target=request)
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive()  # waiting on the load in progress, not failing or loading again
    gate.set()
    first.join(timeout=60)
    second.join(timeout=60)

    assert len(outputs) == 2
    assert outputs[0] == outputs[1]
    assert loader.calls == Counter({"tiny": 1})


def test_pool_unload_adapter_stops_serving_it(tiny_model_dir: Path, adapters: list[Path]) -> None:
    first, second = adapters
    pool = ModelPool(CountingLoader(tiny_model_dir))
    bare = _pooled_output(pool, None, PROMPTS[1])
    with_first = _pooled_output(pool, first, PROMPTS[1])
    with_second = _pooled_output(pool, second, PROMPTS[1])

    assert pool.unload_adapter(first)

    assert pool.stats().adapters == {"tiny": [str(second.resolve())]}
    assert _pooled_output(pool, second, PROMPTS[1]) == with_second
    assert pool.unload_adapter(second)
    assert not pool.unload_adapter(second)
    assert pool.stats().adapters == {"tiny": []}
    assert _pooled_output(pool, None, PROMPTS[1]) == bare
    # Serving it again means reading it from disk again (the registry decides whether to).
    assert _pooled_output(pool, first, PROMPTS[1]) == with_first
    assert pool.stats().adapter_loads == 3
    assert pool.stats().base_loads == {"tiny": 1}


def test_pool_keeps_at_most_max_bases_and_evicts_the_least_recently_used(
    tiny_model_dir: Path,
) -> None:
    loader = CountingLoader(tiny_model_dir)
    pool = ModelPool(loader, max_bases=2)

    for key in ["a", "b", "a", "c", "a", "b"]:
        _pooled_output(pool, None, PROMPTS[0], base=key)

    assert loader.calls == Counter({"a": 1, "b": 2, "c": 1})
    assert pool.stats().loaded_bases == ["a", "b"]


def test_pool_load_failure_reaches_waiters_and_is_retried(tiny_model_dir: Path) -> None:
    attempts = Counter[str]()
    loading, fail = threading.Event(), threading.Event()

    def flaky_loader(base_key: str) -> tuple[Any, Any]:
        attempts[base_key] += 1
        if attempts[base_key] == 1:
            loading.set()
            assert fail.wait(timeout=30)
            raise OSError("disk unavailable")
        return CountingLoader(tiny_model_dir)(base_key)

    pool = ModelPool(flaky_loader)
    failures: list[BaseException] = []

    def request() -> None:
        try:
            _pooled_output(pool, None, PROMPTS[0])
        except RuntimeError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=request) for _ in range(2)]
    threads[0].start()
    assert loading.wait(timeout=30)
    threads[1].start()
    fail.set()
    for thread in threads:
        thread.join(timeout=60)

    assert len(failures) == 2
    assert all(isinstance(f.__cause__, OSError) for f in failures)
    assert _pooled_output(pool, None, PROMPTS[0])
    assert attempts == Counter({"tiny": 2})
    assert pool.stats().base_loads == {"tiny": 1}


def test_pool_refuses_past_its_queue_with_a_retry_after(tiny_model_dir: Path) -> None:
    pool = ModelPool(
        CountingLoader(tiny_model_dir), settings=BatchSettings(max_rows=1), max_queue=1
    )
    long = GenerateRequest(prompt="x", max_tokens=200, temperature=0, stop_on_eos=False)
    pool.submit("tiny", None, _request(PROMPTS[0])).result()  # the base is loaded
    running = pool.submit("tiny", None, long, stream=True)
    deltas = running.deltas()
    next(deltas)  # it is in the batch, which has one row
    queued = pool.submit("tiny", None, _request(PROMPTS[1]))

    with pytest.raises(QueueFull) as refused:
        pool.submit("tiny", None, _request(PROMPTS[2]))

    assert 1 <= refused.value.retry_after <= 60
    deltas.close()  # the client went away: its row leaves, the queued request runs
    assert queued.result().choices[0].token_ids
    pool.close()
