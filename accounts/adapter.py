from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialApp
from django.conf import settings
from django.http import Http404, HttpRequest


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        # Self-hosted sites may close sign-up to people without an invitation.
        if settings.SIGNUP_REQUIRES_INVITATION:
            return bool(request.session.get("invitation_token"))
        return True

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        team_slug = request.session.pop("joined_team", None)
        if team_slug:
            return f"/t/{team_slug}/"
        return super().get_login_redirect_url(request)

    def get_signup_redirect_url(self, request: HttpRequest) -> str:
        # allauth asks this, not get_login_redirect_url, right after a sign-up (email or
        # OAuth/OIDC): the team an invitation just joined (signals.on_signed_up) comes first.
        team_slug = request.session.pop("joined_team", None)
        if team_slug:
            return f"/t/{team_slug}/"
        return super().get_signup_redirect_url(request)


class ProviderNotConfigured(SocialApp.DoesNotExist, Http404):
    """A provider with no app (its variables unset): allauth code that expects
    SocialApp.DoesNotExist still gets it, and a view that lets it through answers 404 — the
    login and callback URLs of every installed provider exist, switched on or not."""


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def get_app(self, request: HttpRequest, provider, client_id=None) -> SocialApp:
        try:
            return super().get_app(request, provider, client_id=client_id)
        except SocialApp.DoesNotExist:
            raise ProviderNotConfigured(f"The sign-in provider {provider} is not switched on.")
