from __future__ import annotations

from django.urls import path

from jobs import views

app_name = "jobs"

urlpatterns = [
    path("", views.job_list, name="list"),
    path("new/", views.job_create, name="create"),
    path("new/preflight/", views.job_preflight, name="preflight"),
    path("<str:job_id>/", views.job_detail, name="detail"),
    path("<str:job_id>/cancel/", views.job_cancel, name="cancel"),
    path("<str:job_id>/charts.json", views.job_charts, name="charts"),
    path("<str:job_id>/pause/", views.job_pause, name="pause"),
    path("<str:job_id>/resume/", views.job_resume, name="resume"),
    path("<str:job_id>/checkpoints/compare/", views.job_compare, name="compare"),
    path(
        "<str:job_id>/checkpoints/<str:checkpoint_id>/prepare/",
        views.checkpoint_prepare,
        name="checkpoint_prepare",
    ),
    path(
        "<str:job_id>/checkpoints/<str:checkpoint_id>/status/",
        views.checkpoint_status,
        name="checkpoint_status",
    ),
    path(
        "<str:job_id>/checkpoints/<str:checkpoint_id>/download.zip",
        views.checkpoint_download,
        name="checkpoint_download",
    ),
    path("<str:job_id>/results.csv", views.job_results, name="results"),
]
