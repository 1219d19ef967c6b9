"""A small stand-in OpenID Connect provider for tests: real HTTP on 127.0.0.1, in a thread.

It serves the authorization-code flow the way a real provider does:

- ``/.well-known/openid-configuration``: discovery document;
- ``/authorize``: approves at once (no login page) and redirects to ``redirect_uri`` with a
  one-time ``code`` and the caller's ``state``; records ``state``, ``nonce`` and any PKCE
  challenge;
- ``/token``: authenticates the client (``client_secret_post`` or ``client_secret_basic``),
  checks the code (single use, same client, same ``redirect_uri``, PKCE verifier if a challenge
  was sent) and returns an access token and an RS256-signed ID token;
- ``/jwks``: the public key the ID token is signed with;
- ``/userinfo``: the user's claims for a ``Bearer`` access token.

The user's claims are set per test (``provider.user = {...}`` or ``provider.set_user(...)``)
and are bound to a code when ``/authorize`` issues it. Every request is recorded in
``provider.calls`` so a test can assert what the relying party fetched over the wire.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

_KEY: rsa.RSAPrivateKey | None = None
_KEY_LOCK = threading.Lock()


def _signing_key() -> rsa.RSAPrivateKey:
    """One RSA key per test session: generating it is the slowest part of starting up."""
    global _KEY
    with _KEY_LOCK:
        if _KEY is None:
            _KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEY


@dataclass
class Call:
    """One HTTP request the provider received."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    status: int = 0


@dataclass
class Grant:
    """What an authorization code stands for."""

    client_id: str
    redirect_uri: str
    scope: str
    claims: dict[str, Any]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None


@dataclass
class OIDCProvider:
    client_id: str = "tandem-test-client"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    user: dict[str, Any] = field(
        default_factory=lambda: {
            "sub": "user-1",
            "email": "dana@example.com",
            "email_verified": True,
            "name": "Dana Scully",
        }
    )
    # Claims merged into every ID token after the standard ones (e.g. a wrong "aud" or "iss").
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    kid: str = "test-key-1"

    calls: list[Call] = field(default_factory=list, init=False)
    nonces: list[str | None] = field(default_factory=list, init=False)
    states: list[str | None] = field(default_factory=list, init=False)
    codes: dict[str, Grant] = field(default_factory=dict, init=False)
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _server: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> OIDCProvider:
        provider = self

        class Handler(_Handler):
            oidc = provider

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one poll
            name="oidc-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> OIDCProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "provider not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def issuer(self) -> str:
        return self.base_url

    # --- test helpers ----------------------------------------------------------------------

    def set_user(self, **claims: Any) -> None:
        """Replace the user the next authorization is for."""
        self.user = dict(claims)

    def calls_to(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def discovery(self) -> dict[str, Any]:
        base = self.base_url
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": ["sub", "email", "email_verified", "name"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(_signing_key().public_key(), as_dict=True)
        public.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [public]}

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": str(grant.claims["sub"]),
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "jti": secrets.token_urlsafe(12),
        }
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        for name in ("email", "email_verified", "name"):
            if name in grant.claims:
                claims[name] = grant.claims[name]
        claims.update(self.id_token_overrides)
        return jwt.encode(claims, _signing_key(), algorithm="RS256", headers={"kid": self.kid})


def _pkce_matches(grant: Grant, verifier: str | None) -> bool:
    if grant.code_challenge is None:
        return True
    if not verifier:
        return False
    if (grant.code_challenge_method or "plain") == "plain":
        return secrets.compare_digest(verifier, grant.code_challenge)
    digest = hashlib.sha256(verifier.encode()).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return secrets.compare_digest(expected, grant.code_challenge)


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), *params.items()])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class _Handler(BaseHTTPRequestHandler):
    oidc: OIDCProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # keep test output clean; provider.calls has the record

    # --- plumbing --------------------------------------------------------------------------

    def _record(self, form: dict[str, str]) -> Call:
        parts = urlsplit(self.path)
        call = Call(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            form=form,
            headers={key.lower(): value for key, value in self.headers.items()},
        )
        with self.oidc._lock:
            self.oidc.calls.append(call)
        self._call = call
        return call

    def _send(self, status: int, body: bytes, content_type: str, headers=None) -> None:
        self._call.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any], headers=None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _error(self, status: int, error: str, description: str = "", headers=None) -> None:
        data = {"error": error}
        if description:
            data["error_description"] = description
        self._json(status, data, headers)

    def do_GET(self) -> None:  # noqa: N802
        call = self._record({})
        route = {
            "/.well-known/openid-configuration": lambda: self._json(200, self.oidc.discovery()),
            "/jwks": lambda: self._json(200, self.oidc.jwks()),
            "/authorize": lambda: self._authorize(call.query),
            "/userinfo": self._userinfo,
        }.get(call.path)
        if route is None:
            self._error(404, "not_found")
        else:
            route()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        call = self._record(dict(parse_qsl(raw, keep_blank_values=True)))
        if call.path == "/token":
            self._token(call.form)
        elif call.path == "/userinfo":
            self._userinfo()
        else:
            self._error(404, "not_found")

    # --- endpoints -------------------------------------------------------------------------

    def _authorize(self, query: dict[str, str]) -> None:
        oidc = self.oidc
        redirect_uri = query.get("redirect_uri", "")
        # Errors about the client or the redirect URI must not redirect (RFC 6749 4.1.2.1).
        if query.get("client_id") != oidc.client_id:
            return self._error(400, "invalid_request", "unknown client_id")
        if not redirect_uri.startswith(("http://", "https://")):
            return self._error(400, "invalid_request", "missing or bad redirect_uri")
        state = query.get("state")
        with oidc._lock:
            oidc.states.append(state)
            oidc.nonces.append(query.get("nonce"))
        back: dict[str, str] = {}
        if query.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        elif "openid" not in query.get("scope", "").split():
            back["error"] = "invalid_scope"
        else:
            code = secrets.token_urlsafe(24)
            with oidc._lock:
                oidc.codes[code] = Grant(
                    client_id=oidc.client_id,
                    redirect_uri=redirect_uri,
                    scope=query.get("scope", ""),
                    claims=dict(oidc.user),
                    nonce=query.get("nonce"),
                    code_challenge=query.get("code_challenge"),
                    code_challenge_method=query.get("code_challenge_method"),
                )
            back["code"] = code
        if state is not None:
            back["state"] = state
        self._send(302, b"", "text/plain", {"Location": _with_query(redirect_uri, back)})

    def _client_credentials(self, form: dict[str, str]) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return None, None
            client_id, _, secret = decoded.partition(":")
            return client_id, secret
        return form.get("client_id"), form.get("client_secret")

    def _token(self, form: dict[str, str]) -> None:
        oidc = self.oidc
        client_id, secret = self._client_credentials(form)
        if client_id != oidc.client_id or not secrets.compare_digest(
            (secret or "").encode(), oidc.client_secret.encode()
        ):
            return self._error(
                401,
                "invalid_client",
                "client authentication failed",
                {"WWW-Authenticate": 'Basic realm="oidc"'},
            )
        if form.get("grant_type") != "authorization_code":
            return self._error(400, "unsupported_grant_type")
        with oidc._lock:
            grant = oidc.codes.pop(form.get("code", ""), None)  # single use
        if grant is None:
            return self._error(400, "invalid_grant", "unknown or used code")
        if grant.client_id != client_id or grant.redirect_uri != form.get("redirect_uri"):
            return self._error(400, "invalid_grant", "code was issued for another client or URI")
        if not _pkce_matches(grant, form.get("code_verifier")):
            return self._error(400, "invalid_grant", "PKCE verification failed")
        access_token = secrets.token_urlsafe(24)
        with oidc._lock:
            oidc.tokens[access_token] = dict(grant.claims)
        self._json(
            200,
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": grant.scope,
                "id_token": oidc.id_token(grant),
            },
        )

    def _userinfo(self) -> None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else ""
        with self.oidc._lock:
            claims = self.oidc.tokens.get(token)
        if claims is None:
            return self._error(
                401, "invalid_token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        self._json(200, claims)
