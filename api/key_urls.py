"""The API keys page, included under t/<slug>/ (see config/urls.py)."""

from django.urls import path

from . import key_views

urlpatterns = [
    path("api-keys/", key_views.key_list, name="api_keys"),
    # The key is named in the POST (as repositories are), so the URL has only the team.
    path("api-keys/revoke/", key_views.key_revoke, name="api_key_revoke"),
]
