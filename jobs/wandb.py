"""Weights & Biases for fine-tune jobs (reference §5.1 `integrations`, §8.6 `openai wandb sync`).

Two ways in, both here so they log the same things the same way:

* live, from the training runner (`JobRun`): a job created with a `wandb` integration, or any
  job of an organization with `wandb_enabled`, logs its config, every results row at its step,
  its training and validation files as artifacts, and the final model name;
* after the fact (`job_sync`, behind `manage.py wandb_sync`): a succeeded job, from the database
  and its stored results file.

The run id is the job id, as `openai wandb sync` makes it, so a crash-resumed job goes on in the
same run and the 0.28 CLI finds a job that Tunery already logged. Without WANDB_API_KEY the run
is written offline under TUNERY_WANDB_DIR/<job-id> for `wandb sync` to upload later.

wandb is imported only when a job uses it: it is heavy, and most jobs never do.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from django.conf import settings

from common.redact import redact
from jobs.models import FineTuneJob, JobEvent
from jobs.serializers import file_json

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

    from datasets.models import File

logger = logging.getLogger(__name__)

MAX_TAG_LENGTH = 64  # W&B refuses longer tags


class WandbSyncError(Exception):
    """A job that manage.py wandb_sync cannot log; the message says why."""


@dataclass(frozen=True)
class Target:
    project: str
    entity: str | None
    name: str
    tags: tuple[str, ...]


def _integration(job: FineTuneJob) -> dict[str, Any] | None:
    for item in job.integrations or []:
        if isinstance(item, dict) and item.get("type") == "wandb":
            wb = item.get("wandb")
            return wb if isinstance(wb, dict) else {}
    return None


def target_for(
    job: FineTuneJob,
    *,
    project: str | None = None,
    entity: str | None = None,
    explicit: bool = False,
) -> Target | None:
    """Where `job` logs: its own `wandb` integration, else the defaults when its organization
    switched W&B on. None when neither asked for it, unless `explicit` (manage.py wandb_sync)."""
    wb = _integration(job)
    if wb is None and not explicit and not job.organization.wandb_enabled:
        return None
    wb = wb or {}
    # OpenAI tags every run `openai/finetune`, `openai/{base-model}`, `openai/{ftjob-id}`.
    tags = ["tunery/finetune", f"tunery/{job.base_model.name}", f"tunery/{job.public_id}"]
    extra = wb.get("tags")
    tags += [str(t) for t in extra if t] if isinstance(extra, list) else []
    return Target(
        project=project or wb.get("project") or settings.TUNERY_WANDB_PROJECT,
        entity=entity or wb.get("entity") or settings.TUNERY_WANDB_ENTITY,
        name=wb.get("name") or job.public_id,
        tags=tuple(dict.fromkeys(t[:MAX_TAG_LENGTH] for t in tags)),
    )


def wandb_mode() -> str:
    """WANDB_MODE when set; otherwise online with an API key, offline without one."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def run_root(job: FineTuneJob) -> Path:
    """The job's W&B directory; offline runs land in its `wandb/` subfolder."""
    return Path(settings.TUNERY_WANDB_DIR) / job.public_id


def is_offline_ref(ref: str) -> bool:
    """`FineTuneJob.wandb_run` holds a run URL (online) or a directory to `wandb sync`."""
    return bool(ref) and "://" not in ref


def _config(job: FineTuneJob) -> dict[str, Any]:
    validation = job.validation_file
    return {
        "id": job.public_id,
        "api": str(job.api),
        "model": job.model,
        "base_model": job.base_model.name,
        "method": str(job.method),
        "hyperparameters": job.resolved_hyperparameters or job.hyperparameters,
        "classification": job.classification or None,
        "training_file": job.training_file.public_id,
        "validation_file": validation.public_id if validation else None,
        "n_train": job.training_file.example_count,
        "n_valid": validation.example_count if validation else 0,
        "suffix": job.suffix or None,
        "seed": job.seed,
        "organization_id": job.organization.public_id,
        "created_at": job.created_at.isoformat(),
    }


def _init(job: FineTuneJob, target: Target, *, resume: Literal["allow"] | None) -> Run:
    import wandb

    root = run_root(job)
    root.mkdir(parents=True, exist_ok=True)
    mode: Any = wandb_mode()  # a Literal to wandb's types; WANDB_MODE's values are wandb's own
    # wandb stages artifact files under WANDB_DATA_DIR (read from the environment only, default
    # ~/.local/share/wandb) and an offline run points at them until `wandb sync`: keep them
    # under DATA_DIR beside the runs, where they outlive the worker's home directory.
    os.environ.setdefault("WANDB_DATA_DIR", str(Path(settings.TUNERY_WANDB_DIR) / ".data"))
    return wandb.init(
        project=target.project,
        entity=target.entity,
        name=target.name,
        id=job.public_id,
        tags=list(target.tags),
        config=_config(job),
        job_type="fine-tune",
        dir=str(root),
        mode=mode,
        resume=resume,
        reinit="create_new",  # a worker runs job after job; never reuse a leftover run
        settings=wandb.Settings(
            console="off",  # the worker's own log is not the run's
            disable_code=True,
            disable_git=True,
            disable_job_creation=True,
        ),
    )


def _ref(run: Run) -> str:
    if run.offline:
        return str(Path(run.sync_dir).parent)
    return run.url or ""


def _log_files(run: Run, job: FineTuneJob) -> None:
    """The training and validation files, as artifacts named like `openai wandb sync`'s."""
    import wandb

    files: list[tuple[str, str, File | None]] = [
        ("train", "training_files", job.training_file),
        ("valid", "validation_files", job.validation_file),
    ]
    for prefix, kind, file in files:
        if file is None or not file.blob.name:
            continue  # none, or deleted since: the row stays for the job, the blob is gone
        name = re.sub(r"[^a-zA-Z0-9_\-.]", "_", f"{prefix}-{file.filename}")
        artifact = wandb.Artifact(name, type=kind, metadata=file_json(file))
        # From storage, not a worker's cache: the blob may live in S3.
        with file.blob.open("rb") as src, artifact.new_file(file.filename, mode="xb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        aliases = ["latest", file.public_id]
        if run.offline:
            run.log_artifact(artifact, aliases=aliases)  # wandb can't *use* artifacts offline
        else:
            run.use_artifact(artifact, aliases=aliases)  # inputs of the run, as OpenAI's are


def metrics_of(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """A results row as W&B wants it: the step apart, and only the values computed this step."""
    step = int(float(row["step"]))
    values: dict[str, float] = {}
    for key, value in row.items():
        if key == "step" or value is None or value == "":
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue  # a non-numeric column is nothing to chart
        if math.isfinite(number):
            values[key] = number
    return step, values


def _warn(job: FineTuneJob, message: str) -> None:
    # W&B's exception text names its directories: no server paths in events.
    message = redact(message)
    JobEvent.objects.create(job=job, level=JobEvent.Level.WARN, message=message, data={})


def describe(ref: str) -> str:
    """Where a run is, for events and the command's output."""
    if is_offline_ref(ref):
        return f"{ref} (offline; upload it with `wandb sync {ref}`)"
    return ref


class JobRun:
    """The training runner's handle on a job's live W&B run.

    No method raises: W&B is a nice-to-have next to the training. The first failure becomes one
    warning event on the job, and logging stops while training goes on.
    """

    def __init__(self, job: FineTuneJob) -> None:
        self.job = job
        self.run: Run | None = None

    def start(self, *, resume: bool) -> None:
        """Open the run (the same run id again when the job resumes from a checkpoint)."""
        target = target_for(self.job)
        if target is None or wandb_mode() == "disabled":
            return
        try:
            self.run = _init(self.job, target, resume="allow")
            if not resume:  # a resumed job logged its files on its first attempt
                _log_files(self.run, self.job)
            ref = _ref(self.run)
            FineTuneJob.objects.filter(pk=self.job.pk).update(wandb_run=ref)
            self.job.wandb_run = ref
            message = redact(f"Logging to Weights & Biases: {describe(ref)}")
            JobEvent.objects.create(job=self.job, message=message, data={})
        except Exception as exc:
            self._fail(exc)

    def log(self, row: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            step, values = metrics_of(row)
            self.run.log(values, step=step)
        except Exception as exc:
            self._fail(exc)

    def close(self) -> None:
        """Finish the run with the job's final state: its model name and status."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            final = FineTuneJob.objects.filter(pk=self.job.pk).values("status", "fine_tuned_model")[
                0
            ]
            if final["fine_tuned_model"]:
                run.summary["fine_tuned_model"] = final["fine_tuned_model"]
            if final["status"] in FineTuneJob.FINISHED:
                # `openai wandb sync` skips a run whose status is "succeeded" unless --force.
                run.summary["status"] = final["status"]
            # A job handed back to the queue is unfinished: its next attempt resumes this run.
            run.finish(exit_code=0 if final["status"] == FineTuneJob.Status.SUCCEEDED else 1)
        except Exception as exc:
            self.run = run
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        logger.warning("W&B logging failed for job %s", self.job.public_id, exc_info=True)
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                logger.debug("Could not close the W&B run", exc_info=True)
        _warn(
            self.job,
            f"Weights & Biases logging failed ({type(exc).__name__}: {exc}); "
            "the job goes on without it",
        )


# --- after the fact: manage.py wandb_sync ----------------------------------------------------


def jobs_to_sync(*, job_id: str | None = None, limit: int | None = None) -> list[FineTuneJob]:
    """One job by id (any status: job_sync says why it can't be logged), or the `limit` most
    recent succeeded jobs of every organization, oldest first as `openai wandb sync` does."""
    jobs = FineTuneJob.objects.select_related(
        "organization", "base_model", "training_file", "validation_file", "result_file"
    )
    if job_id is not None:
        job = jobs.filter(public_id=job_id).first()
        if job is None:
            raise WandbSyncError(f"No fine-tune job with id {job_id!r}.")
        return [job]
    recent = jobs.filter(status=FineTuneJob.Status.SUCCEEDED).order_by("-created_at", "-id")
    return list(recent[:limit] if limit else recent)[::-1]


def _results_rows(job: FineTuneJob) -> Iterator[dict[str, str]]:
    assert job.result_file is not None
    with job.result_file.blob.open("rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def check_syncable(job: FineTuneJob) -> None:
    """Raise WandbSyncError unless the job succeeded and stored its results file."""
    if job.status != FineTuneJob.Status.SUCCEEDED:
        raise WandbSyncError(
            f"Job {job.public_id} has the status {job.status!r}; only succeeded jobs are logged."
        )
    if job.result_file is None:
        raise WandbSyncError(f"Job {job.public_id} has no results file to log.")


def job_sync(
    *,
    job: FineTuneJob,
    project: str | None = None,
    entity: str | None = None,
    force: bool = False,
) -> str | None:
    """Log a succeeded job to W&B from the database and its stored results file.

    Returns the run's URL or directory, or None when the job already has a run and `force` is
    not set. Raises WandbSyncError for a job that can't be logged; wandb's own errors pass.
    """
    check_syncable(job)
    if job.wandb_run and not force:
        return None
    if wandb_mode() == "disabled":
        raise WandbSyncError("WANDB_MODE is 'disabled': nothing would be logged.")
    target = target_for(job, project=project, entity=entity, explicit=True)
    assert target is not None
    if force:
        # `wandb sync` of the job's directory would otherwise upload the old run as well.
        shutil.rmtree(run_root(job) / "wandb", ignore_errors=True)
    run = _init(job, target, resume=None)
    try:
        for row in _results_rows(job):
            step, values = metrics_of(row)
            run.log(values, step=step)
        _log_files(run, job)
        run.summary["fine_tuned_model"] = job.fine_tuned_model
        run.summary["status"] = FineTuneJob.Status.SUCCEEDED
        ref = _ref(run)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
    FineTuneJob.objects.filter(pk=job.pk).update(wandb_run=ref)
    job.wandb_run = ref
    return ref
