"""Request types for views, for the type checker (django-stubs' way of typing what middleware
and decorators guarantee)."""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

from .models import User


class HtmxHttpRequest(HttpRequest):
    """Every request: django-htmx's middleware sets ``htmx``."""

    htmx: HtmxDetails


class AuthenticatedHttpRequest(HtmxHttpRequest):
    """The request of a @login_required view: its user is a User, never AnonymousUser."""

    user: User
