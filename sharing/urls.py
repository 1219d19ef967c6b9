"""Share links. Members' routes live under the team (/t/<slug>/…); the shared page under /s/,
with no team in its URL: the token alone finds the link."""

from django.urls import path

from . import views

urlpatterns = [
    path(
        "t/<slug:slug>/c/<uuid:conversation_id>/shares/",
        views.share_list,
        name="share_list",
    ),
    path(
        "t/<slug:slug>/c/<uuid:conversation_id>/shares/new/",
        views.share_create,
        name="share_create",
    ),
    path(
        "t/<slug:slug>/c/<uuid:conversation_id>/export.md",
        views.conversation_export,
        {"fmt": "md"},
        name="conversation_export_md",
    ),
    path(
        "t/<slug:slug>/c/<uuid:conversation_id>/export.json",
        views.conversation_export,
        {"fmt": "json"},
        name="conversation_export_json",
    ),
    path("t/<slug:slug>/shares/", views.team_shares, name="team_shares"),
    path("t/<slug:slug>/shares/policy/", views.sharing_policy, name="sharing_policy"),
    path("t/<slug:slug>/shares/<uuid:link_id>/revoke/", views.share_revoke, name="share_revoke"),
    path("s/<str:token>/", views.share_view, name="share_view"),
    path("s/<str:token>/runs/<uuid:run_id>/", views.share_run, name="share_run"),
    path("s/<str:token>/export.md", views.share_export, {"fmt": "md"}, name="share_export_md"),
    path(
        "s/<str:token>/export.json", views.share_export, {"fmt": "json"}, name="share_export_json"
    ),
    path("s/<str:token>/fork/", views.share_fork, name="share_fork"),
]
