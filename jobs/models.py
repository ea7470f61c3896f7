from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from common.ids import random_id


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
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    UNFINISHED = (Status.QUEUED, Status.RUNNING)
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
    training_file = models.ForeignKey("datasets.File", models.PROTECT, related_name="+")
    validation_file = models.ForeignKey(
        "datasets.File", models.PROTECT, null=True, blank=True, related_name="+"
    )
    method = models.CharField(max_length=8, choices=Method, default=Method.LORA)
    # As requested (values may be None/"auto") and as resolved by the worker.
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
    # On a scaling-forecast parent, once its three runs have finished (jobs.forecast).
    forecast = models.JSONField(null=True, blank=True)

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
    attempts = models.PositiveSmallIntegerField(default=0)
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

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.message

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.public_id:
            self.public_id = random_id("ftevent-", 24)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class Checkpoint(models.Model):
    public_id = models.CharField(max_length=40, unique=True, editable=False)
    job = models.ForeignKey(FineTuneJob, models.CASCADE, related_name="checkpoints")
    step_number = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict)
    path = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step_number"]
        constraints = [
            models.UniqueConstraint(fields=["job", "step_number"], name="one_checkpoint_per_step")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} step {self.step_number}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self.public_id:
            self.public_id = random_id("ftckpt_", 24)
        super().save(*args, **kwargs)  # type: ignore[arg-type]
