from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse


class HealthCheckMiddleware:
    """Answer /healthz before host validation and the HTTPS redirect: load balancers probe
    instances by IP address over plain HTTP."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/healthz":
            return JsonResponse({"ok": True})
        return self.get_response(request)
