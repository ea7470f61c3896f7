from __future__ import annotations

from django.urls import path

from jobs import api

urlpatterns = [
    path("fine-tunes", api.LegacyJobListApi.as_view()),
    path("fine-tunes/<str:job_id>", api.LegacyJobDetailApi.as_view()),
    path("fine-tunes/<str:job_id>/cancel", api.LegacyJobCancelApi.as_view()),
    path("fine-tunes/<str:job_id>/events", api.LegacyJobEventsApi.as_view()),
    path("fine_tuning/jobs", api.JobListApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>", api.JobDetailApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/cancel", api.JobCancelApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/pause", api.JobPauseApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/resume", api.JobResumeApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/events", api.JobEventsApi.as_view()),
    path("fine_tuning/jobs/<str:job_id>/checkpoints", api.JobCheckpointsApi.as_view()),
]
