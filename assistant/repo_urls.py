"""Repository routes, included under t/<slug>/ (see config/urls.py)."""

from django.urls import path

from . import repo_views

urlpatterns = [
    path("repos/", repo_views.repository_list, name="repositories"),
    path("repos/fetch/", repo_views.repository_fetch, name="repository_fetch"),
    path(
        "repos/<uuid:repository_id>/status/",
        repo_views.repository_status,
        name="repository_status",
    ),
    path("repos/image/", repo_views.repository_image, name="repository_image"),
    path("repos/setup/", repo_views.repository_setup, name="repository_setup"),
    path("repos/rebuild/", repo_views.repository_rebuild, name="repository_rebuild"),
    path("repos/pull-requests/", repo_views.repository_forge, name="repository_forge"),
    path("repos/remove/", repo_views.repository_remove, name="repository_remove"),
    path(
        "c/<uuid:conversation_id>/repository/",
        repo_views.conversation_repository,
        name="conversation_repository",
    ),
    path(
        "c/<uuid:conversation_id>/patch/",
        repo_views.conversation_patch,
        name="conversation_patch",
    ),
    path("c/<uuid:conversation_id>/push/", repo_views.conversation_push, name="conversation_push"),
    path(
        "c/<uuid:conversation_id>/pull-request/",
        repo_views.conversation_pull_request,
        name="conversation_pull_request",
    ),
]
