"""Log finished fine-tune jobs to Weights & Biases after the fact (like `openai wandb sync`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobs import wandb as job_wandb


class Command(BaseCommand):
    help = (
        "Log succeeded fine-tune jobs to Weights & Biases from the database and their results "
        "files. Offline (a run directory for `wandb sync`) unless WANDB_API_KEY is set."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-i", "--id", dest="job_id", help="the job to log (ftjob-… or ft-…)")
        parser.add_argument(
            "-n",
            "--n_fine_tunes",
            dest="limit",
            type=int,
            help="log the N most recent succeeded jobs (default: all of them)",
        )
        parser.add_argument("--project", help="W&B project (default: the job's, else 'tunery')")
        parser.add_argument("--entity", help="W&B entity (default: the job's, else yours)")
        parser.add_argument(
            "--force", action="store_true", help="log jobs that already have a run again"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("-n must be at least 1.")
        try:
            jobs = job_wandb.jobs_to_sync(job_id=options["job_id"], limit=limit)
            if options["job_id"] is not None:
                job_wandb.check_syncable(jobs[0])
        except job_wandb.WandbSyncError as exc:
            raise CommandError(str(exc)) from None
        failed = 0
        for job in jobs:
            try:
                ref = job_wandb.job_sync(
                    job=job,
                    project=options["project"],
                    entity=options["entity"],
                    force=options["force"],
                )
            except Exception as exc:  # one job's failure must not stop the others
                failed += 1
                self.stderr.write(f"{job.public_id}: not logged ({type(exc).__name__}: {exc})")
                continue
            if ref is None:
                self.stdout.write(
                    f"{job.public_id}: already logged at {job.wandb_run} (--force logs it again)"
                )
            else:
                self.stdout.write(f"{job.public_id}: logged to {job_wandb.describe(ref)}")
        if not jobs:
            self.stdout.write("No succeeded fine-tune jobs to log.")
        if failed:
            raise CommandError(f"{failed} of {len(jobs)} job(s) could not be logged.")
