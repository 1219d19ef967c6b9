"""Routes of tool_settings_views: team ones under t/<slug>/, the staff page under staff/."""

from django.urls import path

from . import tool_settings_views as views

urlpatterns = [
    path("settings/plugins/<slug:plugin>/", views.team_plugin_switch, name="team_plugin_switch"),
    path("settings/docs/", views.team_docs_allowlist, name="team_docs_allowlist"),
]

staff_urlpatterns = [
    path("", views.staff_plugins, name="staff_plugins"),
]
