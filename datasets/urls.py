from __future__ import annotations

from django.urls import path

from datasets import views

app_name = "datasets"

urlpatterns = [
    path("", views.file_list, name="list"),
    path("upload/", views.file_list, name="upload"),
    path("<str:file_id>/", views.file_list, name="detail"),
]
