"""What every /api/v1/ view shares: who is calling, rate limits, JSON in and out, errors.

Errors are always ``{"error": {"code": "...", "message": "..."}}`` with the matching status.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from accounts.models import Membership, User
from config.db import is_unavailable, unavailable_response

from . import keys, ratelimit
from .models import ApiKey, Scope

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]{1,50}$")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> JsonResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message}}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def not_found(what: str = "Nothing") -> ApiError:
    # The same answer whether the object doesn't exist or belongs to a team the caller isn't
    # in: an outsider learns nothing.
    return ApiError(404, "not_found", f"{what} was not found.")


UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="tandem"'}


@dataclass
class Caller:
    """Who is calling: a person by session, or a person through one of their API keys."""

    user: User
    key: ApiKey | None = None
    key_role: str = ""  # the key owner's role in the key's team

    @property
    def can_write(self) -> bool:
        return self.key is None or self.key.scope == Scope.WRITE

    def in_teams(self, prefix: str = "", team_slug: str | None = None) -> Q:
        """A filter for objects of the teams this caller may see (``prefix`` leads from the
        object to its team, e.g. "conversation__"): the key's team, or the person's teams, or
        just the one named by ``?team=``."""
        if self.key is not None:
            return Q(**{f"{prefix}team_id": self.key.team_id})
        where = Q(**{f"{prefix}team__memberships__user": self.user})
        if team_slug:
            where &= Q(**{f"{prefix}team__slug": team_slug})
        return where

    @overload
    def membership(self, team_slug: str | None, *, required: Literal[True]) -> Membership: ...
    @overload
    def membership(self, team_slug: str | None, *, required: bool) -> Membership | None: ...
    def membership(self, team_slug: str | None, *, required: bool) -> Membership | None:
        """The membership a team-scoped request acts through. Keys act in their own team;
        sessions name the team with ``?team=SLUG``. 404 for a team the caller isn't in."""
        if self.key is not None:
            if team_slug and team_slug != self.key.team.slug:
                raise not_found("The team")
            return Membership(team=self.key.team, user=self.user, role=self.key_role)
        if not team_slug:
            if required:
                raise ApiError(400, "team_required", "Name the team: add ?team=SLUG to the URL.")
            return None
        membership = (
            Membership.objects.select_related("team").filter(team__slug=team_slug, user=self.user)
        ).first()
        if membership is None:
            raise not_found("The team")
        return membership


def authenticate(request: HttpRequest) -> Caller:
    """An API key in ``Authorization: Bearer`` (its team only, CSRF-exempt: a browser never
    sends it by itself), or else the browser session (whose writes need the CSRF token)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, raw = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(
                401, "unauthorized", "Send the key as Authorization: Bearer <key>.", UNAUTHORIZED
            )
        found = keys.find_usable(raw.strip())
        if found is None:
            raise ApiError(
                401, "invalid_key", "This API key is unknown, revoked or expired.", UNAUTHORIZED
            )
        key, role = found
        keys.touch(key)
        return Caller(user=key.user, key=key, key_role=role)
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise ApiError(
            401,
            "unauthorized",
            "Sign in, or send an API key as Authorization: Bearer <key>.",
            UNAUTHORIZED,
        )
    if request.method not in SAFE_METHODS:
        # Django reads only the view's csrf_exempt attribute, which None lacks like any view.
        check = _CsrfCheck(lambda r: HttpResponse())
        reason = check.process_view(request, None, (), {})  # type: ignore[arg-type]
        if reason is not None:
            raise ApiError(
                403,
                "csrf_failed",
                f"CSRF check failed ({reason}). Send the csrftoken cookie's value in an "
                "X-CSRFToken header, or use an API key.",
            )
    return Caller(user=user)


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, run by the view for session requests only."""

    # The reason instead of a 403 page: process_view hands back whatever this returns.
    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason


def _limit(caller: Caller) -> ratelimit.Verdict:
    verdict = ratelimit.hit(
        ratelimit.buckets_for(caller.user.pk, caller.key.pk if caller.key else None)
    )
    if not verdict.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: the limit is {verdict.limit} a minute. "
            f"Try again in {verdict.retry_after} s.",
            {"Retry-After": str(verdict.retry_after), **_limit_headers(verdict)},
        )
    return verdict


def _limit_headers(verdict: ratelimit.Verdict) -> dict[str, str]:
    if not verdict.limit:
        return {}
    return {
        "X-RateLimit-Limit": str(verdict.limit),
        "X-RateLimit-Remaining": str(verdict.remaining),
    }


def admit(request: HttpRequest) -> tuple[Caller, ratelimit.Verdict]:
    """Authenticate, count against the rate limits, and check the key's scope."""
    caller = authenticate(request)
    verdict = _limit(caller)
    if request.method not in SAFE_METHODS and not caller.can_write:
        raise ApiError(
            403, "insufficient_scope", "This API key is read-only; writing needs a write key."
        )
    return caller, verdict


def endpoint(
    *methods: str, gate: threading.Semaphore | None = None
) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """A JSON endpoint: 405 for other methods, then the caller is admitted (401/429/403) and
    the view gets it; ApiError, Http404 and anything unexpected become JSON errors.

    ``gate``: at most that many of these requests are served at once in this process, the
    others wait their turn (see SEND_GATE in api/views.py)."""

    def decorate(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @csrf_exempt  # API keys need no CSRF token; authenticate() checks sessions' writes
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in methods:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"{request.method} is not allowed here.",
                        {"Allow": ", ".join(methods)},
                    )
                with gate or contextlib.nullcontext():
                    caller, verdict = admit(request)
                    response = view(request, caller, *args, **kwargs)
                for name, value in _limit_headers(verdict).items():
                    response[name] = value
                return response
            except ApiError as exc:
                return exc.response()
            except Http404:
                return not_found().response()
            except Exception as exc:
                if is_unavailable(exc):  # the database busy or restarting: 503, try again
                    log.warning("API request refused, database unavailable: %r", exc)
                    return unavailable_response(request, exc)
                log.exception("API request failed: %s %s", request.method, request.path)
                return error_response(500, "internal_error", "Tandem had an internal error.")

        return wrapper

    return decorate


# --- Request data ------------------------------------------------------------------------------


def json_body(request: HttpRequest, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The request's JSON object, its fields checked against ``fields`` (name -> type). An
    empty body is an empty object. 413 past API_MAX_BODY_BYTES, 400 for anything malformed."""
    limit = settings.API_MAX_BODY_BYTES
    too_big = ApiError(413, "body_too_large", f"The request body is over {limit:,} bytes.")
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise too_big  # before reading it
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_big
    if len(body) > limit:
        raise too_big
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    for name, value in data.items():
        expected = fields.get(name)
        if expected is None:
            raise ApiError(400, "unknown_field", f"Unknown field “{name[:50]}”.")
        # bool is an int in Python; no field here takes both.
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise ApiError(400, "invalid_field", f"“{name}” has the wrong type.")
    return data


def team_param(request: HttpRequest) -> str | None:
    """The ``?team=`` slug. One that can't be a slug names no team the caller is in: 404."""
    slug = request.GET.get("team")
    if slug is None or slug == "":
        return None
    if not SLUG_RE.match(slug):
        raise not_found("The team")
    return slug
