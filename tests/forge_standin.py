"""A stand-in for GitHub's and GitLab's REST APIs on 127.0.0.1, over real HTTP: the endpoints
Open pull request calls (assistant/forges.py), pointed at with GITHUB_API_BASE (…/github) and
GITLAB_API_BASE (…/gitlab/api/v4).

- GitHub: GET and POST /repos/{owner}/{repo}/pulls (``head=owner:branch``, ``state=open``),
  with ``Authorization: Bearer`` GITHUB_TOKEN; 422 for a second open pull request of a branch.
- GitLab: GET and POST /projects/{id}/merge_requests, the id being the project's path
  URL-encoded whole (acme%2Ftools%2Fwidgets; a plain slash is a 404 as on GitLab), with
  ``PRIVATE-TOKEN`` GITLAB_TOKEN; 409 for a second open merge request of a branch.

Each request is recorded (method, raw path, query, headers, JSON body); ``script`` makes the
next call of a kind ("github GET", "gitlab POST", …) answer something else (a 404, a 429 with
Retry-After, an empty listing). Other projects answer 404, other tokens 401."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

GITHUB_TOKEN = "ghp_standinSECRET0123456789"
GITLAB_TOKEN = "glpat-standinSECRET0123456789"
GITHUB_PROJECT = "acme/widgets"
GITLAB_PROJECT = "acme/tools/widgets"


@dataclass
class Request:
    forge: str  # "github" or "gitlab"
    method: str
    path: str  # raw, as sent (percent-encoding kept)
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None


@dataclass
class Standin:
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    # project -> its pull requests: {"number", "head", "base", "title", "body", "state"}
    pulls: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    scripted: dict[str, list[tuple[int, object, dict]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def github_api(self) -> str:
        return f"{self.base}/github"

    @property
    def gitlab_api(self) -> str:
        return f"{self.base}/gitlab/api/v4"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.pulls.clear()
            self.scripted.clear()

    def script(self, what: str, status: int, body: object = None, **headers: str) -> None:
        """The next call of ``what`` ("github POST", "gitlab GET", …) answers this instead."""
        self.scripted[what].append(
            (status, body, {k.replace("_", "-"): v for k, v in headers.items()})
        )

    def of(self, forge: str, method: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.forge == forge and method in (None, r.method)]

    def open_pull(self, project: str, head: str, base: str = "main") -> dict:
        """One opened elsewhere (by hand, another tool)."""
        with self.lock:
            return self._add(project, {"head": head, "base": base, "title": "By hand", "body": ""})

    def _add(self, project: str, pull: dict) -> dict:
        pulls = self.pulls[project]
        pull = {**pull, "number": len(pulls) + 1, "state": "open"}
        pulls.append(pull)
        return pull

    # --- The two APIs -------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, object, dict]:
        if self.scripted.get(f"{request.forge} {request.method}"):
            return self.scripted[f"{request.forge} {request.method}"].pop(0)
        if request.forge == "github":
            return self._github(request)
        return self._gitlab(request)

    def _github(self, request: Request) -> tuple[int, object, dict]:
        if request.headers.get("authorization") != f"Bearer {GITHUB_TOKEN}":
            return 401, {"message": "Bad credentials"}, {}
        parts = request.path.split("/")  # "", "github", "repos", owner, repo, "pulls"
        if len(parts) != 6 or parts[2] != "repos" or parts[5] != "pulls":
            return 404, {"message": "Not Found"}, {}
        project = f"{parts[3]}/{parts[4]}"
        if project != GITHUB_PROJECT:
            return 404, {"message": "Not Found"}, {}
        owner = parts[3]

        def shown(pull: dict) -> dict:
            url = f"https://github.example/{project}/pull/{pull['number']}"
            return {"number": pull["number"], "html_url": url, "title": pull["title"]}

        open_pulls = [p for p in self.pulls[project] if p["state"] == "open"]
        if request.method == "GET":
            head = request.query.get("head", "")
            found = [p for p in open_pulls if f"{owner}:{p['head']}" == head or not head]
            return 200, [shown(p) for p in found], {}
        body = request.body or {}
        if not body.get("title") or not body.get("head") or not body.get("base"):
            return 422, {"message": "Validation Failed", "errors": [{"code": "missing_field"}]}, {}
        if any(p["head"] == body["head"] for p in open_pulls):
            message = f"A pull request already exists for {owner}:{body['head']}."
            return 422, {"message": "Validation Failed", "errors": [{"message": message}]}, {}
        pull = self._add(project, {k: body.get(k, "") for k in ("head", "base", "title", "body")})
        return 201, shown(pull), {}

    def _gitlab(self, request: Request) -> tuple[int, object, dict]:
        if request.headers.get("private-token") != GITLAB_TOKEN:
            return 401, {"message": "401 Unauthorized"}, {}
        prefix, _, rest = request.path.partition("/projects/")
        encoded, _, tail = rest.partition("/")
        if prefix != "/gitlab/api/v4" or tail != "merge_requests":
            return 404, {"error": "404 Not Found"}, {}
        project = urllib.parse.unquote(encoded)
        if project != GITLAB_PROJECT:
            return 404, {"message": "404 Project Not Found"}, {}

        def shown(pull: dict) -> dict:
            url = f"https://gitlab.example/{project}/-/merge_requests/{pull['number']}"
            return {"iid": pull["number"], "web_url": url, "title": pull["title"]}

        open_pulls = [p for p in self.pulls[project] if p["state"] == "open"]
        if request.method == "GET":
            head = request.query.get("source_branch")
            found = [p for p in open_pulls if head in (None, p["head"])]
            return 200, [shown(p) for p in found], {}
        body = request.body or {}
        if any(p["head"] == body.get("source_branch") for p in open_pulls):
            message = "Another open merge request already exists for this source branch: !1"
            return 409, {"message": [message]}, {}
        pull = self._add(
            project,
            {
                "head": body.get("source_branch", ""),
                "base": body.get("target_branch", ""),
                "title": body.get("title", ""),
                "body": body.get("description", ""),
            },
        )
        return 201, shown(pull), {}


def _handler(standin: Standin):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urllib.parse.urlsplit(self.path)
            forge = url.path.split("/")[1] if url.path.count("/") > 1 else ""
            if forge not in ("github", "gitlab"):
                self.send_error(404)
                return
            request = Request(
                forge=forge,
                method=self.command,
                path=url.path,
                query={k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            with standin.lock:
                standin.requests.append(request)
                status, body, headers = standin.answer(request)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET

    return Handler


def start() -> tuple[Standin, ThreadingHTTPServer]:
    standin = Standin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin))
    standin.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="forge-standin", daemon=True).start()
    return standin, server


@pytest.fixture(scope="session")
def forge_standin_server():
    standin, server = start()
    yield standin
    server.shutdown()
    server.server_close()


@pytest.fixture
def forge_api(forge_standin_server, settings):
    """The stand-in, fresh, with github.com's and gitlab.com's API bases pointing at it."""
    forge_standin_server.reset()
    settings.GITHUB_API_BASE = forge_standin_server.github_api
    settings.GITLAB_API_BASE = forge_standin_server.gitlab_api
    return forge_standin_server
