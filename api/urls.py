from django.urls import path

from . import extra_views, stream, views

urlpatterns = [
    path("me", views.me, name="api_me"),
    path("conversations", views.conversations, name="api_conversations"),
    path("conversations/<uuid:conversation_id>", views.conversation, name="api_conversation"),
    path("conversations/<uuid:conversation_id>/messages", views.messages, name="api_messages"),
    path(
        "conversations/<uuid:conversation_id>/export",
        views.conversation_export,
        name="api_conversation_export",
    ),
    path(
        "conversations/<uuid:conversation_id>/events",
        stream.conversation_events,
        name="api_conversation_events",
    ),
    path("runs/<uuid:run_id>", views.run, name="api_run"),
    path("runs/<uuid:run_id>/cancel", views.run_cancel, name="api_run_cancel"),
    path(
        "tool-calls/<uuid:call_id>/decision",
        views.tool_call_decision,
        name="api_tool_call_decision",
    ),
    # For the command-line client (issue 18): api/extra_views.py.
    path("approvals", extra_views.approvals, name="api_approvals"),
    path(
        "conversations/<uuid:conversation_id>/shares",
        extra_views.shares,
        name="api_conversation_shares",
    ),
    path(
        "conversations/<uuid:conversation_id>/diff",
        extra_views.conversation_diff,
        name="api_conversation_diff",
    ),
    path(
        "conversations/<uuid:conversation_id>/patch",
        extra_views.conversation_patch,
        name="api_conversation_patch",
    ),
    path("runs/<uuid:run_id>/undo", extra_views.run_undo, name="api_run_undo"),
    path(
        "conversations/<uuid:conversation_id>/push",
        extra_views.conversation_push,
        name="api_conversation_push",
    ),
    path(
        "conversations/<uuid:conversation_id>/pull-request",
        extra_views.conversation_pull_request,
        name="api_conversation_pull_request",
    ),
    path("jobs/<uuid:job_id>", extra_views.job, name="api_job"),
    path("usage", extra_views.usage, name="api_usage"),
    path("openapi.json", views.openapi, name="api_openapi"),
    path("docs", views.docs, name="api_docs"),
    # Anything else under /api/v1/ is a JSON 404, not the site's HTML page.
    path("", views.unknown),
    path("<path:rest>", views.unknown),
]
