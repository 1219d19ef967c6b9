"""The Tools page's routes, included under t/<slug>/ (see config/urls.py)."""

from django.urls import path

from . import views

urlpatterns = [
    path("tools/", views.tools_page, name="mcp_tools"),
    path("tools/servers/add/", views.server_add, name="mcp_server_add"),
    path("tools/servers/<uuid:server_id>/", views.server_card, name="mcp_server_card"),
    path("tools/servers/<uuid:server_id>/edit/", views.server_edit, name="mcp_server_edit"),
    path("tools/servers/<uuid:server_id>/remove/", views.server_remove, name="mcp_server_remove"),
    path(
        "tools/servers/<uuid:server_id>/refresh/", views.server_refresh, name="mcp_server_refresh"
    ),
    path(
        "tools/servers/<uuid:server_id>/tools/<int:tool_id>/",
        views.tool_update,
        name="mcp_tool_update",
    ),
]
