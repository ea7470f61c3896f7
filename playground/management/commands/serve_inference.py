"""Run Tunery's inference service: the engine, continuously batched, behind HTTP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from engine.batching import BatchSettings
from engine.models import PACKAGE_PREFIX
from engine.spec import TrainingError
from models_app.files import resolve_source
from models_app.selectors import base_model_find
from playground.engine_backend import DTYPES, EngineBackend, load_for_inference
from playground.server import EngineServer, serve

logger = logging.getLogger(__name__)


def _is_source(name: str) -> bool:
    """How the web tier names a base: its source, `package:NAME` or an absolute path."""
    return name.startswith(PACKAGE_PREFIX) or Path(name).is_absolute()


class Command(BaseCommand):
    help = (
        "Serve the engine over HTTP for the web tier (TUNERY_INFERENCE_BACKEND=local, at "
        "TUNERY_INFERENCE_URL): /v1/completions, /v1/chat/completions, /v1/models, "
        "/v1/load_lora_adapter, /v1/unload_lora_adapter, /health."
    )

    # It serves no Django URLs, so the URL checks (and the whole project's imports) can't matter.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.TUNERY_INFERENCE_HOST)
        parser.add_argument("--port", type=int, default=settings.TUNERY_INFERENCE_PORT)
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
            help="don't look names up in the registry's base models (sources still work)",
        )
        parser.add_argument("--max-bases", type=int, default=settings.TUNERY_INFERENCE_MAX_BASES)
        parser.add_argument("--max-batch", type=int, default=settings.TUNERY_INFERENCE_MAX_BATCH)
        parser.add_argument("--max-queue", type=int, default=settings.TUNERY_INFERENCE_MAX_QUEUE)
        parser.add_argument(
            "--prefill-chunk", type=int, default=settings.TUNERY_INFERENCE_PREFILL_CHUNK
        )
        parser.add_argument(
            "--dtype",
            default=settings.TUNERY_INFERENCE_DTYPE,
            choices=["auto", *DTYPES],
            help="weights' dtype (auto: bfloat16 on a GPU, float32 on a CPU)",
        )

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
            if _is_source(name):
                try:
                    return resolve_source(name)
                except TrainingError as exc:
                    logger.info("not a model source: %s (%s)", name, exc)
                    return None
            if not use_registry:
                return None
            # Handler threads each get a DB connection; drop stale ones before using it.
            close_old_connections()
            base = base_model_find(name=name)
            return resolve_source(base.source) if base is not None else None

        batch = BatchSettings(
            max_rows=options["max_batch"],
            prefill_chunk=options["prefill_chunk"],
            max_prompt_tokens=settings.TUNERY_INFERENCE_MAX_PROMPT_TOKENS or None,
            max_tokens=settings.TUNERY_INFERENCE_MAX_TOKENS,
        )
        dtype = options["dtype"]
        backend = EngineBackend(
            max_bases=options["max_bases"],
            settings=batch,
            max_queue=options["max_queue"],
            loader=lambda model_dir: load_for_inference(model_dir, dtype),
        )
        state = EngineServer(
            backend=backend,
            lookup_base=lookup,
            default_base=next(iter(bases)) if len(bases) == 1 else None,
        )
        httpd = serve(state, host=options["host"], port=options["port"])
        host, port = httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        self.stdout.write(f"Serving the Tunery engine on http://{host}:{port}/v1", ending="\n")
        self.stdout.flush()
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            httpd.server_close()
            backend.pool.close()
