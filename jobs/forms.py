from __future__ import annotations

from typing import Any

from django import forms

from accounts.models import Organization
from datasets.models import File
from datasets.selectors import file_list_for_org
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from models_app.selectors import base_model_list, model_list_for_org


class JobCreateForm(forms.Form):
    """Parses the create form into a JobRequest; job_create does every real check."""

    model = forms.ChoiceField()
    training_file = forms.ChoiceField()
    validation_file = forms.ChoiceField(required=False)
    training_method = forms.ChoiceField(choices=FineTuneJob.Method.choices, initial="lora")
    n_epochs = forms.IntegerField(required=False, min_value=1, max_value=50)
    batch_size = forms.IntegerField(required=False, min_value=1, max_value=256)
    learning_rate_multiplier = forms.FloatField(required=False, min_value=0.000001, max_value=10)
    prompt_loss_weight = forms.FloatField(required=False, min_value=0, max_value=1, initial=0.01)
    suffix = forms.CharField(required=False, max_length=40)
    compute_classification_metrics = forms.BooleanField(required=False)
    classification_positive_class = forms.CharField(required=False, strip=False)
    classification_n_classes = forms.IntegerField(required=False, min_value=2)
    classification_betas = forms.CharField(required=False, help_text="comma-separated, e.g. 1, 2")
    scaling_forecast = forms.BooleanField(
        required=False,
        help_text="Also train on ¼ and ½ of the data (two extra queued runs) to forecast whether "
        "more data would help. Needs a validation file.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        models = [(b.name, f"{b.name} (base)") for b in base_model_list()]
        models += [(m.name, m.name) for m in model_list_for_org(organization=organization)]
        self.fields["model"].choices = models
        # Only files a job can use are offered.
        usable = file_list_for_org(organization=organization).filter(
            purpose=File.Purpose.FINE_TUNE, status=File.Status.PROCESSED, error_count=0
        )
        files = [(f.public_id, f"{f.filename} · {f.example_count} examples") for f in usable]
        self.fields["training_file"].choices = files
        self.fields["validation_file"].choices = [("", "— none —"), *files]

    def clean_classification_betas(self) -> list[float] | None:
        raw = self.cleaned_data.get("classification_betas") or ""
        if not raw.strip():
            return None
        try:
            return [float(x) for x in raw.replace(" ", "").split(",") if x]
        except ValueError:
            raise forms.ValidationError("Betas must be numbers separated by commas.") from None

    def to_request(self) -> JobRequest:
        data = self.cleaned_data
        # Browser jobs use the current API's ids and model names (ftjob-…, ft:…).
        return JobRequest(
            api=FineTuneJob.Api.CURRENT,
            model=data["model"],
            training_file=data["training_file"],
            validation_file=data.get("validation_file") or None,
            n_epochs=data.get("n_epochs"),
            batch_size=data.get("batch_size"),
            learning_rate_multiplier=data.get("learning_rate_multiplier"),
            prompt_loss_weight=data.get("prompt_loss_weight"),
            compute_classification_metrics=bool(data.get("compute_classification_metrics")),
            classification_positive_class=data.get("classification_positive_class") or None,
            classification_n_classes=data.get("classification_n_classes"),
            classification_betas=data.get("classification_betas"),
            suffix=data.get("suffix") or None,
            method=data["training_method"],
            scaling_forecast=bool(data.get("scaling_forecast")),
        )
