from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_save


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from jobs import notify  # models are ready only now
        from jobs.models import JobEvent

        # The one place every event passes: emit(), emit_metrics(), W&B warnings, the admin.
        post_save.connect(notify.on_event_saved, sender=JobEvent, dispatch_uid="jobs.notify")
