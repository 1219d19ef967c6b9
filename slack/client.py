"""Talking to Slack: the Web API through slack_sdk (pointed at SLACK_API_BASE), incoming
webhooks, and how each failure is treated: retried later, fatal for the connection, or fatal
for this one message."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

TIMEOUT = 10

# The token no longer works, or the app was removed: retrying can never succeed, the
# connection is switched off and the admins are told.
REVOKED_ERRORS = {
    "invalid_auth",
    "not_authed",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "app_uninstalled",
    "team_disabled",
    "org_login_required",
    "ekm_access_denied",
}
# Incoming webhooks answer with words and a status code rather than JSON.
WEBHOOK_REVOKED = {"invalid_token", "no_service", "no_service_id", "no_team", "team_disabled"}


def web(token: str = "") -> WebClient:
    # No retry handlers: retries are the Celery task's job (with backoff, and never while a
    # database row is locked for longer than one request).
    return WebClient(
        token=token or None, base_url=settings.SLACK_API_BASE, timeout=TIMEOUT, retry_handlers=[]
    )


@dataclass
class Failure(Exception):
    """A call to Slack that failed. ``retry_in``: seconds to wait before trying again (None:
    don't); ``revoked``: the connection itself no longer works."""

    error: str
    retry_in: float | None = None
    revoked: bool = False

    def __str__(self) -> str:
        return self.error


def backoff(attempt: int) -> float:
    """Exponential back-off for 5xx and network errors: base, 2×base, 4×base… capped."""
    return float(min(settings.SLACK_RETRY_BASE_SECONDS * (2**attempt), 600))


def _retry_after(headers, attempt: int) -> float:
    for name in ("Retry-After", "retry-after"):
        value = (headers or {}).get(name)
        if value is not None:
            try:
                return max(float(value), 0.0)
            except ValueError:
                break
    return backoff(attempt)


def classify_api_error(exc: SlackApiError, attempt: int = 0) -> Failure:
    response = exc.response
    status = getattr(response, "status_code", 0) or 0
    data = response.data if isinstance(getattr(response, "data", None), dict) else {}
    error = str(data.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        return Failure(error="ratelimited", retry_in=_retry_after(response.headers, attempt))
    if status >= 500 or error in ("internal_error", "service_unavailable", "fatal_error"):
        return Failure(error=error if status < 500 else f"HTTP {status}", retry_in=backoff(attempt))
    return Failure(error=error, revoked=error in REVOKED_ERRORS)


def call(method, *, attempt: int = 0, **kwargs):
    """Call a WebClient method, turning every failure into a Failure."""
    try:
        return method(**kwargs)
    except SlackApiError as exc:
        raise classify_api_error(exc, attempt)
    except OSError as exc:  # connection refused, timeout, DNS: Slack may be back soon
        raise Failure(error=f"network: {exc.__class__.__name__}", retry_in=backoff(attempt))


def webhook_allowed(url: str) -> bool:
    return any(url.startswith(prefix) for prefix in settings.SLACK_WEBHOOK_PREFIXES)


def post_webhook(url: str, payload: dict, *, attempt: int = 0) -> None:
    """POST a message to an incoming webhook (or a slash command's response_url)."""
    if not webhook_allowed(url):
        raise Failure(error="webhook URL not allowed")
    try:
        response = WebhookClient(url, timeout=TIMEOUT, retry_handlers=[]).send_dict(payload)
    except OSError as exc:
        raise Failure(error=f"network: {exc.__class__.__name__}", retry_in=backoff(attempt))
    body = (response.body or "").strip()
    if response.status_code == 200:
        return
    if response.status_code == 429:
        raise Failure(error="ratelimited", retry_in=_retry_after(response.headers, attempt))
    if response.status_code >= 500:
        raise Failure(error=f"HTTP {response.status_code}", retry_in=backoff(attempt))
    error = body[:100] or f"HTTP {response.status_code}"
    revoked = body in WEBHOOK_REVOKED or response.status_code in (404, 410)
    raise Failure(error=error, revoked=revoked)
