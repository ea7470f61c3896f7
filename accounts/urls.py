from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("org/switch/", views.switch_organization, name="switch_org"),
    path("settings/", views.settings_page, name="settings"),
    path("usage/", views.usage_page, name="usage"),
    path("usage/export.csv", views.usage_csv, name="usage_csv"),
    path("settings/keys/", views.api_key_create, name="key_create"),
    path("settings/keys/<int:key_id>/revoke/", views.api_key_revoke, name="key_revoke"),
    path("settings/members/", views.member_add, name="member_add"),
    path("settings/invitations/", views.invitation_create, name="invitation_create"),
    path(
        "settings/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("invite/<str:token>/", views.invitation_accept, name="invite"),
    path("settings/members/<int:membership_id>/", views.member_update, name="member_update"),
    path("settings/webhooks/", views.webhook_create, name="webhook_create"),
    path("settings/webhooks/<str:endpoint_id>/", views.webhook_detail, name="webhook"),
    path(
        "settings/webhooks/<str:endpoint_id>/action/", views.webhook_action, name="webhook_action"
    ),
]
