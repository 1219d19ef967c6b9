"""Sign-in with a generic OpenID Connect provider, over real HTTP against a stand-in provider.

The browser side is Django's test Client; the provider side is ``tests/oidc_provider.py`` on
127.0.0.1. allauth fetches discovery, exchanges the code at ``/token`` and fetches
``/userinfo`` itself, with real requests, exactly as it would against a real provider.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from django.contrib.auth import get_user_model
from django.urls import reverse

from accounts.models import Invitation, Membership, Role
from accounts.services import invitation_create
from config import settings as config_settings
from tests.oidc_provider import OIDCProvider

pytestmark = pytest.mark.django_db

PROVIDER_ID = "tandem-sso"
PROVIDER_NAME = "Acme SSO"
CALLBACK_PATH = f"/accounts/oidc/{PROVIDER_ID}/login/callback/"


@pytest.fixture
def oidc(settings, monkeypatch):
    """The stand-in provider, switched on in Tandem the documented way: OIDC_* environment
    variables read by ``config.settings._social_providers()``."""
    with OIDCProvider() as provider:
        monkeypatch.setenv("OIDC_CLIENT_ID", provider.client_id)
        monkeypatch.setenv("OIDC_CLIENT_SECRET", provider.client_secret)
        monkeypatch.setenv("OIDC_SERVER_URL", provider.base_url)
        monkeypatch.setenv("OIDC_PROVIDER_ID", PROVIDER_ID)
        monkeypatch.setenv("OIDC_NAME", PROVIDER_NAME)
        for prefix in ("GITHUB", "GOOGLE", "GITLAB"):
            monkeypatch.delenv(f"{prefix}_CLIENT_ID", raising=False)
        settings.SOCIALACCOUNT_PROVIDERS = config_settings._social_providers()
        yield provider


def start_login(client) -> str:
    """The sign-in button: POST to allauth's provider login view. Returns the authorize URL."""
    url = reverse("openid_connect_login", kwargs={"provider_id": PROVIDER_ID})
    assert url == f"/accounts/oidc/{PROVIDER_ID}/login/"
    response = client.post(url)
    assert response.status_code == 302, response.content[:500]
    return response["Location"]


def authorize(url: str) -> str:
    """The browser at the provider: a real GET, redirects not followed. Returns the callback
    URL the provider sends the browser back to."""
    response = httpx.get(url, follow_redirects=False, trust_env=False, timeout=10)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def callback(client, url: str, **replace: str):
    """Back at Tandem: GET the callback with the test Client (optionally tampering with the
    query)."""
    parts = urlsplit(url)
    assert parts.path == CALLBACK_PATH
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(replace)
    return client.get(parts.path, query)


def sign_in(client, oidc: OIDCProvider):
    location = start_login(client)
    assert location.startswith(f"{oidc.base_url}/authorize?")
    return callback(client, authorize(location))


def signed_in_user(client):
    from django.contrib.auth import get_user

    class _Request:
        session = client.session

    return get_user(_Request())


# --- The whole flow --------------------------------------------------------------------------


def test_oidc_sign_up_over_real_http(client, oidc):
    location = start_login(client)
    authorize_query = parse_qs(urlsplit(location).query)
    assert authorize_query["client_id"] == [oidc.client_id]
    assert authorize_query["response_type"] == ["code"]
    assert set(authorize_query["scope"][0].split()) == {"openid", "profile", "email"}
    assert authorize_query["redirect_uri"] == [f"http://testserver{CALLBACK_PATH}"]
    state = authorize_query["state"][0]

    back = authorize(location)
    back_query = parse_qs(urlsplit(back).query)
    assert back_query["state"] == [state]  # the provider echoes the state
    assert oidc.states == [state]

    response = callback(client, back)
    assert response.status_code == 302, response.content[:2000]
    assert response["Location"] == "/"

    # allauth talked to the provider itself, over HTTP: discovery, code exchange, userinfo.
    [token_call] = oidc.calls_to("/token")
    assert token_call.method == "POST"
    assert token_call.status == 200
    assert token_call.form["code"] == back_query["code"][0]
    assert token_call.form["grant_type"] == "authorization_code"
    assert token_call.form["redirect_uri"] == f"http://testserver{CALLBACK_PATH}"
    [userinfo_call] = oidc.calls_to("/userinfo")
    assert userinfo_call.status == 200
    assert userinfo_call.headers["authorization"].startswith("Bearer ")
    assert oidc.calls_to("/.well-known/openid-configuration")
    assert not oidc.codes  # the code was used up

    user = get_user_model().objects.get(email="dana@example.com")
    assert signed_in_user(client) == user
    assert not user.has_usable_password()
    account = SocialAccount.objects.get(user=user)
    assert (account.provider, account.uid) == (PROVIDER_ID, "user-1")
    assert account.extra_data["userinfo"]["email"] == "dana@example.com"
    assert account.extra_data["id_token"]["iss"] == oidc.issuer
    address = EmailAddress.objects.get(user=user)
    assert (address.email, address.verified, address.primary) == ("dana@example.com", True, True)

    # Signed in: the home page asks a first-time user to create a team.
    home = client.get("/")
    assert home.status_code == 302
    assert home["Location"] == reverse("team_create")


def test_oidc_second_sign_in_reuses_the_account(client, oidc):
    assert sign_in(client, oidc).status_code == 302
    client.logout()
    response = sign_in(client, oidc)
    assert response.status_code == 302, response.content[:2000]
    user = get_user_model().objects.get(email="dana@example.com")
    assert signed_in_user(client) == user
    assert get_user_model().objects.count() == 1
    assert SocialAccount.objects.filter(user=user).count() == 1


def test_invited_by_email_joins_team_on_oidc_sign_up(client, oidc, team, alice):
    invitation = invitation_create(
        team=team, created_by=alice, email="dana@example.com", role=Role.ADMIN
    ).invitation

    response = sign_in(client, oidc)

    assert response.status_code == 302, response.content[:2000]
    user = get_user_model().objects.get(email="dana@example.com")
    assert signed_in_user(client) == user
    membership = Membership.objects.get(team=team, user=user)
    assert membership.role == Role.ADMIN
    invitation.refresh_from_db()
    assert invitation.accepted is not None
    assert invitation.accepted_by == user
    assert response["Location"] == f"/t/{team.slug}/"


def test_invitation_is_not_joined_when_provider_has_not_verified_the_email(
    client, oidc, team, alice
):
    invitation = invitation_create(team=team, created_by=alice, email="dana@example.com")
    oidc.set_user(sub="user-2", email="dana@example.com", email_verified=False, name="Dana")

    response = sign_in(client, oidc)

    assert response.status_code == 302, response.content[:2000]
    user = get_user_model().objects.get(email="dana@example.com")
    assert signed_in_user(client) == user
    assert not EmailAddress.objects.get(user=user).verified
    assert not Membership.objects.filter(team=team, user=user).exists()
    invitation.invitation.refresh_from_db()
    assert invitation.invitation.accepted is None


def test_invitation_link_opened_first_then_oidc_sign_up_joins_team(client, oidc, team, alice):
    new = invitation_create(team=team, created_by=alice)  # a link, for anyone
    page = client.get(f"/invite/{new.token}/")
    assert page.status_code == 200
    assert client.session["invitation_token"] == new.token
    oidc.set_user(sub="erin", email="erin@example.org", email_verified=True, name="Erin")

    response = sign_in(client, oidc)

    assert response.status_code == 302, response.content[:2000]
    assert response["Location"] == f"/t/{team.slug}/"
    user = get_user_model().objects.get(email="erin@example.org")
    assert signed_in_user(client) == user
    assert Membership.objects.get(team=team, user=user).role == Role.MEMBER
    invitation = Invitation.objects.get(pk=new.invitation.pk)
    assert invitation.accepted_by == user
    assert "invitation_token" not in client.session
    assert client.get("/")["Location"] == reverse("conversation_list", args=[team.slug])


def test_existing_user_opens_invitation_link_then_signs_in_by_oidc(
    client, oidc, team, alice, charlie
):
    """Charlie already has a password account; the provider vouches for his address, so the
    OIDC sign-in is his (email authentication), and the pending link is accepted."""
    new = invitation_create(team=team, created_by=alice)
    client.get(f"/invite/{new.token}/")
    oidc.set_user(sub="charlie-sso", email="charlie@example.com", email_verified=True)

    response = sign_in(client, oidc)

    assert response.status_code == 302, response.content[:2000]
    assert signed_in_user(client) == charlie
    assert get_user_model().objects.filter(email="charlie@example.com").count() == 1
    assert SocialAccount.objects.get(user=charlie).uid == "charlie-sso"
    assert Membership.objects.filter(team=team, user=charlie).exists()
    assert "invitation_token" not in client.session
    assert client.get("/")["Location"] == reverse("conversation_list", args=[team.slug])


# --- Failures --------------------------------------------------------------------------------


def _assert_auth_error_page(response) -> None:
    """allauth's "Third-Party Login Failure" page (401), not a crash."""
    assert response.status_code == 401, response.content[:2000]
    templates = {template.name for template in response.templates}
    assert "socialaccount/authentication_error.html" in templates
    assert b"Third-Party Login Failure" in response.content


def test_wrong_client_secret_fails_cleanly(client, oidc, settings):
    app = settings.SOCIALACCOUNT_PROVIDERS["openid_connect"]["APPS"][0]
    app["secret"] = "not-the-secret"

    response = sign_in(client, oidc)

    _assert_auth_error_page(response)
    [token_call] = oidc.calls_to("/token")
    assert token_call.status == 401
    assert not oidc.calls_to("/userinfo")
    assert not get_user_model().objects.exists()
    assert signed_in_user(client).is_anonymous
    assert client.get("/")["Location"].startswith(reverse("account_login"))


def test_tampered_state_is_refused(client, oidc):
    location = start_login(client)
    back = authorize(location)

    response = callback(client, back, state="forged-state-0123")

    _assert_auth_error_page(response)
    assert not oidc.calls_to("/token")  # the code was never exchanged
    assert not get_user_model().objects.exists()
    assert signed_in_user(client).is_anonymous


def test_missing_state_is_refused(client, oidc):
    back = authorize(start_login(client))
    parts = urlsplit(back)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    del query["state"]

    response = client.get(parts.path, query)

    _assert_auth_error_page(response)
    assert not oidc.calls_to("/token")
    assert not get_user_model().objects.exists()


def test_state_from_another_browser_is_refused(client, oidc, django_user_model):
    from django.test import Client

    back = authorize(start_login(client))  # the victim's login started...
    attacker = Client()

    response = attacker.get(back)  # ...but the callback lands in another session

    _assert_auth_error_page(response)
    assert not oidc.calls_to("/token")
    assert not django_user_model.objects.exists()


@pytest.mark.parametrize(
    "override",
    [{"aud": "someone-else"}, {"iss": "http://evil.example"}, {"exp": 1_000_000_000}],
    ids=["audience", "issuer", "expired"],
)
def test_bad_id_token_is_refused(client, oidc, override):
    oidc.id_token_overrides = override

    response = sign_in(client, oidc)

    _assert_auth_error_page(response)
    assert oidc.calls_to("/token")[0].status == 200
    assert not get_user_model().objects.exists()
    assert signed_in_user(client).is_anonymous
