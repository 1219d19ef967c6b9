from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


class HealthCheckMiddleware:
    """Answer /healthz (the process answers) and /readyz (the database, Redis and a worker
    answer: config/readiness.py) and /metrics (config/metrics.py) before host validation and the
    HTTPS redirect: load balancers, orchestrators and Prometheus probe instances by IP address
    over plain HTTP."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return JsonResponse({"ok": True})
        if request.path == "/readyz":
            from .readiness import readyz

            return readyz(request)
        if request.path == "/metrics":
            from .metrics import metrics_view

            return metrics_view(request)
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """A Content-Security-Policy on every response (Django 5.2 has none built in).

    Scripts and styles come only from this site's own files: no inline script, event handler,
    style attribute or eval anywhere (templates declare behaviour with data attributes,
    static/js/page.js; htmx is told not to add its indicator style or evaluate anything). The
    page's WebSocket goes to this same host, named explicitly in connect-src for browsers whose
    'self' doesn't cover ws:/wss:. No framing, no plugins, no <base> elsewhere.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy_for(request)
        return response


def policy_for(request: HttpRequest) -> str:
    from django.core.exceptions import DisallowedHost

    connect = "'self'"
    try:
        host = request.get_host()
    except DisallowedHost:
        host = ""
    if host:
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src {connect}",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'self'",
        )
    )
