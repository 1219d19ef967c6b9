from django.urls import path

from . import file_views, views

urlpatterns = [
    path("", views.conversation_list, name="conversation_list"),
    path("c/new/", views.conversation_create, name="conversation_create"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation_detail"),
    path("c/<uuid:conversation_id>/messages/", views.message_send, name="message_send"),
    path("c/<uuid:conversation_id>/rename/", views.conversation_rename, name="conversation_rename"),
    path("c/<uuid:conversation_id>/delete/", views.conversation_delete, name="conversation_delete"),
    path("c/<uuid:conversation_id>/file/", file_views.conversation_file, name="conversation_file"),
    path("approvals/", views.approvals, name="approvals"),
    path("approvals/badge/", views.approvals_badge, name="approvals_badge"),
    path(
        "c/<uuid:conversation_id>/repository/status/",
        views.conversation_repository_status,
        name="conversation_repository_status",
    ),
]

# Runs are addressed without the team: fragments rendered for the WebSocket don't know it, and
# the selector scopes every lookup to the requester's teams anyway.
run_urlpatterns = [
    path("runs/<uuid:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<uuid:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("runs/<uuid:run_id>/retry/", views.run_retry, name="run_retry"),
    path("runs/<uuid:run_id>/undo/", views.run_undo, name="run_undo"),
    path("tools/<uuid:call_id>/decide/", views.tool_call_decide, name="tool_call_decide"),
]
