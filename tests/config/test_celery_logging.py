"""Beat's housekeeping tasks run every few seconds: their routine lines stay out of the log."""

from __future__ import annotations

import logging

from celery.app import trace

from config.celery import quiet_housekeeping


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def logger_with(loglevel: int) -> tuple[logging.Logger, Kept]:
    logger = logging.getLogger(f"tests.quiet.{loglevel}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    kept = Kept()
    logger.handlers = [kept]
    quiet_housekeeping(logger=logger, loglevel=loglevel)
    return logger, kept


def log_a_round(logger: logging.Logger, task: str, entry: str) -> None:
    """What beat and a worker log for one periodic task, in Celery's own calls' shapes."""
    logger.info("Scheduler: Sending due task %s (%s)", entry, task)
    logger.info(trace.LOG_RECEIVED, {"id": "1", "name": task, "args": "()", "kwargs": "{}"})
    context = {"id": "1", "name": task, "runtime": 0.01, "return_value": "[]"}
    logger.info(trace.LOG_SUCCESS, context)


def test_the_reapers_routine_lines_are_dropped_and_its_warnings_kept() -> None:
    logger, kept = logger_with(logging.INFO)
    log_a_round(logger, "jobs.requeue_stale_jobs", "requeue-stale-jobs")
    assert kept.lines == []
    logger.warning("Task %(name)s[%(id)s] failed", {"name": "jobs.requeue_stale_jobs", "id": "1"})
    # A user's task is reported as before.
    log_a_round(logger, "jobs.run_training_job", "not-a-schedule-entry")
    assert kept.lines[0] == "Task jobs.requeue_stale_jobs[1] failed"
    assert len(kept.lines) == 4 and "jobs.run_training_job" in kept.lines[-1]


def test_at_debug_nothing_is_dropped() -> None:
    logger, kept = logger_with(logging.DEBUG)
    log_a_round(logger, "jobs.requeue_stale_jobs", "requeue-stale-jobs")
    assert len(kept.lines) == 3
