from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


def layer_names(text: str) -> list[str]:
    """A comma-separated list of layer names (a base model's `lora_target_modules`), without
    blanks: "q_proj, v_proj," → ["q_proj", "v_proj"]."""
    return [name.strip() for name in text.split(",") if name.strip()]


class BaseModel(models.Model):
    """A model Tunery can fine-tune and serve, e.g. the embedded SmolLM2-135M-Instruct."""

    name = models.CharField(max_length=200, unique=True)  # the id clients send as `model`
    display_name = models.CharField(max_length=200, blank=True)
    # A Hugging Face directory, a .gguf path or `package:NAME` (engine.resolve_model_source).
    source = models.CharField(max_length=500)
    # Other names that resolve to this model, e.g. ["ada", "babbage", "curie", "davinci"].
    aliases = models.JSONField(default=list, blank=True)
    context_length = models.PositiveIntegerField(default=2048)
    has_chat_template = models.BooleanField(default=True)
    base_lr_lora = models.FloatField(null=True, blank=True)  # None: the engine's default
    base_lr_full = models.FloatField(null=True, blank=True)
    # The LoRA adapter a job on this model trains, and its warm-up: a size class of models may
    # want another shape than the engine's default, which was swept on the 135M model only
    # (docs/adr/0019). A job reads them when it starts; a resumed or continued one keeps the
    # adapter shape it has.
    lora_rank = models.PositiveSmallIntegerField(
        "LoRA rank",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(512)],
        help_text="LoRA rank r. Empty: 8.",
    )
    lora_alpha = models.PositiveSmallIntegerField(
        "LoRA alpha",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(1024)],
        help_text="LoRA alpha (the update is scaled by alpha / r). Empty: twice the rank.",
    )
    lora_target_modules = models.CharField(
        "LoRA target modules",
        max_length=300,
        blank=True,
        default="",
        help_text="Comma-separated names of the layers LoRA adapts, e.g. q_proj,v_proj. "
        "Empty: every linear layer but the output head.",
    )
    warmup_ratio = models.FloatField(
        "warm-up ratio",
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of a job's optimizer steps spent warming the learning rate up. "
        "Empty: 0.03.",
    )
    price_train_per_1k = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    price_generate_per_1k = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    enabled = models.BooleanField(default=True)
    # The training workers that may train it (jobs.routing): its jobs go to the queue
    # `training.<device_class>`. Empty: TUNERY_DEFAULT_DEVICE_CLASS.
    device_class = models.CharField(max_length=40, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class FineTunedModel(models.Model):
    """A fine-tune's result: an adapter (LoRA) or full weights on top of a base model."""

    class Method(models.TextChoices):
        LORA = "lora"
        FULL = "full"

    name = models.CharField(max_length=300, unique=True)
    organization = models.ForeignKey(
        "accounts.Organization", models.CASCADE, related_name="fine_tuned_models"
    )
    base = models.ForeignKey(BaseModel, models.PROTECT, related_name="fine_tunes")
    job = models.OneToOneField(
        "jobs.FineTuneJob", models.SET_NULL, null=True, blank=True, related_name="result_model"
    )
    method = models.CharField(max_length=8, choices=Method, default=Method.LORA)
    artifact_dir = models.CharField(max_length=500)  # under DATA_DIR/models/
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization"], condition=Q(deleted_at=None), name="live_models")
        ]

    def __str__(self) -> str:
        return self.name


class Export(models.Model):
    """A file built for download by a worker (models_app.processing.export_build), never in a
    web request: a merged model, a model's adapter or weights as a zip, a checkpoint's zip, or
    a prompt/completion dataset as CSV.

    Its subject is exactly one of `model`, `checkpoint` and `file`; the built file lives under
    exports/ (models_app.files.export_key). This row says whether one is queued or running,
    under which lease (renewed while the worker runs: an expired lease means the worker died,
    and the sweeper or the user may start it again), and why it failed. The subjects never
    change once made, so a built file is reused until its subject is deleted (the row goes with
    it) or the file is removed.
    """

    class Kind(models.TextChoices):
        MERGED = "merged"  # a LoRA fine-tune merged into its base
        MODEL_FILES = "model_files"  # a fine-tune's adapter (LoRA) or weights (full)
        CHECKPOINT = "checkpoint"  # an exposed checkpoint's adapter or weights
        CSV = "csv"  # a prompt/completion file as CSV

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        READY = "ready"
        FAILED = "failed"

    kind = models.CharField(max_length=12, choices=Kind, default=Kind.MERGED)
    model = models.ForeignKey(
        FineTunedModel, models.CASCADE, null=True, blank=True, related_name="exports"
    )
    checkpoint = models.ForeignKey(
        "jobs.Checkpoint", models.CASCADE, null=True, blank=True, related_name="exports"
    )
    file = models.ForeignKey(
        "datasets.File", models.CASCADE, null=True, blank=True, related_name="exports"
    )
    status = models.CharField(max_length=8, choices=Status, default=Status.PENDING)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            # One export of each kind per subject: two clicks never make two.
            models.UniqueConstraint(
                fields=["kind", "model"], condition=Q(model__isnull=False), name="one_model_export"
            ),
            models.UniqueConstraint(
                fields=["kind", "checkpoint"],
                condition=Q(checkpoint__isnull=False),
                name="one_checkpoint_export",
            ),
            models.UniqueConstraint(
                fields=["kind", "file"], condition=Q(file__isnull=False), name="one_file_export"
            ),
            models.CheckConstraint(
                condition=(
                    Q(model__isnull=False, checkpoint=None, file=None)
                    | Q(model=None, checkpoint__isnull=False, file=None)
                    | Q(model=None, checkpoint=None, file__isnull=False)
                ),
                name="export_has_one_subject",
            ),
        ]

    def __str__(self) -> str:
        subject = self.model_id or self.checkpoint_id or self.file_id
        return f"{self.kind} export of {subject}: {self.status}"


class UsageRecord(models.Model):
    """Tokens in and out per org, model, key, kind and day (OpenAI-style usage accounting)."""

    class Kind(models.TextChoices):
        REQUESTS = "requests"  # /v1 calls and the playground
        SAMPLES = "samples"  # the model page's sample completions, asked for with its button

    organization = models.ForeignKey("accounts.Organization", models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=300)
    api_key = models.ForeignKey("accounts.ApiKey", models.SET_NULL, null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    kind = models.CharField(max_length=16, choices=Kind, default=Kind.REQUESTS)
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "model_name", "api_key", "user", "kind", "day"],
                name="one_usage_row_per_kind_and_day",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.day}: {self.prompt_tokens}+{self.completion_tokens} tokens"


class ModelPermission(models.Model):
    """An owner's fine-tuned model or checkpoint shared with another organization of the instance.

    OpenAI's `checkpoint.permission`: its `project_id` is the grantee organization's id here
    (Tunery has no projects). The grantee may use the model, never delete it or see its job.
    """

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    organization = models.ForeignKey(
        "accounts.Organization", models.CASCADE, related_name="granted_permissions"
    )
    grantee = models.ForeignKey(
        "accounts.Organization", models.CASCADE, related_name="received_permissions"
    )
    model_name = models.CharField(max_length=300)
    fine_tuned_model = models.ForeignKey(
        FineTunedModel, models.CASCADE, null=True, blank=True, related_name="permissions"
    )
    checkpoint = models.ForeignKey(
        "jobs.Checkpoint", models.CASCADE, null=True, blank=True, related_name="permissions"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["model_name", "grantee"], name="one_grant_per_org"),
            models.CheckConstraint(
                condition=Q(fine_tuned_model__isnull=False) | Q(checkpoint__isnull=False),
                name="permission_has_a_target",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} → {self.grantee_id}"
