"""Lose no progress, never train twice: real workers killed, frozen and cut off from the database.

Real Celery worker processes on the real broker and PostgreSQL, tiny-model training. The reaper
runs in the test process with short thresholds (the defaults are 20 s / 45 s, see
jobs.liveness).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

import engine
from jobs import liveness, paths, runner, tasks
from jobs.models import Checkpoint, FineTuneJob, JobEvent
from tests.conftest import Persona, sms_subset, validated_upload
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Worker settings: a resume checkpoint every 5 steps, a heartbeat every second.
EVERY = 5
WORKER_ENV = {"TUNERY_CHECKPOINT_EVERY_STEPS": str(EVERY), "TUNERY_HEARTBEAT_SECONDS": "1"}
# The resumed run's results file against an uninterrupted run's: same rows, and every number
# within this relative tolerance (both train on one thread; measured: identical).
RTOL = 1e-4


@pytest.fixture(autouse=True)
def clean_broker() -> None:
    purge_broker()


@pytest.fixture
def reaper(settings: Any) -> Any:
    settings.TUNERY_HEARTBEAT_LOST_SECONDS = 2
    settings.TUNERY_HEARTBEAT_STALE_SECONDS = 4

    def run_until_queued(job: FineTuneJob, timeout: float = 30) -> tuple[float, float]:
        """Run the reaper every 0.2 s; seconds until "worker lost" showed, and until requeued."""
        start = time.monotonic()
        lost_after = None
        while time.monotonic() - start < timeout:
            tasks.requeue_stale_jobs.run()
            job.refresh_from_db()
            if lost_after is None and job.worker_lost_at is not None:
                lost_after = time.monotonic() - start
            if job.status == FineTuneJob.Status.QUEUED:
                assert lost_after is not None
                return lost_after, time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError("the reaper never requeued the job")

    return run_until_queued


def make_job(owner: Persona, tmp_path: Path, examples: int, **request: Any) -> FineTuneJob:
    from jobs import services
    from jobs.services import JobRequest

    data = sms_subset(tmp_path, examples).read_bytes()
    training_file = validated_upload(owner, "sms.jsonl", data)
    return services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=JobRequest(
            api="current",
            model="tiny-llama",
            training_file=training_file,
            n_epochs=1,
            batch_size=1,
            seed=3,
            **request,
        ),
    )  # enqueued on commit


def reported(job: FineTuneJob) -> int:
    """The last step the job's metrics events report: written each step, while the job row's
    `step` is written once a second (a tiny model may run a whole short job in between)."""
    return max(metrics_steps(job), default=0)


def metrics_steps(job: FineTuneJob, **filters: Any) -> list[int]:
    steps = (
        JobEvent.objects.filter(job=job, type="metrics", **filters)
        .order_by("id")
        .values_list("step", flat=True)
    )
    return [step for step in steps if step is not None]  # every metrics event has its step


def results_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_same_results(resumed: str, straight: str) -> float:
    """Same header and rows; numbers within RTOL. Returns the largest relative difference."""
    a, b = results_rows(resumed), results_rows(straight)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert list(a[0]) == list(b[0])
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if value == rb[key]:
                continue
            x, y = float(value), float(rb[key])
            worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
            assert x == pytest.approx(y, rel=RTOL), (ra["step"], key)
    return worst


def uninterrupted_results(job: FineTuneJob, tmp_path: Path) -> str:
    """The same job trained in one go, in this process, on one thread."""
    spec = runner.job_spec(job, tmp_path / "straight", resume_from=None)
    spec.checkpoints_dir = str(tmp_path / "straight-checkpoints")
    spec.num_threads = 1
    return Path(engine.train(spec).results_csv).read_text()


def test_a_worker_killed_mid_epoch_resumes_from_its_last_checkpoint_and_ends_as_if_never_killed(
    owner: Persona, tiny_base: Any, tmp_path: Path, reaper: Any
) -> None:
    # 1 epoch of N steps: the tiny model takes a few ms a step, so N is large enough that the
    # kill lands mid-epoch even when this test sees the step a few polls late.
    n = 96
    kill_at = random.randint(8, 40)  # noqa: S311 -- a random step, not a secret
    job = make_job(owner, tmp_path, examples=n)
    with celery_worker(cpus={0}, **WORKER_ENV) as first:  # type: ignore[arg-type]  # mypy matches **env to log/cpus too
        wait_for(lambda: reported(job) >= kill_at, 180, 0.02)
        os.killpg(first.pid, signal.SIGKILL)  # kill -9 mid-epoch: no cleanup, no goodbye
        first.wait()
    killed = time.monotonic()
    reached = max(metrics_steps(job, attempt=1))  # the last step the killed worker reported

    lost_after, queued_after = reaper(job)
    body = owner.api().get(f"/v1/fine_tuning/jobs/{job.public_id}").json()
    assert body["status"] == "queued"
    assert body["worker"]["lost"] is True and body["worker"]["name"].startswith("test-")
    with celery_worker(cpus={0}, **WORKER_ENV):  # type: ignore[arg-type]  # mypy matches **env to log/cpus too
        wait_for(lambda: FineTuneJob.objects.get(pk=job.pk).status in FineTuneJob.FINISHED, 180)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2

    # It resumed from a checkpoint at most EVERY steps older than where it was killed.
    resumed = JobEvent.objects.get(job=job, message__startswith="Fine-tuning job resumed from")
    resumed_from = resumed.step
    assert resumed_from is not None and 0 < reached - resumed_from <= EVERY, (
        kill_at,
        reached,
        resumed_from,
    )
    # Its results file is an uninterrupted run's.
    results = job.result_file.blob.open("rb").read().decode()
    worst = assert_same_results(results, uninterrupted_results(job, tmp_path))
    # And so are its events: each step reported once, the total known from the first.
    assert metrics_steps(job) == list(range(1, n + 1))
    first_metrics = JobEvent.objects.filter(job=job, type="metrics").order_by("id").first()
    assert first_metrics is not None and first_metrics.message.startswith(f"Step 1/{n}:")
    messages = list(job.events.filter(type="message").values_list("message", flat=True))
    for once in (
        "Fine-tuning job started",
        "Completed epoch 1/1",
        f"Checkpoint created at step {n}",
        "The job has successfully completed",
    ):
        assert messages.count(once) == 1, (once, messages)
    assert sum(m.startswith(f"Training on {n} examples") for m in messages) == 1
    assert sum(m.startswith("Worker lost, resuming") for m in messages) == 1
    assert sum(m.startswith("Worker stopped responding") for m in messages) == 1
    # The exposed checkpoint is on disk; the work dirs with optimizer state are gone.
    checkpoint = Checkpoint.objects.get(job=job)
    assert (Path(checkpoint.path) / "model" / "adapter_model.safetensors").is_file()
    assert paths.attempt_dirs(job) == []
    print(  # noqa: T201 -- the acceptance figures, shown with `pytest -s`
        f"\nkilled at step {reached} (target {kill_at}); resumed from step {resumed_from}; "
        f"'worker lost' after {lost_after:.1f} s, requeued after {queued_after:.1f} s "
        f"(thresholds 2 s / 4 s); resumed in {time.monotonic() - killed:.0f} s in all; "
        f"largest relative difference in the results file: {worst:.2g}"
    )


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_a_zombie_worker_that_wakes_after_its_job_was_requeued_writes_nothing(
    owner: Persona, tiny_base: Any, tmp_path: Path, reaper: Any
) -> None:
    job = make_job(owner, tmp_path, examples=90)  # long enough to freeze it mid-epoch
    env = {**WORKER_ENV, "TUNERY_DB_IDLE_IN_TRANSACTION_SECONDS": "3"}
    with celery_worker(cpus={0}, **env) as zombie:  # type: ignore[arg-type]  # mypy matches **env to log/cpus too
        wait_for(lambda: reported(job) >= 8, 180, 0.02)
        os.killpg(zombie.pid, signal.SIGSTOP)  # frozen: a stopped VM, a long GC pause...
        reaper(job)
        with celery_worker(cpus={1}, **env):  # type: ignore[arg-type]  # mypy matches **env to log/cpus too
            # The second attempt trains; then the first wakes up in the middle of it.
            wait_for(
                lambda: FineTuneJob.objects.filter(pk=job.pk, attempts=2, step__gte=16).exists(),
                180,
                0.1,
            )
            written_by_zombie = JobEvent.objects.filter(job=job, attempt=1).count()
            os.killpg(zombie.pid, signal.SIGCONT)
            zombie_log = Path(zombie.log_path)  # type: ignore[attr-defined]  # tests.workers sets it
            try:
                wait_for(
                    lambda: "attempt 1 stopped" in zombie_log.read_text(),
                    120,
                    what="the zombie to notice it lost the job",
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; its log ends:\n{zombie_log.read_text()[-4000:]}"
                ) from exc
            wait_for(lambda: FineTuneJob.objects.get(pk=job.pk).status in FineTuneJob.FINISHED, 180)
        model_dir = paths.models_root() / str(owner.org.pk) / job.public_id
        before = _digest(model_dir)
        time.sleep(1)  # whatever the zombie might still do, it would do it now

    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2, job.error
    # The zombie wrote no event, metric or checkpoint after it lost the job...
    assert JobEvent.objects.filter(job=job, attempt=1).count() <= written_by_zombie
    assert metrics_steps(job) == list(range(1, 91))
    assert Checkpoint.objects.filter(job=job).count() == 1
    # ...and deleted nothing of the live attempt's: the model is whole and unchanged.
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert _digest(model_dir) == before
    assert job.result_model.artifact_dir == str(model_dir)
    assert "attempt 2 stopped" not in zombie_log.read_text()


def test_a_job_rides_out_its_database_connections_being_killed(
    owner: Persona,
    tiny_base: Any,
    tmp_path: Path,
    settings: Any,
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pg_terminate_backend on every connection of the worker (training thread and heartbeat
    thread) mid-training: the job retries, reconnects and succeeds; the heartbeat goes on.

    The kill happens inside step 5's metrics callback, so it lands mid-training on a machine
    of any speed (a killer polling for step 5 from outside could fire after the last step)."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (pg_terminate_backend)")
    settings.TUNERY_HEARTBEAT_SECONDS = 0.2
    from django.db import connections

    job = make_job(owner, tmp_path, examples=40)
    outcome: dict[str, Any] = {}

    def kill_from_elsewhere() -> None:
        # From a connection of its own: the one pg_terminate_backend spares.
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                outcome["killed"] = cursor.fetchone()[0]
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc
        finally:
            connections.close_all()

    on_metrics = runner.JobHooks.on_metrics

    def on_metrics_killing_at_step_5(hooks: runner.JobHooks, row: dict[str, float]) -> None:
        if int(row.get("step", 0)) == 5 and "killed" not in outcome:
            killer = threading.Thread(target=kill_from_elsewhere)
            killer.start()
            killer.join()
            # Let the heartbeat thread meet its dead connection and recover before training
            # goes on (it beats every 0.2 s; the rest of training may take less).
            wait_for(lambda: f"heartbeat-{job.pk}: recovered after" in caplog.text, 30, 0.05)
        on_metrics(hooks, row)

    monkeypatch.setattr(runner.JobHooks, "on_metrics", on_metrics_killing_at_step_5)
    try:
        with caplog.at_level("INFO", logger="common.transient"):
            assert runner.job_run(job_id=job.pk) == runner.DONE
        job.refresh_from_db()
    finally:
        connections.close_all()  # whatever happened, later tests start on live connections

    assert "error" not in outcome, outcome
    assert outcome["killed"] >= 2  # the training thread's and the heartbeat's
    assert job.status == "succeeded", job.error
    assert f"job {job.public_id}: " in caplog.text and "transient error" in caplog.text
    assert f"heartbeat-{job.pk}: transient error" in caplog.text
    assert f"heartbeat-{job.pk}: recovered after" in caplog.text
    assert metrics_steps(job) == list(range(1, 41))


def test_the_reaper_waits_for_nothing_a_frozen_worker_holds(
    owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    """A worker frozen inside a transaction holds the job's row lock: the reaper skips the job
    (PostgreSQL ends that session after TUNERY_DB_IDLE_IN_TRANSACTION_SECONDS) instead of
    blocking."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL row locks")
    import psycopg

    job = make_job(owner, tmp_path, examples=4)
    stale = "now() - interval '1 hour'"
    with psycopg.connect(_dsn(), autocommit=False) as frozen:
        frozen.execute(
            f"UPDATE jobs_finetunejob SET status='running', attempts=1, heartbeat_at={stale} "
            "WHERE id = %s",
            [job.pk],
        )
        frozen.commit()
        frozen.execute("SELECT 1 FROM jobs_finetunejob WHERE id = %s FOR UPDATE", [job.pk])
        started = time.monotonic()
        assert liveness.jobs_reap() == []  # skipped, not blocked
        assert time.monotonic() - started < 5
    assert liveness.jobs_reap() == [job.pk]  # the lock is gone: requeued


def _dsn() -> str:
    db = connection.settings_dict
    return (
        f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} "
        f"user={db['USER'] or 'postgres'} dbname={db['NAME']}"
    )
