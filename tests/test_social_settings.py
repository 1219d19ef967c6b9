"""OAuth/OIDC providers are switched on by environment variables (config.settings
``_social_providers()``), and the sign-in page offers exactly the ones switched on."""

from __future__ import annotations

import pytest
from django.urls import reverse

from config import settings as config_settings

PROVIDER_ENV = [
    "GITHUB_CLIENT_ID",
    "GITHUB_CLIENT_SECRET",
    "GOOGLE_CLIENT_ID",
    "GOOGLE_CLIENT_SECRET",
    "GITLAB_CLIENT_ID",
    "GITLAB_CLIENT_SECRET",
    "GITLAB_URL",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
    "OIDC_SERVER_URL",
    "OIDC_PROVIDER_ID",
    "OIDC_NAME",
]


@pytest.fixture
def env(monkeypatch):
    """A clean slate: none of the provider variables set. Returns a setter."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> dict:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        return config_settings._social_providers()

    return set_env


def test_nothing_set_means_no_providers(env):
    assert env() == {}


def test_github(env):
    providers = env(GITHUB_CLIENT_ID="gh-id", GITHUB_CLIENT_SECRET="gh-secret")
    assert providers == {
        "github": {
            "APPS": [{"client_id": "gh-id", "secret": "gh-secret"}],
            "SCOPE": ["user:email"],
        }
    }


def test_google(env):
    providers = env(GOOGLE_CLIENT_ID="g-id", GOOGLE_CLIENT_SECRET="g-secret")
    assert providers == {
        "google": {
            "APPS": [{"client_id": "g-id", "secret": "g-secret"}],
            "SCOPE": ["profile", "email"],
        }
    }


def test_gitlab_com_and_self_hosted(env):
    providers = env(GITLAB_CLIENT_ID="gl-id", GITLAB_CLIENT_SECRET="gl-secret")
    assert providers == {"gitlab": {"APPS": [{"client_id": "gl-id", "secret": "gl-secret"}]}}

    providers = env(GITLAB_URL="https://gitlab.example.com")
    assert providers["gitlab"]["APPS"] == [
        {
            "client_id": "gl-id",
            "secret": "gl-secret",
            "settings": {"gitlab_url": "https://gitlab.example.com"},
        }
    ]


def test_oidc_defaults(env):
    providers = env(
        OIDC_CLIENT_ID="o-id", OIDC_CLIENT_SECRET="o-secret", OIDC_SERVER_URL="https://sso.example"
    )
    assert providers == {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "oidc",
                    "name": "Single sign-on",
                    "client_id": "o-id",
                    "secret": "o-secret",
                    "settings": {"server_url": "https://sso.example"},
                }
            ]
        }
    }


def test_oidc_provider_id_and_name(env):
    providers = env(
        OIDC_CLIENT_ID="o-id",
        OIDC_CLIENT_SECRET="o-secret",
        OIDC_SERVER_URL="https://sso.example",
        OIDC_PROVIDER_ID="keycloak",
        OIDC_NAME="Acme Keycloak",
    )
    [app] = providers["openid_connect"]["APPS"]
    assert (app["provider_id"], app["name"]) == ("keycloak", "Acme Keycloak")


def test_a_secret_without_a_client_id_switches_nothing_on(env):
    providers = env(
        GITHUB_CLIENT_SECRET="x",
        GOOGLE_CLIENT_SECRET="x",
        GITLAB_CLIENT_SECRET="x",
        GITLAB_URL="https://gitlab.example.com",
        OIDC_CLIENT_SECRET="x",
        OIDC_SERVER_URL="https://sso.example",
    )
    assert providers == {}


def test_all_four_together_and_off_again(env, monkeypatch):
    providers = env(
        GITHUB_CLIENT_ID="gh",
        GOOGLE_CLIENT_ID="g",
        GITLAB_CLIENT_ID="gl",
        OIDC_CLIENT_ID="o",
        OIDC_SERVER_URL="https://sso.example",
    )
    assert set(providers) == {"github", "google", "gitlab", "openid_connect"}

    monkeypatch.setenv("GOOGLE_CLIENT_ID", "")  # set but empty: off
    monkeypatch.delenv("OIDC_CLIENT_ID")
    assert set(config_settings._social_providers()) == {"github", "gitlab"}


# --- The sign-in page ----------------------------------------------------------------------


PROVIDER_LOGIN_PATHS = [
    "/accounts/github/login/",
    "/accounts/google/login/",
    "/accounts/gitlab/login/",
    "/accounts/oidc/",
]


@pytest.mark.django_db
def test_login_page_without_providers_shows_no_buttons(client, settings, env):
    settings.SOCIALACCOUNT_PROVIDERS = env()

    response = client.get(reverse("account_login"))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="password"' in html  # the email/password form is there
    for path in PROVIDER_LOGIN_PATHS:
        assert path not in html
    assert "Single sign-on" not in html
    assert "Or use a third-party" not in html  # allauth's heading over the buttons
    assert "<a title=" not in html  # allauth's provider button


@pytest.mark.django_db
def test_login_page_with_oidc_shows_the_provider_name(client, settings, env):
    settings.SOCIALACCOUNT_PROVIDERS = env(
        OIDC_CLIENT_ID="o-id",
        OIDC_CLIENT_SECRET="o-secret",
        OIDC_SERVER_URL="https://sso.example",
        OIDC_PROVIDER_ID="acme-sso",
        OIDC_NAME="Acme Single Sign-On",
    )

    response = client.get(reverse("account_login"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Or use a third-party" in html
    assert '<a title="Acme Single Sign-On"' in html
    assert html.count("<a title=") == 1
    assert 'href="/accounts/oidc/acme-sso/login/' in html
    for path in PROVIDER_LOGIN_PATHS[:3]:
        assert path not in html


@pytest.mark.django_db
def test_login_page_with_oidc_default_name(client, settings, env):
    settings.SOCIALACCOUNT_PROVIDERS = env(
        OIDC_CLIENT_ID="o-id", OIDC_SERVER_URL="https://sso.example"
    )

    html = client.get(reverse("account_login")).content.decode()

    assert "Single sign-on" in html
    assert 'href="/accounts/oidc/oidc/login/' in html


@pytest.mark.django_db
def test_login_page_with_every_provider(client, settings, env):
    settings.SOCIALACCOUNT_PROVIDERS = env(
        GITHUB_CLIENT_ID="gh",
        GOOGLE_CLIENT_ID="g",
        GITLAB_CLIENT_ID="gl",
        OIDC_CLIENT_ID="o",
        OIDC_SERVER_URL="https://sso.example",
    )

    html = client.get(reverse("account_login")).content.decode()

    assert html.count("<a title=") == 4
    for path in PROVIDER_LOGIN_PATHS:
        assert path in html
    for name in ("GitHub", "Google", "GitLab", "Single sign-on"):
        assert f'<a title="{name}"' in html
