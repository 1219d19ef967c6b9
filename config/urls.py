from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from assistant.tool_settings_urls import staff_urlpatterns as plugin_staff_urlpatterns
from assistant.urls import run_urlpatterns

urlpatterns = [
    path("", account_views.home, name="home"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("teams/new/", account_views.team_create, name="team_create"),
    path("invite/<str:token>/", account_views.invitation_accept, name="invitation_accept"),
    path("t/<slug:slug>/", include("accounts.urls")),
    path("t/<slug:slug>/", include("assistant.urls")),
    path("t/<slug:slug>/", include("assistant.repo_urls")),
    path("t/<slug:slug>/", include("assistant.settings_urls")),  # the team's model, allowlist
    path("t/<slug:slug>/", include("assistant.tool_settings_urls")),  # plugins, docs hosts
    path("t/<slug:slug>/", include("api.key_urls")),
    path("t/<slug:slug>/", include("mcpservers.urls")),  # the Tools page (MCP servers)
    path("api/v1/", include("api.urls")),
    path("t/<slug:slug>/usage/", include("usage.urls")),
    path("staff/usage/", include("usage.staff_urls")),
    path("staff/plugins/", include(plugin_staff_urlpatterns)),
    path("staff/audit/", account_views.staff_audit_log, name="staff_audit_log"),
    path("", include("sharing.urls")),  # /t/<slug>/…/shares/ and the shared page /s/<token>/
    path("", include("slack.urls")),  # /slack/… (from Slack) and /t/<slug>/slack/…
    *run_urlpatterns,
]

handler500 = "config.db.server_error"
