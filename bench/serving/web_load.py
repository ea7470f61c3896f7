"""The web tier under pollers and followers, against the real stack with a training job running.

    source <your env: DATABASE_URL (PostgreSQL), CELERY_BROKER_URL (Redis), DATA_DIR>
    .venv/bin/python bench/serving/web_load.py [--json out.json] [--web-processes 1]

Starts `make run`'s processes under supervisord (config/supervisord.conf: uvicorn web,
inference service, training worker, default worker, beat) on a free port with a run directory
of its own, creates an org, a key, a browser session and one training job (the random-init tiny
Llama of engine.tiny, long enough to outlast the run) and, while the job trains:

1. 50 pollers × 30 s on `GET /v1/fine_tuning/jobs/{id}/events`, each polling once a second and
   sending back the ETag it last got (as a browser's cache does; a poller without it would get
   a 200 each time);
2. 50 pollers × 30 s on the job page's live partial (`HX-Request: true`, a logged-in session);
3. 200 `fine_tunes.follow` streams (`GET /v1/fine-tunes/{id}/events?stream=true`) held 60 s,
   while 10 pollers keep polling the events list: the web processes' RSS before and with the
   streams open, and the pollers' p50/p95 meanwhile.

With `--inference-clients N`, N clients stream 32-token completions on the embedded base
model, back to back, through the same web tier during 1 and 2 (the inference service busy while
the pollers poll).

Latency is the client's time to the whole response; errors are non-2xx/304 answers or failed
connections. Results go to docs/benchmarks/serving.md (the "Web tier" section).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import psutil  # noqa: E402
import requests  # noqa: E402
from django.conf import settings  # noqa: E402

from bench.common import machine  # noqa: E402
from bench.inference.run import free_port, percentile  # noqa: E402

SHARED_DATA = REPO.parent.parent / "shared" / "data"
if not SHARED_DATA.is_dir():
    SHARED_DATA = REPO.parent / "shared" / "data"


def setup(work: Path) -> dict[str, Any]:
    """An org, a key, a session, the tiny base and a long training job (queued)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    from accounts import services as accounts
    from datasets import services as files
    from datasets.processing import file_validate
    from engine.tiny import build_tiny_model
    from jobs import services as jobs
    from models_app.models import BaseModel

    tag = secrets.token_hex(3)
    user = User.objects.create_user(f"bench-{tag}", password=secrets.token_urlsafe(16))
    org = accounts.organization_create(name=f"Bench {tag}", owner=user)
    key = accounts.api_key_create(organization=org, name="bench", created_by=user).secret
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()

    model_dir = build_tiny_model(work / "tiny-llama" / "model")
    BaseModel.objects.update_or_create(
        name="bench-tiny-llama",
        defaults={"source": str(model_dir), "context_length": 512, "base_lr_lora": 2e-2},
    )
    rows = (SHARED_DATA / "sms_spam" / "train.jsonl").read_text().splitlines()[:1000]
    file = files.file_create(
        organization=org,
        uploaded_by=user,
        filename="sms.jsonl",
        purpose="fine-tune",
        content=("\n".join(rows) + "\n").encode(),
    )
    file_validate(file_id=file.pk)
    job = jobs.job_create(
        organization=org,
        created_by=user,
        req=jobs.JobRequest(
            api="current",
            model="bench-tiny-llama",
            training_file=file.public_id,
            n_epochs=10,  # far longer than the run: it is stopped (cancelled) at the end
            batch_size=1,
        ),
    )
    return {"key": key, "session": session.session_key, "job": job}


class Poller:
    """Polls `url` once a second until `stop`, keeping the last ETag; records every request."""

    def __init__(self, url: str, headers: dict[str, str], cookies: dict[str, str]) -> None:
        self.url, self.headers, self.cookies = url, headers, cookies
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        http = requests.Session()
        etag = None
        while not stop.is_set():
            began = time.monotonic()
            headers = dict(self.headers)
            if etag:
                headers["If-None-Match"] = etag
            try:
                response = http.get(self.url, headers=headers, cookies=self.cookies, timeout=30)
                elapsed = time.monotonic() - began
                self.latencies.append(elapsed)
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                if response.status_code in (200, 304):
                    etag = response.headers.get("ETag", etag)
                else:
                    self.errors += 1
            except requests.RequestException:
                self.errors += 1
            stop.wait(max(0.0, interval - (time.monotonic() - began)))


def poll(
    url: str, n: int, seconds: float, headers: dict[str, str], cookies: dict[str, str]
) -> dict[str, Any]:
    pollers = [Poller(url, headers, cookies) for _ in range(n)]
    stop = threading.Event()
    with ThreadPoolExecutor(n) as pool:
        for p in pollers:
            pool.submit(p.run, stop)
            time.sleep(1.0 / n)  # spread over the second, as independent clients are
        time.sleep(seconds)
        stop.set()
    return summarize(pollers)


def summarize(pollers: list[Poller]) -> dict[str, Any]:
    lat = [x for p in pollers for x in p.latencies]
    statuses: dict[int, int] = {}
    for p in pollers:
        for code, count in p.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    return {
        "requests": len(lat),
        "p50_ms": 1000 * percentile(lat, 0.50) if lat else None,
        "p95_ms": 1000 * percentile(lat, 0.95) if lat else None,
        "p99_ms": 1000 * percentile(lat, 0.99) if lat else None,
        "errors": sum(p.errors for p in pollers),
        "statuses": statuses,
    }


def follower(
    url: str, headers: dict[str, str], stop: threading.Event, stats: dict[str, Any]
) -> None:
    try:
        with requests.get(url, headers=headers, stream=True, timeout=(10, 120)) as response:
            if response.status_code != 200:
                stats["errors"] += 1
                return
            stats["open"] += 1
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    stats["events"] += 1
                if stop.is_set():
                    break
    except requests.RequestException:
        if not stop.is_set():
            stats["errors"] += 1
    finally:
        stats["closed"] += 1


def eos_bias() -> dict[str, int]:
    """Logit biases that keep the embedded model from ending early: every completion is then
    32 tokens of decoding (as in bench/serving/inference_load.py)."""
    from engine import DEFAULT_MODEL_SOURCE
    from engine.models import default_cache_dir, load_tokenizer, resolve_model_source

    tokenizer = load_tokenizer(resolve_model_source(DEFAULT_MODEL_SOURCE, str(default_cache_dir())))
    ids = {tokenizer.eos_token_id, tokenizer.bos_token_id}
    return {str(i): -100 for i in ids if i is not None}


def completions(
    base: str,
    key: str,
    model: str,
    bias: dict[str, int],
    stop: threading.Event,
    stats: dict[str, Any],
) -> None:
    """Streamed 32-token completions on `model`, back to back until `stop`: the inference
    service kept busy while the pollers poll (`--inference-clients`)."""
    from bench.serving.inference_load import _session, completion_body, stream_completion

    session, n = _session(key), 0
    while not stop.is_set():
        try:
            sample = stream_completion(session, base, completion_body(model, n, bias))
            stats["completed"] += 1
            stats["tokens"] += sample.tokens
        except Exception:  # counted, not fatal: the pollers are what is measured
            stats["errors"] += 1
        n += 1


def web_rss(rpc_socket: str) -> tuple[int, list[int]]:
    """The web processes' total RSS (bytes) and pids, from supervisord."""
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, rpc_socket)
    proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    pids = [i["pid"] for i in proxy.supervisor.getAllProcessInfo() if i["group"] == "web"]
    return sum(psutil.Process(pid).memory_info().rss for pid in pids), pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--web-processes", type=int, default=1)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--poll-seconds", type=float, default=30)
    parser.add_argument("--followers", type=int, default=200)
    parser.add_argument("--follow-seconds", type=float, default=60)
    parser.add_argument(
        "--inference-clients",
        type=int,
        default=0,
        help="clients streaming completions on the embedded base model while the pollers poll",
    )
    args = parser.parse_args()
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        sys.exit("run it on PostgreSQL and Redis (DATABASE_URL, CELERY_BROKER_URL), as deployed")

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    state = setup(work)
    job = state["job"]
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "TUNERY_RUN_DIR": str(work),
        "TUNERY_PORT": str(port),
        "TUNERY_INFERENCE_PORT": str(free_port()),
        "TUNERY_WEB_PROCESSES": str(args.web_processes),
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    base = f"http://127.0.0.1:{port}"
    log = open(work / "stack.log", "wb")  # noqa: SIM115 -- the stack's whole life
    stack = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "supervisord"), "-c", str(REPO / "config" / "supervisord.conf")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    results: dict[str, Any] = {"machine": machine(), "web_processes": args.web_processes}
    try:
        deadline = time.monotonic() + 300
        while True:
            job.refresh_from_db()
            try:
                up = requests.get(f"{base}/healthz", timeout=5).ok
            except requests.RequestException:
                up = False
            if up and job.status == "running" and job.step >= 1:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"stack not up / job not training: {job.status}; {work}")
            time.sleep(1)
        results["uptime_before"] = subprocess.run(
            ["uptime"], capture_output=True, text=True
        ).stdout.strip()
        api = {"Authorization": f"Bearer {state['key']}"}
        cookies = {settings.SESSION_COOKIE_NAME: state["session"]}
        inference_stop = threading.Event()
        inference = {"clients": args.inference_clients, "completed": 0, "tokens": 0, "errors": 0}
        bias = eos_bias() if args.inference_clients else {}
        inference_threads = [
            threading.Thread(
                target=completions,
                args=(base, state["key"], "SmolLM2-135M-Instruct", bias, inference_stop, inference),
                daemon=True,
            )
            for _ in range(args.inference_clients)
        ]
        for t in inference_threads:
            t.start()
        if inference_threads:  # the base model loaded and decoding before the pollers start
            deadline = time.monotonic() + 300
            while not inference["completed"] and time.monotonic() < deadline:
                time.sleep(1)
        inference_began = time.monotonic()

        events_url = f"{base}/v1/fine_tuning/jobs/{job.public_id}/events"
        results["events_api"] = poll(events_url, args.pollers, args.poll_seconds, api, {})
        print("events API", results["events_api"], flush=True)  # noqa: T201
        live_url = f"{base}/jobs/{job.public_id}/"
        results["job_live"] = poll(
            live_url, args.pollers, args.poll_seconds, {"HX-Request": "true"}, cookies
        )
        print("job live", results["job_live"], flush=True)  # noqa: T201
        inference_stop.set()
        if inference_threads:
            inference["tokens_per_s"] = inference["tokens"] / (time.monotonic() - inference_began)
            results["inference_meanwhile"] = inference
            print("inference meanwhile", inference, flush=True)  # noqa: T201

        rpc = f"unix://{work}/supervisor.sock"
        rss_before, pids = web_rss(rpc)
        stop = threading.Event()
        stats = {"open": 0, "events": 0, "errors": 0, "closed": 0}
        follow_url = f"{base}/v1/fine-tunes/{job.public_id}/events?stream=true"
        threads = [
            threading.Thread(target=follower, args=(follow_url, api, stop, stats), daemon=True)
            for _ in range(args.followers)
        ]
        for t in threads:
            t.start()
        time.sleep(5)
        others = [Poller(events_url, api, {}) for _ in range(10)]
        other_stop = threading.Event()
        other_threads = [threading.Thread(target=p.run, args=(other_stop,)) for p in others]
        for t in other_threads:
            t.start()
        peak = rss_before
        threads_peak = 0
        end = time.monotonic() + args.follow_seconds
        while time.monotonic() < end:
            rss, pids = web_rss(rpc)
            peak = max(peak, rss)
            threads_peak = max(threads_peak, sum(psutil.Process(p).num_threads() for p in pids))
            time.sleep(2)
        other_stop.set()
        for t in other_threads:
            t.join()
        results["followers"] = {
            "streams": args.followers,
            "open": stats["open"],
            "errors": stats["errors"],
            "events_received": stats["events"],
            "web_rss_before_mb": rss_before / 2**20,
            "web_rss_peak_mb": peak / 2**20,
            "web_threads_peak": threads_peak,
            "others_meanwhile": summarize(others),
        }
        stop.set()
        print("followers", results["followers"], flush=True)  # noqa: T201
        results["uptime_after"] = subprocess.run(
            ["uptime"], capture_output=True, text=True
        ).stdout.strip()
        job.refresh_from_db()
        results["job"] = {"status": job.status, "step": job.step}
    finally:
        from jobs import services as jobs

        job.refresh_from_db()
        if not job.is_finished:
            jobs.job_cancel(job=job)
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
        log.close()
    print(json.dumps(results, indent=2, default=str))  # noqa: T201
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
