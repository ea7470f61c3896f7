"""Register a base model from a Hugging Face directory, a GGUF file or `package:NAME`."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_app import services


class Command(BaseCommand):
    help = "Register a base model (HF directory, .gguf file or package:NAME) for fine-tuning."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="the id clients send as `model`")
        parser.add_argument("source", help="absolute HF model dir, .gguf path or package:NAME")
        parser.add_argument("--display-name", default="")
        parser.add_argument(
            "--alias", action="append", default=[], help="another name for it; repeatable"
        )
        parser.add_argument("--context-length", type=int, default=None)
        parser.add_argument(
            "--chat", choices=["yes", "no"], default=None, help="has a chat template"
        )
        parser.add_argument("--lr-lora", type=float, default=None, help="base LR for LoRA")
        parser.add_argument("--lr-full", type=float, default=None, help="base LR for full FT")
        parser.add_argument("--price-train", default="0", help="price per 1k trained tokens")
        parser.add_argument("--price-generate", default="0", help="price per 1k generated tokens")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            base = services.base_model_register(
                name=options["name"],
                source=options["source"],
                display_name=options["display_name"],
                aliases=options["alias"],
                context_length=options["context_length"],
                has_chat_template=None if options["chat"] is None else options["chat"] == "yes",
                base_lr_lora=options["lr_lora"],
                base_lr_full=options["lr_full"],
                price_train_per_1k=options["price_train"],
                price_generate_per_1k=options["price_generate"],
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        self.stdout.write(
            f"Registered {base.name} (context {base.context_length}, "
            f"chat template: {'yes' if base.has_chat_template else 'no'})"
        )
