"""Celery entry points for the model registry: thin, id-taking, work in models_app.processing."""

from __future__ import annotations

from celery import shared_task

from models_app import processing


@shared_task(name="models_app.build_export")
def build_export(export_id: int) -> None:
    processing.export_build(export_id=export_id)


@shared_task(name="models_app.export_merged_model")
def export_merged_model(model_id: int) -> None:
    # Kept for messages queued by an older Tunery (they carry a model id).
    processing.export_merged_legacy(model_id=model_id)


@shared_task(name="models_app.sweep_exports")
def sweep_exports() -> None:
    for export_id in processing.exports_sweep():
        build_export.delay(export_id)
