"""Resolve every enabled base model once (a GGUF is dequantized into the model cache).

`make run` calls this before starting the workers, so the first validation or training job
doesn't pay for the one-off dequantization while the user waits.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

import engine
from models_app.selectors import base_model_list


class Command(BaseCommand):
    help = "Dequantize/cache every enabled base model's weights and tokenizer (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        for base in base_model_list():
            self.stdout.write(f"Preparing {base.name} from {base.source} (once; cached after) …")
            try:
                path = engine.resolve_model_source(
                    base.source, cache_dir=str(settings.TUNERY_MODEL_CACHE_DIR)
                )
            except engine.TrainingError as exc:
                self.stderr.write(f"  {base.name}: {exc}")
                continue
            self.stdout.write(f"  ready: {path}")
