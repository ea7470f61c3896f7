"""Best-checkpoint selection and early stopping through the job path: what "auto" resolves to,
and a job created through the API, trained by a real Celery worker on the tiny model, whose
validation data gets worse as it learns: it stops early and its model is the best checkpoint."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from jobs import runner
from jobs.models import FineTuneJob
from models_app.models import FineTunedModel
from tests.conftest import Persona, validated_upload
from tests.engine.conftest import word_rows
from tests.workers import celery_worker, purge_broker, wait_for


def upload(owner: Persona, name: str, rows: list[dict[str, Any]]) -> str:
    return validated_upload(owner, name, "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.mark.parametrize(
    ("asked", "setting", "validation", "forecast_run", "expected"),
    [
        ("auto", "auto", True, False, (True, runner.AUTO_PATIENCE)),
        ("auto", "off", True, False, (False, None)),  # the server wants OpenAI's behaviour
        (True, "off", True, False, (True, runner.AUTO_PATIENCE)),  # the request asked
        (3, "auto", True, False, (True, 3)),
        (False, "auto", True, False, (False, None)),
        ("auto", "auto", False, False, (False, None)),  # nothing to evaluate on
        ("auto", "auto", True, True, (False, None)),  # a forecast measures every epoch alike
    ],
)
def test_what_early_stopping_resolves_to(
    settings: Any,
    asked: Any,
    setting: str,
    validation: bool,
    forecast_run: bool,
    expected: tuple[bool, int | None],
) -> None:
    settings.TUNERY_EARLY_STOPPING = setting
    job = FineTuneJob(early_stopping=asked, scaling_forecast=forecast_run)
    job.validation_file_id = 1 if validation else None

    resolved = runner.early_stopping(job)

    assert (resolved["best_checkpoint"], resolved["early_stopping_patience"]) == expected


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_job_that_overfits_stops_early_and_keeps_its_best_checkpoint(
    owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    purge_broker()
    # Full fine-tuning: LoRA on the random tiny model barely moves its loss (its untrained output
    # head caps the logits), so whether validation got worse was decided by rounding noise.
    tiny_base.base_lr_full = 2e-2
    tiny_base.save(update_fields=["base_lr_full"])
    rows = word_rows(16)
    training = upload(owner, "train.jsonl", rows)
    # Same prompts, a word the training answers never use: learning them makes these worse
    # (validation loss 5.2 after epoch 1, 6.1-7.0 after 2-6 on this setup).
    validation = upload(
        owner, "valid.jsonl", [{**r, "completion": " zebra zebra zebra"} for r in rows]
    )
    response = owner.api().post(
        "/v1/fine-tunes",
        json.dumps(
            {
                "model": "tiny-llama",
                "training_file": training,
                "validation_file": validation,
                "training_method": "full",
                "n_epochs": 6,
                "batch_size": 4,
                "learning_rate_multiplier": 1.0,
                "early_stopping": 1,
                "seed": 5,
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]

    with celery_worker():
        wait_for(
            lambda: FineTuneJob.objects.filter(
                public_id=job_id, status__in=FineTuneJob.FINISHED
            ).exists(),
            300,
            what="the job",
        )

    job = FineTuneJob.objects.get(public_id=job_id)
    assert job.status == "succeeded", job.error
    with job.result_file.blob.open("rb") as fh:
        table = list(csv.DictReader(io.StringIO(fh.read().decode())))
    # 4 steps an epoch: each epoch end was scored on the whole validation set, and free text by
    # the ROUGE-L of greedy generations (the loss breaks ties). The exact scores vary with the
    # CPU's kernels (bf16 where it has them), so the rule is checked against the file's own
    # numbers.
    scored = [
        (int(r["step"]), -float(r["generation/rouge_l"]), float(r["full_validation_loss"]))
        for r in table
        if r["full_validation_loss"]
    ]
    assert [step for step, *_ in scored] == [4 * (i + 1) for i in range(len(scored))]
    best_step = min(scored, key=lambda s: s[1:])[0]  # min keeps the earliest of equal scores
    assert job.final_metrics["best_checkpoint_step"] == best_step
    messages = list(job.events.values_list("message", flat=True))
    assert any(
        m.startswith(f"Best checkpoint: step {best_step} (epoch {best_step // 4}) has the highest")
        for m in messages
    ), messages
    marked = [r for r in table if r["selected_checkpoint"]]
    assert [int(r["step"]) for r in marked] == [best_step]
    assert marked[0]["selected_checkpoint"] == "1"
    # Learning the training answers makes the validation ones worse: it stops before epoch 6,
    # one evaluation (patience 1) after the best.
    assert len(scored) < 6, scored
    assert scored[-1][0] == best_step + 4
    assert any(m.startswith(f"Early stopping after epoch {len(scored)}/6") for m in messages)
    # The model is the best checkpoint's weights, not the last step's.
    model = FineTunedModel.objects.get(job=job)
    checkpoint = job.checkpoints.get(step_number=best_step)
    name = "model.safetensors"
    assert (Path(model.artifact_dir) / name).read_bytes() == (
        Path(checkpoint.path) / "model" / name
    ).read_bytes()
    # The checkpoints API lists the last 3 epochs it trained (up to 3 when it stopped sooner),
    # though the 6 it was given would have exposed epochs 4-6 only.
    listed = owner.api().get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    trained = [step for step, *_ in scored]
    assert sorted(c["step_number"] for c in listed) == trained[-3:]
    # and the events announce each of them, as they would the live ones.
    announced = [
        int(m.rsplit(" ", 1)[1]) for m in messages if re.fullmatch(r"Checkpoint \w+ at step \d+", m)
    ]
    assert sorted(announced) == trained[-3:]
