"""Worker side of "compare checkpoints": score every exposed checkpoint of a job on its whole
validation set (engine.evaluate) and store one row per checkpoint. Never runs in a web request.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from jobs import checkpoints
from jobs.models import Checkpoint, CheckpointComparison, FineTuneJob
from jobs.runner import job_spec, local_copy

logger = logging.getLogger(__name__)

Status = CheckpointComparison.Status


def comparison_run(*, job_id: int) -> None:
    # Claim: a duplicate delivery finds the comparison running or done and does nothing.
    if not CheckpointComparison.objects.filter(job_id=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING
    ):
        return
    job = FineTuneJob.objects.select_related("base_model", "training_file", "validation_file").get(
        pk=job_id
    )
    try:
        rows = _score(job)
    except Exception as exc:  # a bad checkpoint or file is the user's to see, not a lost task
        logger.exception("Comparing the checkpoints of %s failed", job.public_id)
        CheckpointComparison.objects.filter(job_id=job_id, status=Status.RUNNING).update(
            status=Status.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=timezone.now()
        )
        return
    CheckpointComparison.objects.filter(job_id=job_id, status=Status.RUNNING).update(
        status=Status.SUCCEEDED, rows=rows, error="", finished_at=timezone.now()
    )


def _score(job: FineTuneJob) -> list[dict[str, object]]:
    from engine.evaluate import evaluate_models  # torch: only in the worker that scores

    usable = [
        c
        for c in Checkpoint.objects.filter(job=job, exposed=True).order_by("step_number")
        if checkpoints.has_files(c)
    ]
    if not usable:
        raise ValueError("No checkpoint of this job has model files left to score.")
    spec = job_spec(job, job_dir_placeholder(job), resume_from=None)
    spec.validation_path = local_copy(job.validation_file) if job.validation_file else None
    scores = evaluate_models(spec, [checkpoints.model_dir_of(c) for c in usable])
    return [
        {
            "checkpoint": c.public_id,
            "name": c.name,
            "step_number": c.step_number,
            "epoch": c.epoch,
            "metrics": score,
        }
        for c, score in zip(usable, scores, strict=True)
    ]


def job_dir_placeholder(job: FineTuneJob) -> Path:
    # The spec's output dir is never written by scoring; point it somewhere harmless.
    return Path(settings.DATA_DIR) / "scratch" / job.public_id
