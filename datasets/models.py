from __future__ import annotations

from django.conf import settings
from django.db import models

from common.ids import random_id


def new_file_id() -> str:
    return random_id("file-", 24)


def blob_path(instance: File, filename: str) -> str:
    # The user's filename never becomes a path: blobs are named by their public id.
    return f"files/{instance.organization_id}/{instance.public_id}"


class File(models.Model):
    """An uploaded dataset or a results file: OpenAI's File object."""

    class Purpose(models.TextChoices):
        FINE_TUNE = "fine-tune"
        FINE_TUNE_RESULTS = "fine-tune-results"

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"
        # Deleted while finished jobs still refer to it: the row stays for them, the blob is
        # gone and the API answers 404 for it (OpenAI's 2023 status list has `deleted` too).
        DELETED = "deleted"

    class Format(models.TextChoices):
        UNKNOWN = ""
        PROMPT_COMPLETION = "prompt_completion"
        CHAT = "chat"
        PREFERENCE = "preference"  # DPO pairs (datasets.validation)
        RESULTS = "results_csv"

    public_id = models.CharField(max_length=40, unique=True, default=new_file_id, editable=False)
    organization = models.ForeignKey("accounts.Organization", models.CASCADE, related_name="files")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    filename = models.CharField(max_length=255)  # a display name only, sanitised on upload
    purpose = models.CharField(max_length=32, choices=Purpose)
    bytes = models.BigIntegerField(default=0)
    blob = models.FileField(upload_to=blob_path, max_length=255)
    status = models.CharField(max_length=16, choices=Status, default=Status.UPLOADED)
    status_details = models.TextField(null=True, blank=True)
    format = models.CharField(max_length=24, choices=Format, default=Format.UNKNOWN, blank=True)
    # Written only by datasets.processing: counts, token lengths, label distribution, ...
    stats = models.JSONField(default=dict, blank=True)
    # The first N line-numbered problems: [{"line": 7, "message": "...", "param": "..."}].
    errors = models.JSONField(default=list, blank=True)
    error_count = models.PositiveIntegerField(default=0)
    # The prepare-data analysis (findings and proposed fixes, datasets.prepare), stored by the
    # validation worker: Analysis.to_json(), {"unavailable": why}, or empty while not computed.
    findings = models.JSONField(default=list, blank=True)
    derived_from = models.ForeignKey(
        "self", models.SET_NULL, null=True, blank=True, related_name="derivatives"
    )
    # Validation tries so far, and until when the current one holds the file (renewed while it
    # runs; datasets.processing.file_validate and the sweeper).
    validation_attempts = models.PositiveSmallIntegerField(default=0)
    validation_lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set by datasets.services.file_delete when jobs still refer to the file (see DELETED).
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["organization", "purpose", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.filename})"

    def get_absolute_url(self) -> str:
        from django.urls import reverse

        return reverse("datasets:detail", args=[self.public_id])

    @property
    def example_count(self) -> int:
        return int((self.stats or {}).get("examples") or 0)

    @property
    def token_count(self) -> int:
        """Tokens in the file (prompt + completion), as counted by validation; 0 if unknown."""
        tokens = (self.stats or {}).get("tokens") or {}
        return int(tokens.get("total") or 0) if isinstance(tokens, dict) else int(tokens)

    @property
    def is_usable_for_training(self) -> bool:
        return (
            self.purpose == self.Purpose.FINE_TUNE
            and self.status == self.Status.PROCESSED
            and self.error_count == 0
        )
