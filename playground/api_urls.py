from __future__ import annotations

from django.urls import path

from playground import api

urlpatterns = [
    path("completions", api.CompletionApi.as_view()),
    path("chat/completions", api.ChatCompletionApi.as_view()),
    # The 0.28 CLI's `-e ENGINE` form; <path:> because fine-tune names hold ':'.
    path("engines/<path:engine>/completions", api.CompletionApi.as_view()),
]
