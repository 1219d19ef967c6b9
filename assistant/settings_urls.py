"""A team's assistant settings, included under t/<slug>/ (see config/urls.py)."""

from django.urls import path

from . import settings_views

urlpatterns = [
    path("settings/", settings_views.team_settings, name="team_settings"),
    path("settings/test/", settings_views.team_settings_test, name="team_settings_test"),
    path("settings/agent/", settings_views.team_agent_policy, name="team_agent_policy"),
]
