"""A stand-in for Slack on 127.0.0.1, over real HTTP: the Web API methods Tandem calls
(slack_sdk's WebClient is pointed at it with SLACK_API_BASE), incoming webhooks and slash
commands' response URLs. It records every call and can be scripted to fail (429 with
Retry-After, 5xx, an error such as token_revoked), one response per call, per method.

Also here: signing requests the way Slack does, and the fixtures the Slack tests share."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-standin-0001-secret"
WORKSPACE = "T0ACME"
BOT_USER = "U0BOT"
OAUTH_CODE = "good-code"


@dataclass
class Call:
    method: str  # "chat.postMessage", …, or "webhook" / "response_url"
    token: str
    args: dict
    path: str


@dataclass
class Standin:
    port: int = 0
    calls: list[Call] = field(default_factory=list)
    scripted: dict[str, list[tuple[int, dict, object]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    emails: dict[str, str] = field(default_factory=dict)  # Slack user id -> profile email
    revoked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.base}/api/"

    def webhook_url(self, name: str = "T0ACME/B0HOOK/abcdefSECRET") -> str:
        return f"{self.base}/hooks/{name}"

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.scripted.clear()
            self.emails.clear()
            self.revoked.clear()

    def script(self, method: str, status: int = 200, body: object = None, **headers) -> None:
        """The next call of ``method`` gets this answer (then the normal one again)."""
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        self.scripted[method].append((status, headers, body))

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- The Web API, as far as Tandem uses it -----------------------------------------------

    def answer(self, method: str, token: str, args: dict) -> tuple[int, dict, object]:
        if self.scripted.get(method):
            return self.scripted[method].pop(0)
        if method in ("webhook", "response_url"):
            return 200, {}, "ok"
        if method == "oauth.v2.access":
            if args.get("code") != OAUTH_CODE:
                return 200, {}, {"ok": False, "error": "invalid_code"}
            return (
                200,
                {},
                {
                    "ok": True,
                    "access_token": BOT_TOKEN,
                    "token_type": "bot",
                    "bot_user_id": BOT_USER,
                    "team": {"id": WORKSPACE, "name": "Acme Slack"},
                    "incoming_webhook": {
                        "channel": "#general",
                        "channel_id": "C0GENERAL",
                        "url": self.webhook_url(),
                    },
                },
            )
        if not token:
            return 200, {}, {"ok": False, "error": "not_authed"}
        if token in self.revoked:
            return 200, {}, {"ok": False, "error": "token_revoked"}
        n = next(self.counter)
        ts = f"1700000000.{n:06d}"
        if method == "auth.test":
            return 200, {}, {"ok": True, "team_id": WORKSPACE, "user_id": BOT_USER}
        if method == "auth.revoke":
            return 200, {}, {"ok": True, "revoked": True}
        if method == "conversations.list":
            return (
                200,
                {},
                {
                    "ok": True,
                    "channels": [
                        {"id": "C0GENERAL", "name": "general"},
                        {"id": "C0DEV", "name": "dev"},
                    ],
                },
            )
        if method == "chat.postMessage":
            return 200, {}, {"ok": True, "channel": args.get("channel"), "ts": ts}
        if method == "chat.postEphemeral":
            return 200, {}, {"ok": True, "message_ts": ts}
        if method == "chat.update":
            return 200, {}, {"ok": True, "channel": args.get("channel"), "ts": args.get("ts")}
        if method == "users.info":
            user = args.get("user", "")
            if user not in self.emails:
                return 200, {}, {"ok": False, "error": "user_not_found"}
            return (
                200,
                {},
                {"ok": True, "user": {"id": user, "profile": {"email": self.emails[user]}}},
            )
        return 200, {}, {"ok": False, "error": "unknown_method"}


def _parse_body(headers, raw: bytes) -> dict:
    kind = headers.get("Content-Type", "")
    if kind.startswith("application/json"):
        return json.loads(raw or b"{}")
    if kind.startswith("multipart/form-data"):
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + kind.encode() + b"\r\n\r\n" + raw
        )
        return {
            part.get_param("name", header="content-disposition"): part.get_content()
            for part in message.iter_parts()
        }
    return {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}


def _handler(standin: Standin):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urllib.parse.urlsplit(self.path)
            args = _parse_body(self.headers, raw)
            args.update({k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()})
            auth = self.headers.get("Authorization", "")
            token = auth[7:] if auth.startswith("Bearer ") else ""
            if url.path.startswith("/api/"):
                method = url.path[len("/api/") :]
            elif url.path.startswith("/hooks/"):
                method = "webhook"
            elif url.path.startswith("/commands/"):
                method = "response_url"
            else:
                self.send_error(404)
                return
            with standin.lock:
                standin.calls.append(Call(method, token, args, url.path))
                status, headers, body = standin.answer(method, token, args)
            data = (
                body
                if isinstance(body, str)
                else json.dumps(body if body is not None else {"ok": True})
            )
            self.send_response(status)
            self.send_header(
                "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
            )
            for name, value in headers.items():
                self.send_header(name, str(value))
            encoded = data.encode()
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        do_GET = do_POST

    return Handler


def start() -> tuple[Standin, ThreadingHTTPServer]:
    standin = Standin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin))
    standin.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="slack-standin", daemon=True).start()
    return standin, server


def bot_connection(team, connected_by, **fields):
    """A team's connection to the stand-in workspace with its bot token (an OAuth install)."""
    from slack.models import SlackConnection

    conn = SlackConnection(
        team=team,
        slack_team_id=WORKSPACE,
        workspace_name="Acme Slack",
        bot_user_id=BOT_USER,
        channel_id="C0GENERAL",
        channel_name="general",
        connected_by=connected_by,
        **fields,
    )
    conn.bot_token = BOT_TOKEN
    conn.save()
    return conn


# --- Signing, as Slack does ----------------------------------------------------------------------


def sign(body: bytes, *, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "HTTP_X_SLACK_REQUEST_TIMESTAMP": ts,
        "HTTP_X_SLACK_SIGNATURE": "v0=" + digest.hexdigest(),
    }


def post_form(client, path: str, data: dict, **sign_kwargs):
    body = urllib.parse.urlencode(data).encode()
    return client.generic(
        "POST",
        path,
        body,
        content_type="application/x-www-form-urlencoded",
        **sign(body, **sign_kwargs),
    )


def post_json(client, path: str, data: dict, **sign_kwargs):
    body = json.dumps(data).encode()
    return client.generic(
        "POST", path, body, content_type="application/json", **sign(body, **sign_kwargs)
    )


# --- Fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slack_standin_server():
    standin, server = start()
    yield standin
    server.shutdown()
    server.server_close()


@pytest.fixture
def slack_api(slack_standin_server, settings):
    """The stand-in, fresh, with Tandem's Slack settings pointing at it."""
    slack_standin_server.reset()
    settings.SLACK_API_BASE = slack_standin_server.api
    settings.SLACK_SIGNING_SECRET = SIGNING_SECRET
    settings.SLACK_CLIENT_ID = "1234.5678"
    settings.SLACK_CLIENT_SECRET = "client-secret-standin"
    settings.SLACK_WEBHOOK_PREFIXES = [
        "https://hooks.slack.com/",
        slack_standin_server.base + "/hooks/",
        slack_standin_server.base + "/commands/",
    ]
    settings.SLACK_RETRY_BASE_SECONDS = 1
    settings.SLACK_MAX_RETRIES = 3
    return slack_standin_server


@pytest.fixture
def eager():
    """Celery tasks run where they are queued (after commit), as a worker would run them."""
    from config.celery import app

    before = (app.conf.task_always_eager, app.conf.task_eager_propagates)
    # Not propagating: a retry in eager mode is raised otherwise instead of run again (at
    # once: the countdown is recorded on the delivery, where the tests read it).
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = before
