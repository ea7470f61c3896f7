"""Checkpoints as models: their names, which are exposed, where their files live, and where a
job resumes from.

Two kinds of checkpoint (engine/checkpoints.py):
- resume checkpoints, `jobs/<job>/attempt-<K>/resume/step-N/` (model, optimizer, scheduler,
  RNG, state): internal, written on a step/wall-clock cadence, at epoch ends and when a run is
  stopped (cancel, pause). The next attempt (after a crash or a resume) continues from the
  newest one (`resume_point`). Never listed, never usable as a model;
- model checkpoints, `jobs/<job>/checkpoints/step-N/model/` (the adapter for LoRA, the weights
  for full fine-tuning; hard links to the resume checkpoint's files): one per epoch end, each
  a `Checkpoint` row.

OpenAI's policy, kept here: of the model checkpoints, those of the last 3 epochs are exposed
(listed by `GET /fine_tuning/jobs/{id}/checkpoints` and usable as a model named
`ft:{base}:{org}:{suffix}:{id}:ckpt-step-{N}`); of the last 3 epochs trained, once a job that
stopped early has succeeded (`expose_trained_epochs`). Their files stay where the engine wrote them,
while the job runs and after it succeeds: that one directory is what `model_resolve` serves,
what sharing grants, what the job page exports and what a new job continues from. Only the
retention GC removes them (jobs.retention: earlier epochs once the job finished, exposed ones
after the policy's `checkpoint_days` unless shared or continued from); a checkpoint without
files stops resolving (a 404, like a deleted model).

A leaf module (models and paths; the engine's checkpoint reader only when asked where to
resume), so both the runner and the web side import it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Max

from common import artifacts
from common.store import COMPLETE, get_tree
from jobs import paths
from jobs.models import Checkpoint, FineTuneJob

EXPOSED_EPOCHS = 3


def current_model_name(job: FineTuneJob) -> str:
    """`ft:{base}:{org}:{suffix}:{id}` with the last 8 (random base62) characters of the job id."""
    return f"ft:{job.base_model.name}:{job.organization.slug}:{job.suffix}:{job.public_id[-8:]}"


def checkpoint_name(job: FineTuneJob, step: int) -> str:
    return f"{current_model_name(job)}:ckpt-step-{step}"


def exposure(job: FineTuneJob, info: Any) -> dict[str, Any]:
    """The fields of a new checkpoint row: its name, and whether it is exposed.

    The engine writes a model checkpoint at each epoch end only (a stop writes a resume
    checkpoint, not a model one), so `info.epoch` is the epoch it ends.
    """
    n_epochs = int((job.resolved_hyperparameters or {}).get("n_epochs") or 0)
    exposed = (
        info.epoch >= 1
        and not job.is_forecast_run  # a forecast's ¼ and ½ runs are measurements, not models
        and info.epoch > n_epochs - EXPOSED_EPOCHS
    )
    return {"name": checkpoint_name(job, info.step), "exposed": exposed}


def expose_trained_epochs(job: FineTuneJob) -> list[int]:
    """On success: the last EXPOSED_EPOCHS epochs the job trained are exposed; the steps of
    those that were not already. `exposure` counts back from `n_epochs`, which a job that
    stopped early (docs/adr/0018) never reached: without this it would list fewer checkpoints,
    or none at all."""
    if job.is_forecast_run:
        return []
    last = Checkpoint.objects.filter(job=job).aggregate(last=Max("epoch"))["last"]
    if last is None:
        return []
    hidden = Checkpoint.objects.filter(
        job=job, epoch__gt=last - EXPOSED_EPOCHS, epoch__gte=1, exposed=False
    )
    steps = sorted(hidden.values_list("step_number", flat=True))
    hidden.update(exposed=True)
    return steps


def stored_key(checkpoint: Checkpoint) -> str:
    """The checkpoint's key in the artifact store (from ids: `path` is the writing host's)."""
    return f"jobs/{checkpoint.job.public_id}/checkpoints/step-{checkpoint.step_number}"


def model_dir_of(checkpoint: Checkpoint) -> str:
    if artifacts.is_remote() and not Path(checkpoint.path).is_dir():
        # Written on another host: this host's cached copy of it, fetched once.
        try:
            return str(artifacts.local_path(stored_key(checkpoint)) / "model")
        except FileNotFoundError:
            pass  # removed by retention: no files, as below
    return str(Path(checkpoint.path) / "model")


def has_files(checkpoint: Checkpoint) -> bool:
    if artifacts.is_remote() and not Path(checkpoint.path).is_dir():
        return artifacts.tree_exists(stored_key(checkpoint))
    return Path(model_dir_of(checkpoint)).is_dir()


def stored_attempts(job: FineTuneJob) -> list[str]:
    """Keys of the job's attempt dirs in a remote store (resume checkpoints)."""
    prefix = f"jobs/{getattr(job, 'public_id', job)}"
    found = {k.split("/")[2] for k in artifacts.store().list(prefix)}
    return sorted(f"{prefix}/{a}" for a in found if a.startswith("attempt-"))


def _fetch_stored_resume(job: FineTuneJob) -> Path | None:
    """The newest complete resume checkpoint in a remote store, downloaded to the place under
    DATA_DIR the attempt that wrote it had it (so it is found as a local one): how a job
    resumes on another host than the one that died."""
    newest: tuple[int, str] | None = None
    for key in artifacts.store().list(f"jobs/{job.public_id}"):
        parts = key.split("/")  # jobs/<job>/attempt-K/resume/step-N/.complete
        if len(parts) == 6 and parts[3] == "resume" and parts[5] == COMPLETE:
            step = int(parts[4].removeprefix("step-"))
            if newest is None or step > newest[0]:
                newest = (step, "/".join(parts[:5]))
    if newest is None:
        return None
    dest = Path(settings.DATA_DIR) / newest[1]
    tmp = dest.with_name(f".fetch-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    get_tree(artifacts.store(), newest[1], tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def resume_point(job: FineTuneJob) -> Path | None:
    """The newest resume checkpoint any attempt of the job left (None: start over): on this
    host's disk, or else (a remote store) in the store."""
    from engine import checkpoints as ckpt  # torch: only where a resume point is needed

    found = [p for d in paths.attempt_dirs(job) for p in ckpt.list_resume(d)]
    local = max(found, key=lambda p: ckpt.load_state(p).step, default=None)
    if artifacts.is_remote():
        newest_stored = _newest_stored_step(job)
        if newest_stored is not None and (
            local is None or ckpt.load_state(local).step < newest_stored
        ):
            return _fetch_stored_resume(job)
    return local


def _newest_stored_step(job: FineTuneJob) -> int | None:
    steps = [
        int(parts[4].removeprefix("step-"))
        for parts in (k.split("/") for k in artifacts.store().list(f"jobs/{job.public_id}"))
        if len(parts) == 6 and parts[3] == "resume" and parts[5] == COMPLETE
    ]
    return max(steps, default=None)


def resume_step(job: FineTuneJob) -> int:
    """The step the job's next attempt continues from (0: from the beginning)."""
    from engine import checkpoints as ckpt

    point = resume_point(job)
    return ckpt.load_state(point).step if point is not None else 0
