"""Database connections are borrowed, never kept (docs/architecture.md, "Database connections").

With PostgreSQL every process has one pool of at most DATABASE_POOL_SIZE connections (Django's
psycopg pool, CONN_MAX_AGE=0). A thread borrows a connection when it first queries and gives
it back when Django "closes" it: at the end of a request, around every Channels database call,
before and after every Celery task, and — for the agent's calls from its event loop — around
each call through ``db_sync_to_async`` below. A thread that is done with the database but
never closes its connection keeps it out of the pool for good, so async code must never reach
the ORM through a bare ``sync_to_async``.

When every connection is lent out for longer than DATABASE_POOL_TIMEOUT, the request is
answered 503 with a sentence (``pool_exhausted_response``), never a hang or a traceback; so is
a request that finds PostgreSQL down or restarting (``is_database_down``). While it is known
down, requests are answered at once, and the pool reconnects as soon as it is back (below).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import connections

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

MESSAGE = (
    "Tandem is too busy to answer right now: every database connection is in use. "
    "Try again in a few seconds."
)
RETRY_AFTER_SECONDS = 5


def db_sync_to_async(func: Callable[_P, _R]) -> Callable[_P, Any]:  # awaitable, untyped channels
    """``sync_to_async`` on a pool thread that returns its database connection after the call
    (and drops a broken one before it). For ORM work from async code."""
    return database_sync_to_async(func, thread_sensitive=False)


def release(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` and give the calling thread's connection back to the pool afterwards (for
    sync code called from an async view that then goes on without the database)."""

    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        finally:
            _release_connections()

    return wrapper


def release_now() -> None:
    """Give this thread's pooled connection back at once (it is borrowed again by the next
    query). For work after a commit that needs no database — publishing, enqueueing — done
    while other requests may be waiting for a connection. Without a pool (SQLite, PgBouncer
    alone) it does nothing: closing would only mean reconnecting."""
    for conn in connections.all(initialized_only=True):
        if conn.settings_dict.get("OPTIONS", {}).get("pool") and not conn.in_atomic_block:
            conn.close()


def _release_connections() -> None:
    """close_old_connections(), minus connections inside a transaction (a test's, which
    Django's test client also leaves open): closing one would break that transaction."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def is_pool_exhausted(exc: BaseException | None) -> bool:
    """Whether this exception (or one it was raised from) is the pool's timeout."""
    try:
        from psycopg_pool import PoolTimeout, TooManyRequests
    except ImportError:  # SQLite (embedded mode): there is no pool
        return False
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (PoolTimeout, TooManyRequests)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


DOWN_MESSAGE = (
    "Tandem cannot reach its database right now (it may be restarting). Try again in a few seconds."
)


def is_database_down(exc: BaseException | None) -> bool:
    """Whether this exception (or one it was raised from) is PostgreSQL refusing or dropping
    connections: down, restarting, shutting down. Not a conflict between transactions (an
    OperationalError too, but the database answered)."""
    try:
        import psycopg
    except ImportError:
        return False
    seen = 0
    while exc is not None and seen < 10:
        # No SQLSTATE: the connection itself failed (refused, closed under us). Class 08: a
        # connection exception; 57P: the server shutting down or not yet accepting.
        if (
            isinstance(exc, psycopg.OperationalError)
            and not is_pool_exhausted(exc)  # the pool's timeout is one too, with no SQLSTATE
            and (exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")))
        ):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def is_unavailable(exc: BaseException | None) -> bool:
    """The pool's timeout or a database that is down: a 503 that says so, not a 500."""
    return is_pool_exhausted(exc) or is_database_down(exc)


def unavailable_response(request: HttpRequest, exc: BaseException | None) -> HttpResponse:
    """503 with a sentence and Retry-After, for is_unavailable(exc). A database found down
    (or a pool timeout behind which the database does not answer) is remembered, so that the
    requests after this one are answered at once (DatabaseDownMiddleware)."""
    if is_database_down(exc) or (is_pool_exhausted(exc) and not _database_answers()):
        _note_down()
        return pool_exhausted_response(request, DOWN_MESSAGE)
    return pool_exhausted_response(request)


# --- While PostgreSQL is down: fail fast, and come back at once ----------------------------------
# Without this every request would wait DATABASE_POOL_TIMEOUT for a connection the pool can't
# make. Once PostgreSQL is known down in this process — a request found it down, or the pool
# gave up reconnecting (``pool_gave_up``, the pool's ``reconnect_failed``) — every request is
# answered 503 at once, and one background thread tries a connection of its own every
# DOWN_PROBE_SECONDS. When one succeeds it has the pool check its connections (dropping the
# broken ones and connecting anew at once, instead of after psycopg_pool's back-off, which had
# grown to 8-16 s during a few seconds' outage), then lets requests through again.
DOWN_PROBE_SECONDS = 0.5
_down = threading.Event()
_prober: threading.Thread | None = None
_prober_lock = threading.Lock()


def _note_down() -> None:
    global _prober
    with _prober_lock:
        _down.set()
        if _prober is None:
            _prober = threading.Thread(target=_probe_until_back, name="db-down-probe", daemon=True)
            _prober.start()


def pool_gave_up(pool: Any) -> None:
    """psycopg_pool's ``reconnect_failed``: the pool could not connect for its whole
    ``reconnect_timeout``. The database is down for this process from now on."""
    log.warning("The database pool could not reconnect: answering 503 until it answers")
    _note_down()


def _probe_until_back() -> None:
    global _prober
    while True:
        if _database_answers():
            _refill_pool()
            with _prober_lock:
                _down.clear()
                _prober = None
            log.warning("The database answers again")
            return
        time.sleep(DOWN_PROBE_SECONDS)


def _refill_pool() -> None:
    """Have the pool drop its broken connections and connect anew now (psycopg_pool's
    ``check``), so the first request after the outage finds a working connection."""
    pool = getattr(connections["default"], "pool", None)  # PostgreSQL's backend only
    if pool is None or pool.closed:  # SQLite, no pool (PgBouncer), or not opened yet
        return
    try:
        pool.check()
    except Exception:  # the next request will find out and say so
        log.warning("Checking the database pool after the outage failed", exc_info=True)


def _database_answers() -> bool:
    from django.conf import settings

    try:
        import psycopg
    except ImportError:  # SQLite (embedded mode): nothing to be down
        return True
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("postgresql"):
        return True
    try:
        psycopg.connect(
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            connect_timeout=1,
        ).close()
    except Exception:
        return False
    return True


def database_known_down() -> bool:
    """Whether PostgreSQL is known to be down in this process (see above): no waiting."""
    return _down.is_set()


class DatabaseDownMiddleware:
    """Answer 503 at once while the database is known to be down (probes excepted: /readyz
    says why itself)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path not in ("/healthz", "/readyz") and database_known_down():
            return pool_exhausted_response(request, DOWN_MESSAGE)
        return self.get_response(request)


def pool_exhausted_response(request: HttpRequest, message: str = MESSAGE) -> HttpResponse:
    from django.http import HttpResponse, JsonResponse

    response: HttpResponse
    if request.path.startswith("/api/"):
        response = JsonResponse({"error": {"code": "unavailable", "message": message}}, status=503)
    else:
        response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def server_error(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """handler500: a pool timeout or a database that is down becomes a 503 that says so;
    anything else is Django's 500. Must not touch the database (it may be what failed)."""
    exc = sys.exc_info()[1]
    if is_unavailable(exc):
        return unavailable_response(request, exc)
    from django.views.defaults import server_error as default

    return default(request, *args, **kwargs)
