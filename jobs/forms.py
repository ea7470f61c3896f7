from __future__ import annotations

import json
import re
from typing import Any

from django import forms

from accounts.models import Organization
from common.forms import set_choices
from datasets.labels import known_labels
from datasets.models import File
from datasets.selectors import file_list_for_org
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from models_app.selectors import (
    base_model_list,
    checkpoint_list_for_org,
    grants_received,
    model_list_for_org,
    usable_model_find,
)


def _label_choices(labels: dict[str, int]) -> list[tuple[str, str]]:
    # Quoted, so a leading space or a newline shows: " spam" and "spam" are different classes.
    return [("", "— choose the positive class —")] + [
        (
            label,
            f"{json.dumps(label, ensure_ascii=False)} · {count} example{'s' if count != 1 else ''}",
        )
        for label, count in sorted(labels.items(), key=lambda kv: kv[1])
    ]


class JobCreateForm(forms.Form):
    """Parses the create form into a JobRequest; job_create does every real check."""

    model = forms.ChoiceField(
        label="Model",
        help_text="The base model to fine-tune, or one of your fine-tunes or checkpoints to "
        "continue training.",
    )
    training_method = forms.ChoiceField(
        label="Method",
        choices=FineTuneJob.Method.choices,
        initial="lora",
        help_text="LoRA trains a small adapter (fast, little memory); Full trains every weight.",
    )
    method_type = forms.ChoiceField(
        label="Training objective",
        choices=FineTuneJob.MethodType.choices,
        initial="supervised",
        required=False,  # absent (older links, scripts posting the form): supervised
        help_text="Supervised learns the completions; DPO learns which of two replies is "
        "better (needs a preference-pairs file).",
    )
    beta = forms.FloatField(
        label="DPO beta",
        required=False,
        min_value=0.001,
        max_value=10,
        help_text="DPO only: how far the model may move from the model it starts from (higher: "
        "closer). Blank: 0.1.",
    )
    suffix = forms.CharField(
        label="Suffix",
        required=False,
        max_length=40,
        help_text="Up to 40 characters added to the model's name, e.g. spam-filter.",
    )
    training_file = forms.ChoiceField(
        label="Training file",
        help_text="A validated dataset: one example per line.",
    )
    validation_file = forms.ChoiceField(
        label="Validation file",
        required=False,
        help_text="Optional held-out examples, scored during training. Needed for "
        "classification metrics and the forecast.",
    )
    n_epochs = forms.IntegerField(
        label="Epochs",
        required=False,
        min_value=1,
        max_value=50,
        help_text="Passes over the training file. Blank: chosen from its size.",
    )
    batch_size = forms.IntegerField(
        label="Batch size",
        required=False,
        min_value=1,
        max_value=256,
        help_text="Examples per step. Blank: chosen from the file's size.",
    )
    learning_rate_multiplier = forms.FloatField(
        label="LR multiplier",
        required=False,
        min_value=0.000001,
        max_value=10,
        help_text="Scales the model's base learning rate. Blank: chosen from the batch size.",
    )
    prompt_loss_weight = forms.FloatField(
        label="Prompt loss weight",
        required=False,
        min_value=0,
        max_value=1,
        initial=0.01,
        help_text="How much the prompt tokens count in the loss (0–1); completions count 1.",
    )
    compute_classification_metrics = forms.BooleanField(
        label="Compute classification metrics",
        required=False,
        help_text="Accuracy, precision, recall, F1… on the validation file, for classifiers.",
    )
    classification_positive_class = forms.CharField(
        label="Positive class",
        required=False,
        strip=False,
        help_text="For two classes: the completion that counts as positive (usually the rarer one).",
    )
    classification_n_classes = forms.IntegerField(
        label="Classes",
        required=False,
        min_value=2,
        help_text="For more than two classes: how many there are.",
    )
    classification_betas = forms.CharField(
        label="F-beta values",
        required=False,
        help_text="Extra F-scores to report, comma-separated, e.g. 0.5, 2.",
    )
    scaling_forecast = forms.BooleanField(
        label="Data-scaling forecast",
        required=False,
        help_text="Also train on ¼ and ½ of the data (two extra queued runs) to forecast whether "
        "more data would help. Needs a validation file.",
    )

    device_class = forms.CharField(
        label="Device class",
        required=False,
        max_length=40,
        help_text="Which training workers run it, e.g. cuda or cpu (the admin names the classes). "
        "Blank: the model's.",
    )
    device_count = forms.IntegerField(
        label="Devices",
        required=False,
        min_value=1,
        max_value=64,
        help_text="How many devices (GPUs, or CPU processes) one run uses. Blank: the worker's "
        "default, usually 1.",
    )

    def __init__(self, *args: Any, organization: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        models = [(b.name, f"{b.name} (base)") for b in base_model_list()]
        models += [(m.name, m.name) for m in model_list_for_org(organization=organization)]
        # Continue from a checkpoint, or from a model or checkpoint shared with the org.
        models += [
            (c.name, f"{c.name} (checkpoint)")
            for c in checkpoint_list_for_org(organization=organization)[:100]
        ]
        for grant in grants_received(organization=organization):
            if usable_model_find(organization=organization, name=grant.model_name) is not None:
                models.append((grant.model_name, f"{grant.model_name} (shared with you)"))
        set_choices(self, "model", models)
        # Only files a job can use are offered, and none is picked for the user: the newest
        # upload is often a small test file.
        usable = list(
            file_list_for_org(organization=organization).filter(
                purpose=File.Purpose.FINE_TUNE, status=File.Status.PROCESSED, error_count=0
            )
        )
        files = [(f.public_id, f"{f.filename} · {f.example_count} examples") for f in usable]
        set_choices(self, "training_file", [("", "— choose a training file —"), *files])
        set_choices(self, "validation_file", [("", "— none —"), *files])
        for name, field in self.fields.items():
            field.widget.attrs["aria-describedby"] = f"id_{name}_help"
        # The positive class is picked from the files' labels, when they are known.
        by_id = {f.public_id: f for f in usable}
        chosen = [
            by_id.get(self._value("training_file")),
            by_id.get(self._value("validation_file")),
        ]
        self.labels = known_labels(*chosen) if any(chosen) else None
        positive = self.fields["classification_positive_class"]
        if self.labels:
            current = self._value("classification_positive_class")
            choices = _label_choices(self.labels)
            if current and current not in self.labels:
                choices.append((current, f"{json.dumps(current)} · not in these files"))
            positive.widget = forms.Select(
                choices=choices, attrs={"aria-describedby": "id_classification_positive_class_help"}
            )

    def _value(self, name: str) -> str:
        source = self.data if self.is_bound else self.initial
        value = source.get(name) or ""
        return value if isinstance(value, str) else ""

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
            method_type=data.get("method_type") or FineTuneJob.MethodType.SUPERVISED,
            beta=data.get("beta") if data.get("method_type") == "dpo" else None,
            scaling_forecast=bool(data.get("scaling_forecast")),
            device_class=data.get("device_class") or None,
            device_count=data.get("device_count"),
        )


def humanize(message: str, form: forms.Form) -> str:
    """An API error in the form's words: API field names (n_epochs…) become their labels."""
    for name in sorted(form.fields, key=len, reverse=True):
        if "_" in name:
            message = re.sub(rf"\b{name}\b", f"“{form.fields[name].label}”", message)
    return message
