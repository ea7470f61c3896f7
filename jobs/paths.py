"""Where a job's files live under DATA_DIR (a leaf module: web and worker code both use it).

jobs/<job>/attempt-<K>/          the engine's output for attempt K: resume checkpoints
                                 (resume/step-N), compiled_results.csv, the final model.
                                 Each attempt writes only its own, so a zombie worker
                                 never touches the live attempt's files.
jobs/<job>/checkpoints/step-N/   per-epoch model checkpoints, what the API lists
cache/files/<file id>            local copies of uploaded files for training
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def jobs_root() -> Path:
    return Path(settings.DATA_DIR) / "jobs"


def job_dir(job: object) -> Path:
    return jobs_root() / str(getattr(job, "public_id", job))


def attempt_dir(job: object, attempt: int) -> Path:
    return job_dir(job) / f"attempt-{attempt}"


def attempt_dirs(job: object) -> list[Path]:
    """The job's attempt directories, oldest attempt first."""
    root = job_dir(job)
    found = [p for p in root.glob("attempt-*") if p.name[8:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[8:]))


def checkpoints_dir(job: object) -> Path:
    return job_dir(job) / "checkpoints"


def file_cache_root() -> Path:
    return Path(settings.DATA_DIR) / "cache" / "files"


def file_cache_path(file: object) -> Path:
    return file_cache_root() / str(getattr(file, "public_id", file))


def models_root() -> Path:
    return Path(settings.DATA_DIR) / "models"


def exports_root() -> Path:
    return Path(settings.DATA_DIR) / "exports"
