from django.urls import path

from . import views

urlpatterns = [
    path("audit/", views.audit_log, name="audit_log"),
    path("members/", views.members, name="members"),
    path("members/<uuid:user_id>/remove/", views.member_remove, name="member_remove"),
    path("members/<uuid:user_id>/role/", views.member_role, name="member_role"),
    path(
        "invitations/<uuid:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
]
