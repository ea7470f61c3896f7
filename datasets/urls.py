from __future__ import annotations

from django.urls import path

from datasets import views

app_name = "datasets"

urlpatterns = [
    path("", views.file_list, name="list"),
    path("upload/", views.file_upload, name="upload"),
    path("upload/<str:token>/", views.file_map, name="map"),
    path("<str:file_id>/", views.file_detail, name="detail"),
    path("<str:file_id>/fix/", views.file_fix, name="fix"),
    path("<str:file_id>/download/", views.file_download, name="download"),
    path("<str:file_id>/export/", views.file_export_csv_prepare, name="export_csv_prepare"),
    path("<str:file_id>/export/status/", views.file_export_csv_status, name="export_csv_status"),
    path("<str:file_id>/export.csv", views.file_export_csv, name="export_csv"),
    path("<str:file_id>/delete/", views.file_delete, name="delete"),
]
