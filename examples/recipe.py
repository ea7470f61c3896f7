"""What every recipe's `sdk.py` does the same way: its command line, and uploading the files,
training and waiting with the current `openai` SDK (OPENAI_BASE_URL and OPENAI_API_KEY)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from openai import OpenAI


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fine_tune(
    client: OpenAI, args: argparse.Namespace, *, suffix: str, train: Path, valid: Path | None
) -> str:
    """Upload the files, train, wait; return the fine-tuned model's name."""
    ids = []
    for path in (train, valid) if valid else (train,):
        with path.open("rb") as fh:
            ids.append(client.files.create(file=fh, purpose="fine-tune").id)
        client.files.wait_for_processing(ids[-1], poll_interval=1)
    job = client.fine_tuning.jobs.create(
        model=args.model,
        training_file=ids[0],
        validation_file=ids[1] if valid else None,
        suffix=suffix,
        hyperparameters={
            "n_epochs": args.n_epochs or "auto",
            "batch_size": args.batch_size or "auto",
        },
    )
    log(f"created {job.id}")
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(args.poll)
        job = client.fine_tuning.jobs.retrieve(job.id)
        log(f"{job.id}: {job.status}")
    if job.status != "succeeded" or job.fine_tuned_model is None:
        raise SystemExit(f"{job.id} ended {job.status}: {job.error}")
    return job.fine_tuned_model


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="the base model")
    parser.add_argument("--n-epochs", type=int, help="default: automatic")
    parser.add_argument("--batch-size", type=int, help="default: automatic")
    parser.add_argument("--poll", type=float, default=5, help="seconds between status checks")
    parser.add_argument("--json", action="store_true", help="print the raw responses as JSON")
    return parser.parse_args()
