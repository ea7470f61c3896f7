"""Form helpers shared by the apps' forms."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from django import forms
from django.core.exceptions import ValidationError

from common.errors import ServiceError


def set_choices(form: forms.BaseForm, name: str, choices: list[tuple[str, str]]) -> None:
    """Fill a ChoiceField's options at run time (`form.fields` is typed as plain Fields)."""
    field = form.fields[name]
    if not isinstance(field, forms.ChoiceField):
        raise TypeError(f"{type(form).__name__}.{name} is not a ChoiceField")
    field.choices = choices


def error_message(exc: ServiceError | ValidationError) -> str:
    """The words of a service's refusal, for a message or a form."""
    if isinstance(exc, ServiceError):
        return exc.message
    return "; ".join(exc.messages)


def form_error(
    form: forms.BaseForm,
    exc: ServiceError | ValidationError,
    *,
    aliases: Mapping[str, str] | None = None,
    words: Callable[[str], str] = str,
) -> None:
    """Show a service's refusal on the form field it names, else above the form.

    A ServiceError names its input as the API does (`param`, dotted for nested objects: the
    last part is the form's field, unless `aliases` maps the whole param to a field name); a
    ValidationError names fields by its dict keys. `words` rewrites a message for the form (API
    field names into labels).
    """
    if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
        for name, errors in exc.message_dict.items():
            field = name if name in form.fields else None
            for message in errors:
                form.add_error(field, words(message))
        return
    param = exc.param if isinstance(exc, ServiceError) else None
    param = (aliases or {}).get(param or "", param or "").split(".")[-1]
    form.add_error(param if param in form.fields else None, words(error_message(exc)))
