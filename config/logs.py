"""Log lines with context: which request, team, user, conversation and run an event belongs to.

``LOG_FORMAT=json`` writes one JSON object per line (what a log collector wants); the default
is the human-readable line. Either way the ids come from one context variable, set by
``RequestContextMiddleware`` for a request and by ``bind()`` around a run in a worker, so any
``logging`` call in between carries them without passing them around. asyncio tasks copy the
context when they are made, so two runs on one worker loop never see each other's ids.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty

# The keys a line may carry, in the order they are written.
FIELDS = ("request_id", "team", "user", "conversation", "run")

_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "tandem_log_context", default=MappingProxyType({})
)
# The request being answered: its user is named once something has looked it up (reading
# request.user here would cost a session query on pages that never need one).
_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "tandem_log_request", default=None
)


def current() -> dict[str, str]:
    """The ids known here: the bound ones, and the request's user if already looked up."""
    ids = dict(_context.get())
    if "user" not in ids:
        user = _known_user(_request.get())
        if user:
            ids["user"] = user
    return ids


def _known_user(request: HttpRequest | None) -> str | None:
    if request is None or "user" not in request.__dict__:
        return None
    user = request.__dict__["user"]
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:  # type: ignore[attr-defined]
        return None
    return str(user.pk) if getattr(user, "is_authenticated", False) else None


@contextlib.contextmanager
def bind(**ids: object) -> Iterator[None]:
    """Within the block, log lines also carry these ids (None values are left out)."""
    token = _context.set(_merged(ids))
    try:
        yield
    finally:
        _context.reset(token)


def bind_here(**ids: object) -> None:
    """Add ids to the current context for the rest of it (an asyncio task's own copy, say)."""
    _context.set(_merged(ids))


def _merged(ids: dict[str, object]) -> dict[str, str]:
    return {
        **_context.get(),
        **{key: str(value) for key, value in ids.items() if value not in (None, "")},
    }


class ContextFilter(logging.Filter):
    """Puts the context's ids on every record (as attributes), for either formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        for key in FIELDS:
            if not hasattr(record, key):
                setattr(record, key, ids.get(key))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context's
    ids that are known, and the traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = current()
        # Django logs a 4xx/5xx (django.request) after the middleware is done: the request it
        # passes along still has its id.
        request_id = getattr(getattr(record, "request", None), "request_id", None)
        if "request_id" not in ids and request_id:
            ids["request_id"] = request_id
        for key in FIELDS:
            value = getattr(record, key, None) or ids.get(key)
            if value:
                line[key] = str(value)
        for key in ("method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


# A request id from the proxy in front is kept when it looks like one (nginx's $request_id is
# 32 hex digits); anything else is replaced, so a client can't write what it likes into logs.
_GOOD_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
request_log = logging.getLogger("tandem.request")
PROBES = ("/healthz", "/readyz", "/metrics")


class RequestContextMiddleware:
    """Gives each request an id (X-Request-ID from the proxy when well-formed, else a new one),
    sends it back in the response's X-Request-ID, binds it (and the user, team and
    conversation once known) for the request's log lines, and logs one line per request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if _GOOD_REQUEST_ID.match(given) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        started = time.monotonic()
        token = _context.set({"request_id": request_id})
        request_token = _request.set(request)
        try:
            response = self.get_response(request)
            # One line per request in JSON mode (Daphne's access log is off there, see
            # config/serve.py); probes ask every few seconds, logged only when not 200.
            if settings.LOG_FORMAT == "json" and (
                request.path not in PROBES or response.status_code != 200
            ):
                request_log.info(
                    "%s %s %s",
                    request.method,
                    request.path,
                    response.status_code,
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": response.status_code,
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )
        finally:
            _request.reset(request_token)
            _context.reset(token)
        response["X-Request-ID"] = request_id
        return response

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs) -> None:
        # Team pages are /t/<slug>/…, a conversation's /…/c/<uuid>/…: named from the URL.
        bind_here(team=view_kwargs.get("slug"), conversation=view_kwargs.get("conversation_id"))
