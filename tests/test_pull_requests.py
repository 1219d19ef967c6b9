"""Push with an edited commit message, and Open pull request on GitHub and GitLab (issue 16).

The commits are real (the sandboxed git of a conversation's workspace, pushed to a local
origin); GitHub and GitLab are the stand-in over real HTTP (tests/forge_standin.py), reached
by the worker's job (run at once here). Alice pushes and opens; Bob is a teammate; Charlie is
an outsider, who gets 404 everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from accounts import audit
from accounts.models import AuditEvent
from assistant import forges, pushes, repos, sandbox
from assistant.models import Forge, RepoAuth, RepoJob, RepoJobKind, Repository, Workspace
from tests.api_client import call, make_key
from tests.forge_standin import GITHUB_PROJECT, GITHUB_TOKEN, GITLAB_PROJECT, GITLAB_TOKEN
from tests.test_agent import APP, edit_run, execute, git, model, origin, parent, send, tool  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)
needs_sandbox = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(conversation) -> str:
    return f"/t/acme/c/{conversation.uuid}/"


def connected(team, *, url: str, token: str = "", **fields) -> Repository:
    repo = Repository(team=team, name="widgets", url=url, **fields)
    if token:
        repo.auth = RepoAuth.HTTPS_TOKEN
        repo.credential = f"x-access-token:{token}"
    repo.save()
    return repo


def pushed_workspace(conversation, repo, alice, branch: str = "tandem/answer") -> Workspace:
    """A workspace whose push is done, without cloning (the pull request needs only the
    branch's name; the stand-in doesn't look at commits)."""
    workspace = Workspace.objects.create(
        conversation=conversation,
        repository=repo,
        branch="main",
        work_branch="tandem/work",
        base_commit="0" * 40,
    )
    RepoJob.objects.create(
        kind=RepoJobKind.PUSH,
        status="done",
        repository=repo,
        conversation=conversation,
        requested_by=alice,
        branch=branch,
        result="1" * 40,
        message="Make the answer 42\n\nChanged files:\n- app.py\n",
    )
    return workspace


def open_pr(user, conversation, **fields):
    data = {"title": "Make the answer 42", "body": "Because.", "base": "main", **fields}
    return client_of(user).post(page(conversation) + "pull-request/", data, follow=True)


def last_pr(conversation) -> RepoJob:
    return RepoJob.objects.filter(conversation=conversation, kind="pr").latest("created")


# --- The commit message ---------------------------------------------------------------------


@needs_sandbox
def test_push_proposes_a_message_and_commits_the_edited_one_exactly(
    conversation,
    alice,
    team,
    origin,  # noqa: F811 (test_agent's fixture, imported)
    inline_jobs,
):
    conversation.title = "Fix the answer"
    conversation.save()
    repo = Repository.objects.create(team=team, name="answer", url=str(origin))
    repos.create_workspace(conversation=conversation, repo=repo)
    edit_run(conversation, alice, "return 41", "return 42")
    execute(send(conversation, alice, tool("write_file", path="NEW.md", content="new\n")))

    proposed = pushes.commit_message_proposal(conversation)
    assert proposed == (
        "Fix the answer\n\nChanged files:\n- app.py\n- NEW.md (new)\n\n"
        "Made with Tandem in a conversation of the team Acme.\n"
    )
    assert (
        "Changed files:\n- app.py\n- NEW.md (new)"
        in client_of(alice).get(page(conversation)).content.decode()
    )

    client = client_of(alice)
    refused = client.post(page(conversation) + "push/", {"branch": "x", "message": "\n\nbody"})
    assert refused.status_code == 409
    assert "first line says what the change does" in refused.content.decode()
    nul = client.post(page(conversation) + "push/", {"branch": "x", "message": "a\0b"})
    assert "NUL" in nul.content.decode()
    long = client.post(page(conversation) + "push/", {"branch": "x", "message": "a" * 201})
    assert "at most 200" in long.content.decode()
    assert not git(origin, "branch", "--list", "x").strip()  # nothing was pushed

    message = "Answer 42, not 41\r\n\r\n  Indented detail line.\r\n- app.py\r\n\r\n"
    done = client.post(
        page(conversation) + "push/", {"branch": "tandem/answer", "message": message}
    )
    assert done.status_code == 302
    commit = git(origin, "cat-file", "commit", "tandem/answer")
    assert commit.split("\n\n", 1)[1] == "Answer 42, not 41\n\n  Indented detail line.\n- app.py\n"
    assert git(origin, "show", "tandem/answer:NEW.md") == "new\n"


# --- Where pull requests go ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "api", "project"),
    [
        ("https://github.com/acme/widgets.git", "github", "GH", "acme/widgets"),
        ("git@github.com:acme/widgets.git", "github", "GH", "acme/widgets"),
        ("https://gitlab.com/acme/tools/widgets", "gitlab", "GL", "acme/tools/widgets"),
        (
            "ssh://git@gitlab.corp.example:2222/a/b.git",
            "gitlab",
            "https://gitlab.corp.example/api/v4",
            "a/b",
        ),
        (
            "https://github.corp.example/a/b.git",
            "github",
            "https://github.corp.example/api/v3",
            "a/b",
        ),
        ("https://git.example.org/a/b.git", None, None, None),
        ("/srv/git/widgets", None, None, None),
    ],
)
def test_where_pull_requests_go_is_read_from_the_address(team, settings, url, kind, api, project):
    settings.GITHUB_API_BASE, settings.GITLAB_API_BASE = "GH", "GL"
    target = forges.target_of(Repository(team=team, url=url))
    assert (
        (target.kind, target.api_base, target.project) == (kind, api, project)
        if kind
        else target is None
    )


def test_admins_set_where_they_go_and_the_token_stays_on_its_host(team, alice, bob, forge_api):
    repo = connected(team, url="https://git.example.org/acme/widgets.git", token=GITHUB_TOKEN)
    url = "/t/acme/repos/pull-requests/"
    form = {"repository": str(repo.uuid), "forge": "gitlab", "forge_project": ""}
    # Another host would receive the repository's token: refused in words.
    evil = client_of(alice).post(
        url, form | {"forge_api_base": "https://evil.example/api/v4"}, follow=True
    )
    assert "must be on the repository&#x27;s own host, git.example.org" in evil.content.decode()
    repo.refresh_from_db()
    assert repo.forge == "" and forges.target_of(repo) is None
    saved = client_of(alice).post(
        url, form | {"forge_api_base": "https://git.example.org/api/v4"}, follow=True
    )
    assert "go to GitLab, project acme/widgets" in saved.content.decode()
    repo.refresh_from_db()
    assert forges.target_of(repo) == forges.Target(
        "gitlab", "https://git.example.org/api/v4", "acme/widgets"
    )
    event = AuditEvent.objects.filter(action=audit.Action.REPO_CHANGED).latest("created")
    assert event.after["forge"] == "gitlab" and event.actor == alice
    # A member who isn't an admin learns nothing.
    assert client_of(bob).post(url, form | {"forge": "none"}).status_code == 404


# --- Opening one -----------------------------------------------------------------------------


def test_a_pull_request_on_github_is_opened_linked_and_audited(
    conversation, team, alice, bob, forge_api, inline_jobs
):
    repo = connected(
        team,
        url="/srv/widgets",
        token=GITHUB_TOKEN,
        forge=Forge.GITHUB,
        forge_project=GITHUB_PROJECT,
    )
    pushed_workspace(conversation, repo, alice)
    shown = client_of(bob).get(page(conversation)).content.decode()
    assert 'data-testid="pull-request"' in shown and "Make the answer 42" in shown
    assert GITHUB_TOKEN not in shown

    response = open_pr(bob, conversation, title="  Make the answer\n 42 ", base="main")
    html = response.content.decode()
    job = last_pr(conversation)
    assert job.status == "done", job.error
    assert (job.number, job.result) == (1, "opened")
    assert job.url == f"https://github.example/{GITHUB_PROJECT}/pull/1"
    assert f'href="{job.url}"' in html and "Pull request #1</a> opened" in html
    assert GITHUB_TOKEN not in html
    listed, made = forge_api.of("github")
    assert listed.method == "GET" and listed.query == {
        "head": "acme:tandem/answer",
        "state": "open",
    }
    assert made.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert made.headers["x-github-api-version"] == "2022-11-28"
    assert made.body == {
        "title": "Make the answer 42",
        "head": "tandem/answer",
        "base": "main",
        "body": "Because.",
    }
    event = AuditEvent.objects.get(action=audit.Action.PULL_REQUEST_OPENED)
    assert event.actor == bob and event.after["url"] == job.url and event.after["number"] == 1

    # A second click opens no second one: the open one is found and linked.
    open_pr(alice, conversation)
    again = last_pr(conversation)
    assert (again.status, again.number, again.result) == ("done", 1, "existing")
    assert len(forge_api.of("github", "POST")) == 1
    assert AuditEvent.objects.filter(action=audit.Action.PULL_REQUEST_LINKED).count() == 1


def test_one_opened_meanwhile_is_linked_after_githubs_422(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(team, url="https://github.com/acme/widgets.git", token=GITHUB_TOKEN)
    pushed_workspace(conversation, repo, alice)
    forge_api.open_pull(GITHUB_PROJECT, "tandem/answer")
    forge_api.script("github GET", 200, [])  # not there yet when first listed
    open_pr(alice, conversation)
    job = last_pr(conversation)
    assert (job.status, job.number, job.result) == ("done", 1, "existing"), job.error
    assert [r.method for r in forge_api.of("github")] == ["GET", "POST", "GET"]


def test_a_merge_request_on_gitlab_with_the_project_path_encoded(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(team, url=f"https://gitlab.com/{GITLAB_PROJECT}.git", token=GITLAB_TOKEN)
    pushed_workspace(conversation, repo, alice)
    assert "Open merge request" in client_of(alice).get(page(conversation)).content.decode()
    html = open_pr(alice, conversation, base="develop").content.decode()
    job = last_pr(conversation)
    assert job.status == "done", job.error
    assert "Merge request !1</a> opened" in html
    made = forge_api.of("gitlab", "POST")[0]
    assert made.path == "/gitlab/api/v4/projects/acme%2Ftools%2Fwidgets/merge_requests"
    assert made.headers["private-token"] == GITLAB_TOKEN and "authorization" not in made.headers
    assert made.body == {
        "source_branch": "tandem/answer",
        "target_branch": "develop",
        "title": "Make the answer 42",
        "description": "Because.",
    }
    # GitLab's 409 for a second one, when the listing missed it: linked too.
    forge_api.script("gitlab GET", 200, [])
    open_pr(alice, conversation)
    assert (last_pr(conversation).result, last_pr(conversation).number) == ("existing", 1)


@pytest.mark.parametrize(
    ("scenario", "words"),
    [
        ("bad token", "GitHub refused the repository's token (401)"),
        ("no such repository", "GitHub has no project acme/nothing that this token can see (404)"),
        ("rate limit", "GitHub's rate limit for this token is used up: try again in 5 minutes"),
        ("forbidden", "may not open pull requests on acme/widgets (403): Resource not accessible"),
        ("network down", "Could not reach GitHub at 127.0.0.1:"),
        ("server error", "GitHub had an error (502). Try again later."),
    ],
)
def test_failures_are_said_in_words_without_the_token(
    conversation, team, alice, forge_api, inline_jobs, settings, scenario, words
):
    token, project = GITHUB_TOKEN, GITHUB_PROJECT
    if scenario == "bad token":
        token = "ghp_revokedSECRET"
    elif scenario == "no such repository":
        project = "acme/nothing"
    elif scenario == "rate limit":
        forge_api.script(
            "github GET",
            403,
            {"message": "API rate limit exceeded"},
            X_RateLimit_Remaining="0",
            Retry_After="300",
        )
    elif scenario == "forbidden":
        forge_api.script(
            "github GET", 403, {"message": "Resource not accessible by personal access token"}
        )
    elif scenario == "network down":
        with socket_closed() as port:
            settings.GITHUB_API_BASE = f"http://127.0.0.1:{port}"
    else:
        forge_api.script("github GET", 502, {"message": f"upstream said {token}"})
    repo = connected(
        team, url="/srv/widgets", token=token, forge=Forge.GITHUB, forge_project=project
    )
    pushed_workspace(conversation, repo, alice)
    html = open_pr(alice, conversation).content.decode()
    job = last_pr(conversation)
    assert job.status == "failed" and words in job.error, job.error
    assert token not in job.error and token not in html
    assert not job.url and not AuditEvent.objects.filter(action__startswith="pullrequest").exists()


class socket_closed:
    """A port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        pass


def test_no_button_elsewhere_and_refusals_in_words(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(team, url="https://git.example.org/acme/widgets.git", token=GITHUB_TOKEN)
    pushed_workspace(conversation, repo, alice)
    assert "pull-request-details" not in client_of(alice).get(page(conversation)).content.decode()
    refused = client_of(alice).post(
        page(conversation) + "pull-request/", {"title": "t", "base": "main"}
    )
    assert refused.status_code == 409 and "is not on GitHub or GitLab" in refused.content.decode()
    # On GitHub without an HTTPS token: said, and nothing is called.
    Repository.objects.filter(pk=repo.pk).update(
        url="https://github.com/acme/widgets", auth=RepoAuth.NONE
    )
    assert "has none" in client_of(alice).get(page(conversation)).content.decode()
    assert (
        "needs the repository&#x27;s HTTPS token" in open_pr(alice, conversation).content.decode()
    )
    assert forge_api.requests == []


def test_outsiders_get_404_on_every_new_url(
    conversation, team, other_team, alice, charlie, forge_api, inline_jobs
):
    repo = connected(team, url="https://github.com/acme/widgets.git", token=GITHUB_TOKEN)
    pushed_workspace(conversation, repo, alice)
    open_pr(alice, conversation)
    job = last_pr(conversation)
    outsider = client_of(charlie)
    assert (
        outsider.post(
            page(conversation) + "pull-request/", {"title": "t", "base": "main"}
        ).status_code
        == 404
    )
    assert outsider.post(page(conversation) + "push/", {"message": "m"}).status_code == 404
    assert (
        outsider.post("/t/acme/repos/pull-requests/", {"repository": str(repo.uuid)}).status_code
        == 404
    )
    key = make_key(other_team, charlie)
    api = Client()
    assert (
        call(api, "POST", f"conversations/{conversation.uuid}/pull-request", key=key).status_code
        == 404
    )
    assert call(api, "POST", f"conversations/{conversation.uuid}/push", key=key).status_code == 404
    assert call(api, "GET", f"jobs/{job.uuid}", key=key).status_code == 404
    assert len(forge_api.of("github", "POST")) == 1


def test_the_api_opens_one_with_the_proposed_defaults(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(
        team, url=f"https://gitlab.com/{GITLAB_PROJECT}", token=GITLAB_TOKEN, default_branch="trunk"
    )
    pushed_workspace(conversation, repo, alice)
    key = make_key(team, alice)
    api = Client()
    bad = call(
        api, "POST", f"conversations/{conversation.uuid}/push", key=key, body={"message": " "}
    )
    assert bad.status_code == 422 and "first line" in bad.json()["error"]["message"]
    made = call(api, "POST", f"conversations/{conversation.uuid}/pull-request", key=key)
    assert made.status_code == 202
    job = call(api, "GET", f"jobs/{made.json()['id']}", key=key).json()
    assert job["status"] == "done" and job["base"] == "trunk"
    url = f"https://gitlab.example/{GITLAB_PROJECT}/-/merge_requests/1"
    assert job["pull_request"] == {"number": 1, "url": url, "existing": False}
    sent = forge_api.of("gitlab", "POST")[0].body
    assert sent["title"] == "Make the answer 42"
    assert sent["description"] == "Changed files:\n- app.py"


def test_gitlab_refusing_the_token_is_said_in_words(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(team, url=f"https://gitlab.com/{GITLAB_PROJECT}", token="glpat-wrongSECRET")
    pushed_workspace(conversation, repo, alice)
    open_pr(alice, conversation)
    job = last_pr(conversation)
    assert job.status == "failed"
    assert job.error.startswith("GitLab refused the repository's token (401)")
    assert forge_api.of("gitlab")[0].headers["private-token"] == "glpat-wrongSECRET"


def test_an_api_base_written_past_the_page_is_refused_before_the_token_goes(
    conversation, team, alice, forge_api, inline_jobs
):
    repo = connected(team, url="https://gitlab.com/acme/tools/widgets", token=GITLAB_TOKEN)
    Repository.objects.filter(pk=repo.pk).update(forge_api_base=forge_api.gitlab_api)
    pushed_workspace(conversation, repo, alice)
    open_pr(alice, conversation)
    job = last_pr(conversation)
    assert job.status == "failed" and "https://" in job.error
    assert forge_api.requests == []
