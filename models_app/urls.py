from __future__ import annotations

from django.urls import path

from models_app import views

app_name = "models_app"

# <path:name> because model names hold ':' (and a base's name may hold '/'): the specific
# suffixes come first, the bare detail URL last.
urlpatterns = [
    path("", views.model_list, name="list"),
    path("<path:name>/delete/", views.model_delete, name="delete"),
    path("<path:name>/samples/", views.model_samples, name="samples"),
    path("<path:name>/adapter.zip", views.adapter_download, name="adapter_download"),
    path("<path:name>/export/", views.export_start, name="export"),
    path("<path:name>/export/status/", views.export_status, name="export_status"),
    path("<path:name>/merged.zip", views.merged_download, name="merged_download"),
    path("<path:name>/", views.model_detail, name="detail"),
]
