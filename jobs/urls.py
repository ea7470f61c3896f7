from __future__ import annotations

from django.urls import path

from jobs import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_list, name="create"),
    path("<str:job_id>/", views.job_list, name="detail"),
]
