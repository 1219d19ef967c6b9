from django.urls import path

from . import views

urlpatterns = [
    path("members/", views.members, name="members"),
    path("members/<uuid:user_id>/remove/", views.member_remove, name="member_remove"),
    path("members/<uuid:user_id>/role/", views.member_role, name="member_role"),
    path(
        "invitations/<uuid:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("settings/", views.team_settings, name="team_settings"),
    path("settings/test/", views.team_settings_test, name="team_settings_test"),
    path("settings/agent/", views.team_agent_policy, name="team_agent_policy"),
]
