from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


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
    price_train_per_1k = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    price_generate_per_1k = models.DecimalField(max_digits=10, decimal_places=6, default=0)
    enabled = models.BooleanField(default=True)
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


class UsageRecord(models.Model):
    """Tokens in and out per org, model, key and day (OpenAI-style usage accounting)."""

    organization = models.ForeignKey("accounts.Organization", models.CASCADE, related_name="+")
    model_name = models.CharField(max_length=300)
    api_key = models.ForeignKey("accounts.ApiKey", models.SET_NULL, null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True)
    day = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "model_name", "api_key", "user", "day"],
                name="one_usage_row_per_day",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.day}: {self.prompt_tokens}+{self.completion_tokens} tokens"
