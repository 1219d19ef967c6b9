"""A provider that is not switched on answers 404 at its login and callback URLs, as any other
unknown page: not a 500 from allauth looking for an app that isn't there."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

URLS = [
    "/accounts/github/login/",
    "/accounts/github/login/callback/?code=x&state=y",
    "/accounts/google/login/",
    "/accounts/google/login/callback/?code=x&state=y",
    "/accounts/gitlab/login/",
    "/accounts/gitlab/login/callback/?code=x&state=y",
    "/accounts/oidc/oidc/login/",
    "/accounts/oidc/oidc/login/callback/?code=x&state=y",
    "/accounts/oidc/anything/login/",
]


@pytest.fixture
def no_providers(settings):
    settings.SOCIALACCOUNT_PROVIDERS = {}


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("method", ["get", "post"])
def test_an_unconfigured_provider_is_404(no_providers, url, method):
    client = Client(raise_request_exception=False)
    response = getattr(client, method)(url)
    assert response.status_code == 404, (url, response.status_code)


def test_a_configured_provider_still_starts_its_login(settings):
    settings.SOCIALACCOUNT_PROVIDERS = {
        "github": {"APPS": [{"client_id": "gh-id", "secret": "gh-secret"}]}
    }
    response = Client().post("/accounts/github/login/")
    assert response.status_code == 302
    assert response["Location"].startswith("https://github.com/login/oauth/authorize")
    # The others are still off.
    assert Client(raise_request_exception=False).post("/accounts/gitlab/login/").status_code == 404
