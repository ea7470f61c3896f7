from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from common.ids import random_id


def early_stopping_auto() -> str:
    """The default of FineTuneJob.early_stopping (a callable: Django wants one for JSONField)."""
    return "auto"


class FineTuneJob(models.Model):
    """One fine-tune, shown through the legacy (/v1/fine-tunes) or current API.

    The state machine is shared; each API maps it to its own vocabulary (jobs.serializers).
    """

    class Api(models.TextChoices):
        LEGACY = "legacy"
        CURRENT = "current"

    class Status(models.TextChoices):
        QUEUED = "queued"  # legacy "pending"
        RUNNING = "running"
        # Asked to pause: the running attempt checkpoints and exits (docs/adr/0009-paused-status.md).
        PAUSING = "pausing"
        PAUSED = "paused"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    UNFINISHED = (Status.QUEUED, Status.RUNNING, Status.PAUSING, Status.PAUSED)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    class Method(models.TextChoices):
        LORA = "lora", "LoRA"
        FULL = "full", "Full"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    api = models.CharField(max_length=8, choices=Api)
    organization = models.ForeignKey("accounts.Organization", models.CASCADE, related_name="jobs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The model name as the client sent it, and what it resolved to.
    model = models.CharField(max_length=300)
    base_model = models.ForeignKey("models_app.BaseModel", models.PROTECT, related_name="jobs")
    parent_model = models.ForeignKey(
        "models_app.FineTunedModel", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Continued from a checkpoint (its own org's or one shared with it) instead of a model.
    parent_checkpoint = models.ForeignKey(
        "jobs.Checkpoint", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    training_file = models.ForeignKey("datasets.File", models.PROTECT, related_name="+")
    validation_file = models.ForeignKey(
        "datasets.File", models.PROTECT, null=True, blank=True, related_name="+"
    )
    method = models.CharField(max_length=8, choices=Method, default=Method.LORA)

    class MethodType(models.TextChoices):
        """OpenAI's `method.type`: what is optimised (`method` above: which weights change)."""

        SUPERVISED = "supervised", "Supervised"
        DPO = "dpo", "DPO"

    method_type = models.CharField(max_length=16, choices=MethodType, default=MethodType.SUPERVISED)
    # As requested (values may be None/"auto") and as resolved by the worker; DPO adds "beta".
    hyperparameters = models.JSONField(default=dict, blank=True)
    resolved_hyperparameters = models.JSONField(default=dict, blank=True)
    classification = models.JSONField(default=dict, blank=True)
    suffix = models.CharField(max_length=64, blank=True)
    seed = models.PositiveIntegerField()
    metadata = models.JSONField(null=True, blank=True)
    integrations = models.JSONField(default=list, blank=True)
    scaling_forecast = models.BooleanField(default=False)
    parent_job = models.ForeignKey(
        "self", models.CASCADE, null=True, blank=True, related_name="children"
    )
    data_fraction = models.FloatField(default=1.0)
    # Best-checkpoint selection and early stopping as asked: "auto", true, false or a patience
    # (jobs.runner.early_stopping resolves it; docs/adr/0018).
    early_stopping = models.JSONField(default=early_stopping_auto, blank=True)
    # On a scaling-forecast parent, once its three runs have finished (jobs.forecast).
    forecast = models.JSONField(null=True, blank=True)
    # The devices the job asked for (Tunery's `device_class`/`device_count`). An empty class
    # follows the base model's (then TUNERY_DEFAULT_DEVICE_CLASS) when the message is sent, so
    # an admin moving a base to another class moves its queued jobs too (jobs.routing). No
    # count: the worker's TUNERY_TRAIN_PROCESSES (1 unless its admin set more).
    device_class = models.CharField(max_length=40, blank=True, default="")
    device_count = models.PositiveSmallIntegerField(null=True, blank=True)

    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED)
    error = models.JSONField(null=True, blank=True)  # {"code", "message", "param"}
    # Written only by jobs.runner while RUNNING.
    progress = models.FloatField(default=0.0)  # 0..1
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    trained_tokens = models.PositiveBigIntegerField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    estimated_finish = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Incremented by each claim; every write of an attempt is guarded by it (jobs.runner).
    attempts = models.PositiveSmallIntegerField(default=0)
    # Pause/resume cycles: each resume claims the job again without a crash, so the reaper counts
    # `attempts - pauses` against TUNERY_MAX_JOB_ATTEMPTS.
    pauses = models.PositiveSmallIntegerField(default=0)
    paused_at = models.DateTimeField(null=True, blank=True)
    # Liveness (jobs.liveness): who runs the current attempt, when the reaper found it silent,
    # when its step last advanced and how long a step takes (to tell a hung worker).
    worker = models.CharField(max_length=200, blank=True)
    worker_lost_at = models.DateTimeField(null=True, blank=True)
    step_at = models.DateTimeField(null=True, blank=True)
    seconds_per_step = models.FloatField(null=True, blank=True)
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=4, default=0)
    fine_tuned_model = models.CharField(max_length=300, null=True, blank=True)
    result_file = models.ForeignKey(
        "datasets.File", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    wandb_run = models.CharField(max_length=500, blank=True)
    # The last step's metrics (and full_validation_* when measured), written on success.
    final_metrics = models.JSONField(default=dict, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["organization", "-created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress__gte=0) & Q(progress__lte=1), name="progress_range"
            )
        ]

    def __str__(self) -> str:
        return self.public_id

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("jobs:detail", args=[self.public_id])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_forecast_run(self) -> bool:
        """One of the ¼ and ½ runs of a scaling forecast: measured, never kept as a model."""
        return self.parent_job_id is not None

    @property
    def in_forecast(self) -> bool:
        """A forecast's parent or one of its runs: the three must be measured alike."""
        return self.scaling_forecast or self.is_forecast_run

    @property
    def target_device_class(self) -> str:
        """The class whose workers run it: its own, its base model's, the default ("": any
        worker on the plain `training` queue). Reads base_model: select it with the job."""
        return (
            self.device_class
            or self.base_model.device_class
            or settings.TUNERY_DEFAULT_DEVICE_CLASS
        )


class JobEvent(models.Model):
    class Level(models.TextChoices):
        INFO = "info"
        WARN = "warn"
        ERROR = "error"

    class Type(models.TextChoices):
        MESSAGE = "message"
        METRICS = "metrics"

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    job = models.ForeignKey(FineTuneJob, models.CASCADE, related_name="events")
    created_at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=8, choices=Level, default=Level.INFO)
    type = models.CharField(max_length=8, choices=Type, default=Type.MESSAGE)
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)
    # Which attempt wrote it, at which training step: a resumed attempt drops what the lost
    # one wrote after the checkpoint it resumes from, so that no step is reported twice.
    attempt = models.PositiveSmallIntegerField(null=True, blank=True)
    step = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.message

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.public_id:
            self.public_id = random_id("ftevent-", 24)
        super().save(*args, **kwargs)


class Checkpoint(models.Model):
    """A model checkpoint the engine wrote at an epoch end. The `exposed` ones (last 3 epochs:
    OpenAI's policy) are listed by the API and usable as models under `name`
    (`ft:…:ckpt-step-N`). `path` is `jobs/<job>/checkpoints/step-N`; the loadable model is its
    `model/` (jobs.checkpoints), kept there until the retention GC removes it."""

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    job = models.ForeignKey(FineTuneJob, models.CASCADE, related_name="checkpoints")
    step_number = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict)
    path = models.CharField(max_length=500)
    name = models.CharField(max_length=300, blank=True, db_index=True)
    exposed = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step_number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step_number"], name="one_checkpoint_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} step {self.step_number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.public_id:
            self.public_id = random_id("ftckpt_", 24)
        super().save(*args, **kwargs)


class CheckpointComparison(models.Model):
    """Every exposed checkpoint of a job scored on its whole validation set, by a worker."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    job = models.OneToOneField(FineTuneJob, models.CASCADE, related_name="comparison")
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED)
    # [{"checkpoint": public id, "name", "step_number", "epoch", "metrics": {...}}, ...]
    rows = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    requested_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"comparison of {self.job_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


class RetentionPolicy(models.Model):
    """What Tunery keeps on disk, and for how long: one row, edited in the admin.

    Its defaults come from the TUNERY_RETAIN_* / TUNERY_FILE_CACHE_* settings when the row is
    first created; jobs.retention applies it (the hourly `jobs.collect_garbage` task).
    """

    work_days = models.PositiveIntegerField(
        help_text="Days to keep the work directories (resume checkpoints, partial results) of "
        "cancelled and failed jobs. 0: remove them at the next collection."
    )
    checkpoint_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days to keep a finished job's per-epoch checkpoints (they stop being listed "
        "when removed). Empty: keep them as long as the job.",
    )
    file_cache_max_bytes = models.PositiveBigIntegerField(
        help_text="Bound on the local copies of uploaded files that workers train from; the "
        "least recently used copies not needed by an unfinished job go first."
    )
    file_cache_idle_days = models.PositiveIntegerField(
        help_text="Days after which an unused local copy of a file is removed."
    )
    export_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Days to keep a built download (a merged model, an adapter, weights or "
        "checkpoint zip, a dataset's CSV): then its file is removed and its page offers "
        '"Prepare" again. Empty: keep it as long as what it was built from.',
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "retention policy"
        constraints = [models.CheckConstraint(condition=Q(id=1), name="one_retention_policy")]

    def __str__(self) -> str:
        return "Retention policy"


class TrainingWorker(models.Model):
    """A training worker as it announced itself (jobs.fleet): written when it starts, its
    `last_seen_at` moved every TUNERY_WORKER_ANNOUNCE_SECONDS while it runs. Not seen for
    TUNERY_WORKER_GONE_SECONDS (or stopped) it counts as gone; the sweep deletes it after
    TUNERY_WORKER_FORGET_SECONDS. Instance-wide: workers serve every organization."""

    # The Celery node name (`training@gpu-1`): what FineTuneJob.worker holds for its jobs.
    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    device_class = models.CharField(max_length=40, blank=True)
    device_kind = models.CharField(max_length=8)  # cpu | cuda (engine.devices.detect)
    device_count = models.PositiveIntegerField()
    device_names = models.JSONField(default=list, blank=True)
    memory_gib = models.FloatField()  # per device (the smallest, if they differ)
    queues = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["device_class", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_online(self) -> bool:
        from datetime import timedelta

        from django.utils import timezone

        gone = timezone.now() - timedelta(seconds=settings.TUNERY_WORKER_GONE_SECONDS)
        return self.stopped_at is None and self.last_seen_at >= gone

    @property
    def devices_shown(self) -> str:
        """ "2 × NVIDIA H100 80GB HBM3 (79.1 GiB each)", "16 CPU cores (62.7 GiB)"."""
        if self.device_kind == "cpu":
            return f"{self.device_count} CPU cores ({self.memory_gib:g} GiB)"
        names = ", ".join(self.device_names) or self.device_kind
        return f"{self.device_count} × {names} ({self.memory_gib:g} GiB each)"
