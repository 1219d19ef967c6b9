"""The HTTP side: JSON requests to /api/v1/ and the conversation's event stream, resumed with
Last-Event-ID when the connection drops."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from . import __version__
from .errors import EXIT_UNREACHABLE, ApiFailure, CliError

# The server sends a heartbeat every 15 s: a stream silent for much longer is dead.
STREAM_READ_TIMEOUT = 45.0


def unreachable(url: str, exc: Exception) -> CliError:
    reason = str(exc) or type(exc).__name__
    return CliError(f"Cannot reach the Tandem server at {url}: {reason}.", EXIT_UNREACHABLE)


class Api:
    def __init__(self, url: str, key: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url + "/api/v1/",
            headers={"Authorization": f"Bearer {key}", "User-Agent": f"tandem-cli/{__version__}"},
            timeout=httpx.Timeout(timeout),
        )

    def close(self) -> None:
        self.http.close()

    def request(
        self, method: str, path: str, *, params: dict | None = None, body: Any = None
    ) -> httpx.Response:
        params = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            response = self.http.request(
                method, path, params=params, json=body if body is not None else None
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc)
        if response.status_code >= 400:
            raise failure(response)
        return response

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, **params) -> Any:
        response = self.request("POST", path, params=params, body=body if body else {})
        return response.json() if response.content else None

    def events(self, conversation_id: str, last_id: str | None = None) -> EventStream:
        return EventStream(self, conversation_id, last_id)


def failure(response: httpx.Response) -> ApiFailure:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"The server answered HTTP {response.status_code}."
    return ApiFailure(response.status_code, code, message)


def debug(message: str) -> None:
    if os.environ.get("TANDEM_DEBUG"):
        sys.stderr.write(f"[tandem] {message}\n")
        sys.stderr.flush()


@dataclass
class Event:
    event: str
    data: Any
    id: str | None = None


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a text/event-stream, dispatched at each blank line (comments skipped)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data or "event" in fields:
                raw = "\n".join(data)
                try:
                    payload = json.loads(raw) if raw else None
                except ValueError:
                    payload = raw
                yield Event(fields.get("event", "message"), payload, fields.get("id"))
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in ("event", "id"):
            fields[name] = value


class EventStream:
    """A conversation's events, as long as the caller iterates. A connection that drops (or
    goes silent) is opened again with the last event id seen, so nothing is missed and nothing
    comes twice; ``reconnects`` counts how often that happened."""

    def __init__(
        self, api: Api, conversation_id: str, last_id: str | None = None, *, retries: int = 8
    ) -> None:
        self.api = api
        self.conversation_id = conversation_id
        self.last_id = last_id
        self.retries = retries
        self.reconnects = 0
        self._iter: Iterator[Event] | None = None

    def __iter__(self) -> Iterator[Event]:
        if self._iter is None:
            self._iter = self._events()
        return self._iter

    def __next__(self) -> Event:
        return next(iter(self))

    def close(self) -> None:
        if self._iter is not None:
            self._iter.close()  # type: ignore[attr-defined]

    def _events(self) -> Iterator[Event]:
        failures = 0
        path = f"conversations/{self.conversation_id}/events"
        timeout = httpx.Timeout(30.0, read=STREAM_READ_TIMEOUT)
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            debug(f"event stream: connecting, Last-Event-ID {self.last_id or '-'}")
            try:
                with self.api.http.stream(
                    "GET", path, headers=headers, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise failure(response)
                    for event in parse_sse(response.iter_lines()):
                        failures = 0
                        if event.id:
                            self.last_id = event.id
                        yield event
                        if event.event == "conversation.deleted":
                            return
                # The server ended the stream (access lost, or a restart): open it again.
                raise httpx.RemoteProtocolError("the server ended the event stream")
            except httpx.TransportError as exc:
                debug(f"event stream: dropped after {self.last_id or '-'} ({exc!r})")
                failures += 1
                if failures > self.retries:
                    raise unreachable(self.api.url, exc)
                self.reconnects += 1
                time.sleep(min(0.25 * 2 ** (failures - 1), 5.0))
