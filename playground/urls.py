from __future__ import annotations

from django.urls import path

from playground import views

app_name = "playground"

urlpatterns = [
    path("", views.index, name="index"),
    path("stream", views.stream, name="stream"),
    path("code", views.code, name="code"),
]
