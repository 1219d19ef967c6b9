"""Helpers for the API tests: keys, and requests that check the error shape on the way."""

from __future__ import annotations

import json
import re

from django.test import Client


def make_key(team, user, *, scope: str = "write", name: str = "test", expires=None) -> str:
    from accounts.models import Membership
    from api.services import apikey_create

    membership = Membership.objects.get(team=team, user=user)
    return apikey_create(membership=membership, name=name, scope=scope, expires=expires).raw


def call(
    client: Client,
    method: str,
    path: str,
    *,
    key: str | None = None,
    body=None,
    raw: bytes | str | None = None,
    headers: dict | None = None,
):
    """One request to /api/v1/``path``; an error response must have the JSON error shape."""
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body) if body is not None else "")
    response = client.generic(
        method, "/api/v1/" + path, data, content_type="application/json", headers=headers
    )
    if response.status_code >= 400:
        assert_error(response)
    return response


def assert_error(response, status: int | None = None, code: str | None = None) -> dict:
    if status is not None:
        assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert isinstance(error["code"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def csrf_token(client: Client, page: str = "/t/acme/") -> str:
    response = client.get(page)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.content.decode())
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def parse_sse(text: str) -> list[dict]:
    """Events of a text/event-stream body: [{"id", "event", "data"}] (comments skipped)."""
    events = []
    for block in text.split("\n\n"):
        event: dict = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                event["data"] = json.loads(value)
            elif field in ("id", "event"):
                event[field] = value
        if "event" in event:
            events.append(event)
    return events
