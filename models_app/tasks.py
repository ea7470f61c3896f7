"""Celery entry points for the model registry: thin, id-taking, work in models_app.processing."""

from __future__ import annotations

from celery import shared_task

from models_app import processing


@shared_task(name="models_app.export_merged_model")
def export_merged_model(model_id: int) -> None:
    processing.model_export_merged(model_id=model_id)


@shared_task(name="models_app.sweep_exports")
def sweep_exports() -> None:
    for model_id in processing.exports_sweep():
        export_merged_model.delay(model_id)
