"""Open pull request: GitHub's pull requests and GitLab's merge requests, through their REST
APIs with the repository's own HTTPS token (the credential it already stores for git).

Where a repository's pull requests go (``target_of``), from its address unless its settings
say otherwise (Repository.forge, forge_api_base, forge_project):
- github.com: GitHub at GITHUB_API_BASE; gitlab.com: GitLab at GITLAB_API_BASE;
- a host named github.* or gitlab.*: GitHub Enterprise (https://host/api/v3) or a self-hosted
  GitLab (https://host/api/v4); any other host when a team admin names the kind;
- the project is the address's path (owner/name, group/subgroup/name) unless named.

The token goes where git already sends it, and nowhere else a team admin could choose: an API
base set on a repository must be on the repository's own host (an admin can't read the token,
and must not be able to have it sent to a server of theirs), and redirects are not followed
(they would carry it elsewhere). Failures are sentences that never hold the token; the token is
never logged.

Called by the worker (jobs.py), never by a request: the web only reads what it stored.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from django.conf import settings

from .models import Forge, RepoAuth, Repository
from .repo_address import RepoError

GITHUB, GITLAB = Forge.GITHUB.value, Forge.GITLAB.value
NAMES = {GITHUB: "GitHub", GITLAB: "GitLab"}
NOUNS = {GITHUB: "pull request", GITLAB: "merge request"}
MAX_ANSWER_BYTES = 1 << 20
_SCP_LIKE = re.compile(r"(?:[\w.~-]+@)?(?P<host>[A-Za-z0-9][\w.-]*):(?P<path>[^\s]+)")
_PROJECT = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.][A-Za-z0-9_.-]*)+")


class ForgeError(RepoError):
    """A pull request that could not be opened, in words (never with the token)."""


@dataclass(frozen=True)
class Target:
    kind: str  # GITHUB or GITLAB
    api_base: str  # without a final slash
    project: str  # owner/name (GitHub), group/…/name (GitLab)

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    @property
    def noun(self) -> str:
        return NOUNS[self.kind]


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    existing: bool  # it was open already (a second click, or opened elsewhere): linked


# --- Where -------------------------------------------------------------------------------------


def address_parts(url: str) -> tuple[str, str]:
    """(host, project path) of a repository address; ("", "") for a local one. The host has
    its port for https (the API is served there too), not for ssh (that port is ssh's)."""
    url = url.strip()
    if url.startswith("/") or url.startswith("file:"):
        return "", ""
    parts = urlsplit(url)
    if parts.scheme in ("https", "http", "ssh"):
        host = (parts.hostname or "").lower()
        if parts.scheme != "ssh" and parts.port:
            host = f"{host}:{parts.port}"
        path = parts.path
    elif found := _SCP_LIKE.fullmatch(url):
        host, path = found["host"].lower(), found["path"]
    else:
        return "", ""
    path = path.strip("/").removesuffix(".git").strip("/")
    return host, path


def _inferred_kind(host: str) -> str:
    name = host.split(":", 1)[0]
    for kind in (GITHUB, GITLAB):
        if name == f"{kind}.com" or name.startswith(f"{kind}."):
            return kind
    return ""


def _default_api_base(kind: str, host: str) -> str:
    if not host or host == f"{kind}.com":
        return settings.GITHUB_API_BASE if kind == GITHUB else settings.GITLAB_API_BASE
    return f"https://{host}/api/v3" if kind == GITHUB else f"https://{host}/api/v4"


def target_of(repo: Repository) -> Target | None:
    """Where the repository's pull requests go; None when it has none (no button)."""
    if repo.forge == Forge.NONE:
        return None
    host, path = address_parts(repo.url)
    kind = repo.forge or _inferred_kind(host)
    project = repo.forge_project.strip().strip("/") or path
    if kind not in NAMES or not _PROJECT.fullmatch(project):
        return None
    if kind == GITHUB and project.count("/") != 1:
        return None
    api_base = repo.forge_api_base.strip() or _default_api_base(kind, host)
    return Target(kind, api_base.rstrip("/"), project)


def check_settings(*, url: str, kind: str, api_base: str, project: str) -> None:
    """What a team admin enters for a repository's pull requests: ForgeError in words."""
    if kind not in ("", *NAMES, Forge.NONE):
        raise ForgeError("Choose GitHub, GitLab, none, or from the address.")
    project = project.strip().strip("/")
    if project and not _PROJECT.fullmatch(project):
        raise ForgeError("The project is a path such as owner/name or group/subgroup/name.")
    if project and kind == GITHUB and project.count("/") != 1:
        raise ForgeError("A GitHub project is owner/name.")
    host, path = address_parts(url)
    if kind in NAMES and not (project or _PROJECT.fullmatch(path)):
        raise ForgeError(
            "Name the project (owner/name, group/subgroup/name): the address doesn't say it."
        )
    api_base = api_base.strip()
    if not api_base:
        return
    parts = urlsplit(api_base)
    if parts.scheme != "https" or not parts.hostname:  # the token never goes in the clear
        raise ForgeError(
            "The API base is an https:// address, such as https://git.example.com/api/v4."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ForgeError("The API base is a plain address: no user, token, query or fragment.")
    host = host.split(":", 1)[0]
    if not host:
        raise ForgeError(
            "A repository connected by path has no host of its own: its pull requests can go "
            "to github.com or gitlab.com only (leave the API base empty)."
        )
    if parts.hostname.lower() != host:
        # The repository's token goes there: only to the host git already sends it to.
        raise ForgeError(f"The API base must be on the repository's own host, {host}.")


def has_token(repo: Repository) -> bool:
    """Whether the repository stores an HTTPS token, without decrypting it (the web asks)."""
    return repo.auth == RepoAuth.HTTPS_TOKEN and bool(repo.credential_encrypted)


def token_of(repo: Repository) -> str:
    """The token part of the repository's HTTPS credential ("token" or "user:token"); ""
    without one (an SSH key or none)."""
    if repo.auth != RepoAuth.HTTPS_TOKEN:
        return ""
    user, colon, token = repo.credential.strip().partition(":")
    return (token if colon else user).strip()


# --- Opening one -------------------------------------------------------------------------------


def open_pull_request(
    repo: Repository, *, head: str, base: str, title: str, body: str
) -> PullRequest:
    """The open pull request from ``head`` into ``base``: one already open for ``head`` is
    found and linked, else one is opened. ForgeError in words."""
    target = target_of(repo)
    if target is None:
        raise ForgeError("This repository is not on GitHub or GitLab.")
    # Again before the token goes anywhere: the settings may have been written elsewhere than
    # the page (the Django admin, the shell).
    check_settings(
        url=repo.url, kind=repo.forge, api_base=repo.forge_api_base, project=repo.forge_project
    )
    token = token_of(repo)
    if not token:
        raise ForgeError(
            f"Opening a {target.noun} needs the repository's HTTPS token; it has none."
        )
    return _Api(target, token).open(head=head, base=base, title=title, body=body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (its status), never followed: it would take the token along."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class _Answer:
    status: int
    data: Any
    headers: Mapping[str, str]


class _Api:
    def __init__(self, target: Target, token: str) -> None:
        self.target = target
        self.token = token

    def call(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None
    ) -> _Answer:
        target = self.target
        url = target.api_base + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "User-Agent": "Tandem"}
        if target.kind == GITHUB:
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
            headers["Authorization"] = f"Bearer {self.token}"
        else:
            headers["PRIVATE-TOKEN"] = self.token
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if urlsplit(url).scheme not in ("https", "http"):
            raise ForgeError(f"The API base of {target.name} is not an http(s) address.")
        # Checked just above: http(s) only, never file: or another opener's scheme.
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=settings.FORGE_TIMEOUT) as response:
                status, raw, answer_headers = (
                    response.status,
                    response.read(MAX_ANSWER_BYTES),
                    response.headers,
                )
        except urllib.error.HTTPError as exc:
            status, answer_headers = exc.code, exc.headers
            try:
                raw = exc.read(MAX_ANSWER_BYTES)
            except OSError:
                raw = b""
        except (urllib.error.URLError, OSError) as exc:
            raise ForgeError(self._unreachable(exc)) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return _Answer(status, parsed, answer_headers or {})

    def _unreachable(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", exc)
        host = urlsplit(self.target.api_base).netloc
        if isinstance(reason, socket.gaierror):
            why = "its name does not resolve"
        elif isinstance(reason, ConnectionRefusedError):
            why = "the connection was refused"
        elif isinstance(reason, TimeoutError | socket.timeout):
            why = f"no answer within {settings.FORGE_TIMEOUT} seconds"
        else:
            why = self._clean(str(reason)) or "a network error"
        return f"Could not reach {self.target.name} at {host}: {why}. Try again later."

    def _clean(self, text: str) -> str:
        """What the server said, fit to show: one line, bounded, without the token."""
        text = " ".join(text.replace(self.token, "…").split())
        return text[:300]

    def said(self, data: Any) -> str:
        """The server's own words in an error answer (GitHub: message and errors; GitLab:
        message or error, a string, list or dict)."""
        if not isinstance(data, dict):
            return ""
        found: list[str] = []

        def collect(value: Any) -> None:
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, list):
                for item in value:
                    collect(item.get("message", "") if isinstance(item, dict) else item)
            elif isinstance(value, dict):
                for key, item in value.items():
                    found.append(
                        f"{key}: {', '.join(map(str, item)) if isinstance(item, list) else item}"
                    )

        collect(data.get("message") or data.get("error") or "")
        collect(data.get("errors") or [])
        return self._clean("; ".join(f for f in found if f))

    def failure(self, answer: _Answer) -> ForgeError:
        target, status = self.target, answer.status
        said = self.said(answer.data)
        wait = _rate_limit_wait(answer)
        if wait is not None:
            return ForgeError(
                f"{target.name}'s rate limit for this token is used up: try again in "
                f"{_in_words(wait)}."
            )
        if status == 401:
            return ForgeError(
                f"{target.name} refused the repository's token (401): it is wrong, expired or "
                "revoked. The repository needs a new one."
            )
        if status == 403:
            return ForgeError(
                f"The repository's token may not open {target.noun}s on {target.project} (403)"
                + (f": {said}" if said else ".")
            )
        if status == 404:
            return ForgeError(
                f"{target.name} has no project {target.project} that this token can see (404). "
                "Check the project in the repository's settings and the token's access."
            )
        if 300 <= status < 400:
            return ForgeError(
                f"{target.name} answered with a redirect ({status}): the project may have moved "
                "or been renamed. Check the project in the repository's settings."
            )
        if status >= 500:
            return ForgeError(f"{target.name} had an error ({status}). Try again later.")
        return ForgeError(
            f"{target.name} refused the {target.noun} ({status})" + (f": {said}" if said else ".")
        )

    def found(self, answer: _Answer, number_key: str, url_key: str) -> PullRequest | None:
        """The first pull request of a listing (or a creation's answer), checked: its URL is
        shown as a link, so only http(s)."""
        item = answer.data[0] if isinstance(answer.data, list) and answer.data else answer.data
        if not isinstance(item, dict):
            return None
        number, url = item.get(number_key), item.get(url_key)
        if not isinstance(number, int) or not isinstance(url, str):
            return None
        if urlsplit(url).scheme not in ("https", "http") or len(url) > 1000:
            return None
        return PullRequest(number=number, url=url, existing=True)

    def listed(self, path: str, query: dict[str, str], keys: tuple[str, str]) -> PullRequest | None:
        answer = self.call("GET", path, query=query)
        if answer.status != 200:
            raise self.failure(answer)
        if not isinstance(answer.data, list):
            raise ForgeError(f"{self.target.name}'s answer was not understood.")
        return self.found(answer, *keys)

    def open(self, *, head: str, base: str, title: str, body: str) -> PullRequest:
        target = self.target
        if target.kind == GITHUB:
            owner, name = target.project.split("/")
            path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}/pulls"
            query = {"head": f"{owner}:{head}", "state": "open"}
            new = {"title": title, "head": head, "base": base, "body": body}
            keys, exists = ("number", "html_url"), 422
        else:
            # The project's path is its id, URL-encoded whole: group%2Fsubgroup%2Fname.
            path = f"/projects/{quote(target.project, safe='')}/merge_requests"
            query = {"source_branch": head, "state": "opened"}
            new = {"source_branch": head, "target_branch": base, "title": title}
            new["description"] = body
            keys, exists = ("iid", "web_url"), 409
        if (already := self.listed(path, query, keys)) is not None:
            return already
        answer = self.call("POST", path, body=new)
        if answer.status == 201:
            made = self.found(answer, *keys)
            if made is None:
                raise ForgeError(f"{target.name}'s answer was not understood.")
            return PullRequest(made.number, made.url, existing=False)
        if answer.status == exists and "already exists" in self.said(answer.data).lower():
            # Opened meanwhile (a second click, another tool): link that one.
            if (already := self.listed(path, query, keys)) is not None:
                return already
            raise ForgeError(
                f"{target.name} says a {target.noun} for the branch “{head}” is open already, "
                "but this token can't list it."
            )
        raise self.failure(answer)


def _rate_limit_wait(answer: _Answer) -> float | None:
    """Seconds until the token may call again, when the answer is a rate limit (429; GitHub
    also says 403 with no requests remaining); else None."""
    headers = answer.headers
    remaining = headers.get("X-RateLimit-Remaining") or headers.get("RateLimit-Remaining")
    limited = answer.status == 429 or (answer.status == 403 and remaining == "0")
    if answer.status == 403 and headers.get("Retry-After"):
        limited = True  # GitHub's secondary rate limit
    if not limited:
        return None
    for name in ("Retry-After",):
        value = headers.get(name)
        if value and value.strip().isdigit():
            return float(value)
    for name in ("X-RateLimit-Reset", "RateLimit-Reset"):
        value = headers.get(name)
        if value and value.strip().isdigit():
            return max(float(value) - time.time(), 0.0)
    return 60.0


def _in_words(seconds: float) -> str:
    if seconds < 90:
        return "a minute"
    minutes = round(seconds / 60)
    return f"{minutes} minutes" if minutes < 120 else f"{round(minutes / 60)} hours"
