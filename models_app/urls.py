from __future__ import annotations

from django.urls import path

from models_app import views

app_name = "models_app"

urlpatterns = [
    path("", views.model_list, name="list"),
    path("<path:name>/", views.model_list, name="detail"),
]
