from __future__ import annotations

from django.urls import path

from models_app import views
from models_app.models import Export

app_name = "models_app"

MERGED = {"kind": Export.Kind.MERGED}
FILES = {"kind": Export.Kind.MODEL_FILES}

# <path:name> because model names hold ':' (and a base's name may hold '/'): the specific
# suffixes come first, the bare detail URL last. Each download is prepared by a worker
# (POST …/prepare/ or …/export/), polled (…/status/), then streamed (….zip).
urlpatterns = [
    path("", views.model_list, name="list"),
    path("<path:name>/delete/", views.model_delete, name="delete"),
    path("<path:name>/samples/", views.model_samples, name="samples"),
    path("<path:name>/adapter/prepare/", views.export_start, FILES, name="adapter_prepare"),
    path("<path:name>/adapter/status/", views.export_status, FILES, name="adapter_status"),
    path("<path:name>/adapter.zip", views.export_download, FILES, name="adapter_download"),
    path("<path:name>/export/", views.export_start, MERGED, name="export"),
    path("<path:name>/export/status/", views.export_status, MERGED, name="export_status"),
    path("<path:name>/merged.zip", views.export_download, MERGED, name="merged_download"),
    path("<path:name>/", views.model_detail, name="detail"),
]
