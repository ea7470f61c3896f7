"""Form helpers shared by the apps' forms."""

from __future__ import annotations

from django import forms


def set_choices(form: forms.BaseForm, name: str, choices: list[tuple[str, str]]) -> None:
    """Fill a ChoiceField's options at run time (`form.fields` is typed as plain Fields)."""
    field = form.fields[name]
    if not isinstance(field, forms.ChoiceField):
        raise TypeError(f"{type(form).__name__}.{name} is not a ChoiceField")
    field.choices = choices
