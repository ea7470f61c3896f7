"""Run Tunery's engine as an OpenAI-compatible server with vLLM-style LoRA hot-loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from models_app.selectors import base_model_find
from models_app.services import resolve_source
from playground.backends import LocalBackend
from playground.server import EngineServer, serve


class Command(BaseCommand):
    help = (
        "Serve the engine over HTTP for TUNERY_INFERENCE_BACKEND=remote: /v1/completions, "
        "/v1/chat/completions, /v1/models, /v1/load_lora_adapter, /v1/unload_lora_adapter."
    )

    # It serves no Django URLs, so the URL checks (and the whole project's imports) can't matter.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument(
            "--base",
            action="append",
            default=[],
            metavar="NAME=SOURCE",
            help="serve SOURCE (HF dir, .gguf or package:NAME) as NAME; repeatable",
        )
        parser.add_argument(
            "--no-registry",
            action="store_true",
            help="serve only the --base models, not the registry's base models",
        )
        parser.add_argument("--max-bases", type=int, default=settings.TUNERY_INFERENCE_MAX_BASES)

    def handle(self, *args: Any, **options: Any) -> None:
        bases: dict[str, str] = {}
        for spec in options["base"]:
            name, sep, source = spec.partition("=")
            if not sep or not name or not source:
                raise CommandError(f"--base takes NAME=SOURCE, got {spec!r}")
            bases[name] = source
        use_registry = not options["no_registry"]

        def lookup(name: str) -> Path | None:
            if name in bases:
                return resolve_source(bases[name])
            if not use_registry:
                return None
            # Handler threads each get a DB connection; drop stale ones before using it.
            close_old_connections()
            base = base_model_find(name=name)
            return resolve_source(base.source) if base is not None else None

        state = EngineServer(
            backend=LocalBackend(max_bases=options["max_bases"]),
            lookup_base=lookup,
            default_base=next(iter(bases)) if len(bases) == 1 else None,
        )
        httpd = serve(state, host=options["host"], port=options["port"])
        host, port = httpd.server_address[:2]
        self.stdout.write(f"Serving the Tunery engine on http://{host}:{port}/v1", ending="\n")
        self.stdout.flush()
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
