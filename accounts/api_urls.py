from __future__ import annotations

from django.urls import path

from accounts import api

urlpatterns = [
    path("webhook_endpoints", api.WebhookEndpointListApi.as_view()),
    path("webhook_endpoints/<str:endpoint_id>", api.WebhookEndpointDetailApi.as_view()),
    path(
        "webhook_endpoints/<str:endpoint_id>/rotate_secret",
        api.WebhookEndpointRotateApi.as_view(),
    ),
    path("webhook_endpoints/<str:endpoint_id>/test", api.WebhookEndpointTestApi.as_view()),
    path("webhook_event_types", api.WebhookEventTypeListApi.as_view()),
]
