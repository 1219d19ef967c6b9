"""Invitations follow a person through sign-up and sign-in (email or OAuth)."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from allauth.account.signals import email_confirmed, user_logged_in, user_signed_up
from django.contrib import messages
from django.dispatch import receiver

from .services import TeamError, accept_invitations_for_verified_email, invitation_accept


def _accept_pending(request, user) -> None:
    if request is None:
        return
    token = request.session.pop("invitation_token", None)
    if token:
        try:
            team = invitation_accept(token=token, user=user)
        except TeamError as exc:
            messages.error(request, str(exc))
        else:
            request.session["joined_team"] = team.slug
            messages.success(request, f"You joined {team.name}.")
    for address in EmailAddress.objects.filter(user=user, verified=True):
        for team in accept_invitations_for_verified_email(user=user, email=address.email):
            messages.success(request, f"You joined {team.name}.")
            request.session.setdefault("joined_team", team.slug)


@receiver(user_signed_up)
def on_signed_up(sender, request, user, **kwargs) -> None:
    _accept_pending(request, user)


@receiver(user_logged_in)
def on_logged_in(sender, request, user, **kwargs) -> None:
    _accept_pending(request, user)


@receiver(email_confirmed)
def on_email_confirmed(sender, request, email_address, **kwargs) -> None:
    accept_invitations_for_verified_email(user=email_address.user, email=email_address.email)
