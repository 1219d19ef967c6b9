"""Issue 15: the web processes need no repositories volume. A Daphne whose REPOS_ROOT does not
exist serves a whole walk — attach, a reply that edits, its diff, a file opened from it, the
patch, a push to a bare remote, a fetch and the branch list — while the stack's Celery worker,
which has the repositories, does every piece of git work. Were any of it done by the web
process, it would fail there (or create the folder, which the test checks is never made)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from assistant import sandbox
from assistant.models import FINISHED_STATUSES, Repository, Run, RunStatus, Workspace
from tests.conftest import start_web, stop_web
from tests.helpers import GIT_ENV, session_cookie, wait_until

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]


def git(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


@pytest.fixture
def remote() -> Path:
    """A bare repository with one commit on main: what the team pushes to and fetches from.
    Outside pytest's 0700 tmp_path: the worker's sandbox runs as nobody."""
    parent = Path(tempfile.mkdtemp(prefix="tandem-web-without-repos-"))
    parent.chmod(0o711)
    work = parent / "work"
    work.mkdir()
    (work / "app.py").write_text("def answer():\n    return 41\n")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "init", cwd=work)
    git("clone", "-q", "--bare", work, parent / "remote.git")
    yield parent / "remote.git"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def web(stack, tmp_path):
    """Daphne with a REPOS_ROOT that is not there, against the stack's database, Redis and
    (through them) its worker."""
    absent = tmp_path / "no-repositories-here"
    base_url, proc, _ = start_web(
        tmp_path, extra_env={"REPOS_ROOT": str(absent), "REDIS_URL": stack.env["REDIS_URL"]}
    )
    yield base_url, absent
    stop_web(proc)


class Browser:
    """A signed-in client of the web process that posts forms as a page would (CSRF token)."""

    def __init__(self, base_url: str, user) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=True)
        self.http.cookies.set(settings.SESSION_COOKIE_NAME, session_cookie(user))
        self.token = ""

    def get(self, path: str, **kwargs) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        if found := re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.text):
            self.token = found[1]
        return response

    def post(self, path: str, data: dict) -> httpx.Response:
        return self.http.post(path, data={**data, "csrfmiddlewaretoken": self.token})


def test_the_web_process_works_without_the_repositories(
    web, stack, team, alice, conversation, remote
):
    base_url, absent = web
    repo = Repository.objects.create(team=team, name="answer", url=str(remote))
    page = f"/t/acme/c/{conversation.uuid}/"
    browser = Browser(base_url, alice)
    browser.get(page)

    # Attach: a worker prepares the workspace; the header polls until it is there.
    assert browser.post(page + "repository/", {"repository": str(repo.uuid)}).status_code == 200
    header = browser.get(page + "repository/status/").text
    assert "Preparing the workspace" in header or "Repository: answer @ main" in header
    wait_until(
        lambda: "Repository: answer @ main" in browser.get(page + "repository/status/").text,
        what="the workspace is ready",
        timeout=120,
    )
    # Measured by the worker right after the clone (the row is there a moment before).
    workspace = wait_until(
        lambda: Workspace.objects.filter(conversation=conversation, measured__isnull=False).first(),
        what="the workspace is measured",
    )
    assert workspace.used_bytes and workspace.used_files

    # A reply that edits a file, run by the worker; its diff is on the page.
    edit = {"path": "app.py", "old_text": "return 41", "new_text": "return 42"}
    sent = browser.post(
        page + "messages/", {"content": f"Make it 42 [[tool edit_file {json.dumps(edit)}]]"}
    )
    assert sent.status_code == 201, sent.text
    run = wait_until(
        lambda: (
            Run.objects.filter(conversation=conversation, status__in=FINISHED_STATUSES)
            .exclude(tree_after="")
            .first()
        ),
        what="the reply finished",
        timeout=120,
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    added = '<tr class="da"><td><td data-ln="2"><td>    return 42'  # new line 2, no old one
    wait_until(lambda: added in browser.get(page).text, what="the diff is shown")

    # A file opened from a reply: read by the worker, from the turn's snapshot.
    shown = wait_until(
        lambda: (
            'id="L2" class="hl"' in (r := browser.get(page + "file/?path=app.py&line=2")).text and r
        ),
        what="the file is shown",
    )
    # The number as its own token: the page's conversation id may hold the digits "41".
    assert ">42<" in shown.text and ">41<" not in shown.text

    # The patch: written by the worker, 202 until then.
    patch = wait_until(
        lambda: (r := browser.get(page + "patch/")).status_code == 200 and r,
        what="the patch is ready",
    )
    assert "attachment" in patch.headers["Content-Disposition"]
    assert b"-    return 41\n+    return 42" in patch.content

    # Push to a new branch of the remote, by the worker; the header shows the outcome.
    pushed = browser.post(page + "push/", {"branch": "from-tandem"})
    assert pushed.status_code == 200
    header = wait_until(
        lambda: "Pushed " in (text := browser.get(page + "repository/status/").text) and text,
        what="the push is done",
    )
    assert "to the branch “from-tandem”" in header
    assert "return 42" in git("--git-dir", remote, "show", "from-tandem:app.py")

    # Fetch now: the worker fetches and stores the branch list, which the web then shows.
    assert browser.post("/t/acme/repos/fetch/", {"repository": str(repo.uuid)}).status_code == 200
    wait_until(
        lambda: Repository.objects.get(pk=repo.pk).branches == ["main", "from-tandem"],
        what="the branches are stored",
    )
    listing = wait_until(
        lambda: "fetching now" not in (text := browser.get("/t/acme/repos/").text) and text,
        what="the page says the fetch is done",
    )
    assert "Branches: main, from-tandem" in listing
    assert "1 — " in listing and "Refactor the parser" in listing  # the workspace and its size

    # And the web process never made (let alone read) a repositories folder of its own.
    assert not absent.exists()
