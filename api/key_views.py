"""The API keys page of a team: make a key (shown once), see and revoke keys."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.selectors import membership_for

from . import selectors, services
from .models import Scope

EXPIRY_CHOICES = [
    ("", "Never"),
    ("7", "In 7 days"),
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
]


class KeyForm(forms.Form):
    name = forms.CharField(max_length=100, required=False)
    scope = forms.ChoiceField(choices=Scope.choices, initial=Scope.READ)
    expires_in = forms.ChoiceField(choices=EXPIRY_CHOICES, required=False)

    def expires(self) -> datetime | None:
        days = self.cleaned_data.get("expires_in")
        return timezone.now() + timedelta(days=int(days)) if days else None


@login_required
@require_http_methods(["GET", "POST"])
def key_list(request: HttpRequest, slug: str) -> HttpResponse:
    membership = membership_for(request.user, slug)
    form = KeyForm(request.POST or None)
    new_key = None
    if request.method == "POST" and form.is_valid():
        try:
            new_key = services.apikey_create(
                membership=membership,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                expires=form.expires(),
            )
        except services.ApiKeyError as exc:
            form.add_error(None, str(exc))
        else:
            form = KeyForm()
    context = {
        "team": membership.team,
        "membership": membership,
        "form": form,
        "keys": selectors.keys_visible_to(membership),
        "new_key": new_key,
        "now": timezone.now(),
        "api_base": request.build_absolute_uri("/api/v1/"),
    }
    response = render(request, "api/keys.html", context)
    if new_key is not None:
        response["Cache-Control"] = "no-store"  # the page holds the key itself
    return response


@login_required
@require_POST
def key_revoke(request: HttpRequest, slug: str) -> HttpResponse:
    """Revoke the key named by the POST's ``key`` uuid: 400 without one, 404 for a key the
    member can't see (another member's, unless an admin; another team's)."""
    membership = membership_for(request.user, slug)
    try:
        key_id = uuid.UUID(request.POST.get("key", ""))
    except ValueError:
        return HttpResponseBadRequest("Choose a key.")
    key = selectors.key_for(membership, key_id)
    if services.apikey_revoke(key=key):
        messages.success(request, f"Revoked the key tdm_{key.prefix}…; it no longer works.")
    return redirect("api_keys", slug=slug)
