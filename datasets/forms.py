"""Forms of the dataset pages: upload and the column mapping step.

("Apply fixes" posts remediation ids, which datasets.services.file_apply_fixes checks against
the analysis it runs.)"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from common.forms import set_choices
from datasets import prepare, readers

NONE = ""  # the "(none)" choice of an optional column


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text="JSONL is stored as is; CSV, TSV, XLSX, JSON and TXT are converted to JSONL "
        "after you map their columns."
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if readers.kind_of(upload.name or "") is None:
            raise forms.ValidationError(readers.extension_error(upload.name or "the file"))
        limit = settings.MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"The file is {filesizeformat(upload.size)}; the upload limit is "
                f"{filesizeformat(limit)}."
            )
        if upload.size == 0:
            raise forms.ValidationError("The file is empty.")
        return upload


def _guess(columns: list[str], *names: str) -> str:
    lowered = {c.lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return lowered[name]
    return NONE


class MappingForm(forms.Form):
    """Which columns become the prompt and completion, or the chat roles."""

    MODES = [
        (prepare.PROMPT_COMPLETION, "Prompt and completion"),
        (prepare.CHAT, "Chat: system, user and assistant messages"),
        (prepare.PREFERENCE, "Preference pairs (DPO): prompt, chosen and rejected replies"),
    ]

    mode = forms.ChoiceField(choices=MODES, widget=forms.RadioSelect)
    prompt = forms.ChoiceField(required=False, label="Prompt column")
    completion = forms.ChoiceField(required=False, label="Completion column")
    system = forms.ChoiceField(required=False, label="System column")
    system_text = forms.CharField(
        required=False,
        label="…or one system message for every example",
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    user = forms.ChoiceField(required=False, label="User column")
    assistant = forms.ChoiceField(required=False, label="Assistant column")
    # Preference pairs: the prompt column (above) with the chosen and rejected replies.
    chosen = forms.ChoiceField(required=False, label="Chosen (preferred) reply column")
    rejected = forms.ChoiceField(required=False, label="Rejected (non-preferred) reply column")

    def __init__(self, *args: Any, columns: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(NONE, "(none)")] + [(c, c) for c in columns]
        for name in ("prompt", "completion", "system", "user", "assistant", "chosen", "rejected"):
            set_choices(self, name, choices)
        chatty = bool(_guess(columns, "user", "assistant"))
        paired = bool(_guess(columns, "chosen", "preferred")) and bool(
            _guess(columns, "rejected", "non_preferred")
        )
        mode = prepare.CHAT if chatty else prepare.PROMPT_COMPLETION
        self.initial = {
            "mode": prepare.PREFERENCE if paired else mode,
            "chosen": _guess(columns, "chosen", "preferred"),
            "rejected": _guess(columns, "rejected", "non_preferred"),
            "prompt": _guess(columns, "prompt", "question", "input", "text"),
            "completion": _guess(columns, "completion", "answer", "output", "label"),
            "system": _guess(columns, "system"),
            "user": _guess(columns, "user", "prompt", "question", "input"),
            "assistant": _guess(columns, "assistant", "completion", "answer", "output"),
            **self.initial,
        }
        if not self.initial["prompt"] and not self.initial["completion"] and columns:
            # Nothing recognisable: first column → prompt, second (or only) → completion.
            self.initial["prompt"] = columns[0] if len(columns) > 1 else NONE
            self.initial["completion"] = columns[1] if len(columns) > 1 else columns[0]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("mode") == prepare.PREFERENCE:
            for name in ("prompt", "chosen", "rejected"):
                if not data.get(name):
                    self.add_error(name, f"Choose the {name} column.")
        elif data.get("mode") == prepare.CHAT:
            for name in ("user", "assistant"):
                if not data.get(name):
                    self.add_error(name, f"Choose the {name} column.")
        elif not data.get("completion"):
            self.add_error("completion", "Choose the completion column.")
        return data

    def convert(self, rows: list[Any]) -> list[dict[str, Any]]:
        data = self.cleaned_data
        if data["mode"] == prepare.PREFERENCE:
            return prepare.rows_to_preference(
                rows,
                system=data["system"] or None,
                system_text=data["system_text"],
                prompt=data["prompt"],
                chosen=data["chosen"],
                rejected=data["rejected"],
            )
        if data["mode"] == prepare.CHAT:
            return prepare.rows_to_chat(
                rows,
                system=data["system"] or None,
                system_text=data["system_text"],
                user=data["user"],
                assistant=data["assistant"],
            )
        return prepare.rows_to_prompt_completion(
            rows, prompt=data["prompt"] or None, completion=data["completion"]
        )
