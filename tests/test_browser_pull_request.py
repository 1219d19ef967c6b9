"""Push and Open pull request in the browser, against the production topology (Daphne, a
Celery worker, the scripted fake provider) with GitHub's stand-in over real HTTP: edit the
proposed commit message, push, open the pull request, follow its link."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant import sandbox
from assistant.models import Forge, RepoAuth, RepoJob, Repository
from tests.forge_standin import GITHUB_PROJECT, GITHUB_TOKEN
from tests.helpers import GIT_ENV
from tests.test_browser import open_page, run_bubble, send, sign_in_to_conversation
from tests.test_browser_agent import tool

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"),
]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, check=True, capture_output=True
    )
    return done.stdout.decode()


@pytest.fixture
def origin() -> Path:
    # Outside pytest's 0700 tmp_path: the Celery worker's sandbox runs commands as nobody.
    parent = Path(tempfile.mkdtemp(prefix="tandem-browser-pr-"))
    parent.chmod(0o711)
    path = parent / "widgets"
    path.mkdir()
    (path / "app.py").write_text("def answer():\n    return 41\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        git(path, *args)
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def test_edit_the_message_push_and_open_a_pull_request(
    stack, new_context, conversation, team, alice, origin, forge_standin_server
):
    forge_standin_server.reset()
    repo = Repository(
        team=team,
        name="widgets",
        url=str(origin),
        auth=RepoAuth.HTTPS_TOKEN,
        forge=Forge.GITHUB,
        forge_project=GITHUB_PROJECT,  # a repository connected by path names its project
    )
    repo.credential = GITHUB_TOKEN
    repo.save()
    page = open_page(new_context, "alice", stack)
    sign_in_to_conversation(page, alice.email, conversation)
    page.get_by_test_id("attach-repository").get_by_role("button", name="Attach").click()
    expect(page.get_by_test_id("repository")).to_contain_text("widgets @ main", timeout=30_000)
    edit = tool("edit_file", path="app.py", old_text="return 41", new_text="return 42")
    run_id = send(page, "Make the answer 42 " + edit)
    expect(run_bubble(page, run_id).get_by_test_id("changes")).to_contain_text("Changed 1 file")

    # The proposed message names the file the turn changed (fetched afresh on opening: the
    # page was loaded before the turn); the person rewrites it before pushing.
    page.get_by_test_id("push-details").locator("summary").click()
    message = page.get_by_test_id("commit-message")
    expect(message).to_have_value(
        re.compile(r"^Refactor the parser\n\nChanged files:\n- app\.py\n")
    )
    message.fill("Answer 42 at last\n\nThe question was about life.")
    push = page.get_by_test_id("push")
    push.locator("input[name=branch]").fill("tandem/answer-42")
    push.get_by_role("button", name="Push to new branch").click()
    status = page.get_by_test_id("push-status")
    expect(status).to_have_attribute("data-status", "done", timeout=30_000)
    expect(status).to_contain_text("tandem/answer-42")
    commit = git(origin, "cat-file", "commit", "tandem/answer-42")
    assert commit.split("\n\n", 1)[1] == "Answer 42 at last\n\nThe question was about life.\n"

    # Open pull request proposes the commit's message; the worker opens it on GitHub.
    page.get_by_test_id("pull-request-details").locator("summary").click()
    form = page.get_by_test_id("pull-request")
    expect(form.locator("input[name=title]")).to_have_value("Answer 42 at last")
    expect(form.locator("input[name=base]")).to_have_value("main")
    form.get_by_role("button", name="Open pull request").click()
    link = page.get_by_test_id("pull-request-link")
    expect(link).to_have_text("Pull request #1", timeout=30_000)
    expect(link).to_have_attribute("href", f"https://github.example/{GITHUB_PROJECT}/pull/1")
    assert GITHUB_TOKEN not in page.content()
    made = forge_standin_server.of("github", "POST")
    assert len(made) == 1 and made[0].body["head"] == "tandem/answer-42"
    assert made[0].body["body"] == "The question was about life."
    assert made[0].headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    job = RepoJob.objects.get(conversation=conversation, kind="pr")
    assert (job.number, job.requested_by) == (1, alice)
