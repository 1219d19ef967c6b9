"""Repository pages: admins connect, fetch and remove repositories; members attach one to a
conversation. The remotes are repositories the tests make on disk."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from django.test import Client

from assistant import repos
from assistant.models import RepoAuth, RepoJob, Repository, Workspace
from tests.test_repos import GIT_ENV

pytestmark = pytest.mark.django_db

TOKEN = "ghp_N3verShowThisT0kenAnywhere"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nN3verShowThisKey\n-----END OPENSSH PRIVATE KEY-----"


def git(cwd: Path, *args: str) -> None:
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture(autouse=True)
def root(settings, tmp_path) -> Path:
    settings.REPOS_ROOT = tmp_path / "repos"
    return settings.REPOS_ROOT


@pytest.fixture
def origin(tmp_path) -> Path:
    """A repository with branches main and feature."""
    path = tmp_path / "origin"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Demo\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial commit")
    git(path, "checkout", "-qb", "feature")
    (path / "FEATURE.md").write_text("A feature.\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Start a feature")
    git(path, "checkout", "-q", "main")
    return path


@pytest.fixture
def repo(team, origin) -> Repository:
    return Repository.objects.create(team=team, name="demo", url=str(origin))


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def text(response) -> str:
    return response.content.decode()


def test_admin_adds_a_repository_and_the_credential_is_never_shown(alice, team, origin):
    client = client_for(alice)
    response = client.post(
        "/t/acme/repos/",
        {"name": "demo", "url": str(origin), "auth": RepoAuth.HTTPS_TOKEN, "token": TOKEN},
        follow=True,
    )
    assert response.status_code == 200
    repo = Repository.objects.get(team=team, name="demo")
    assert repo.url == str(origin) and repo.auth == RepoAuth.HTTPS_TOKEN
    assert repo.credential == TOKEN and TOKEN not in repo.credential_encrypted
    page = text(client.get("/t/acme/repos/"))
    assert "demo" in page and str(origin) in page and "HTTPS token" in page
    assert TOKEN not in page and repo.credential_encrypted not in page


def test_a_rejected_form_does_not_render_the_key_back(alice, team, origin):
    client = client_for(alice)
    # The name clashes, so the form comes back; the key must not be in it.
    Repository.objects.create(team=team, name="demo", url=str(origin))
    response = client.post(
        "/t/acme/repos/",
        {"name": "demo", "url": str(origin), "auth": RepoAuth.SSH_KEY, "ssh_key": KEY},
    )
    assert response.status_code == 422
    assert "already has a repository with this name" in text(response)
    assert "N3verShowThisKey" not in text(response)
    assert Repository.objects.filter(team=team).count() == 1


def test_a_bad_address_shows_a_readable_error(alice, team):
    client = client_for(alice)
    response = client.post("/t/acme/repos/", {"name": "x", "url": "ext::sh -c id", "auth": "none"})
    assert response.status_code == 422
    assert "Use an https:// or ssh:// address" in text(response)
    response = client.post(
        "/t/acme/repos/", {"name": "x", "url": "https://example.com/r.git", "auth": "https_token"}
    )
    assert "Enter the token for this repository." in text(response)
    assert not Repository.objects.filter(team=team).exists()


def test_members_get_404_on_the_admin_pages(alice, bob, repo):
    client = client_for(bob)
    assert client.get("/t/acme/repos/").status_code == 404
    assert client.post("/t/acme/repos/", {"name": "x", "url": "/tmp/x"}).status_code == 404
    for action in ("fetch", "remove"):
        response = client.post(f"/t/acme/repos/{action}/", {"repository": repo.uuid})
        assert response.status_code == 404
    assert Repository.objects.filter(pk=repo.pk).exists()
    # And the nav link is for admins only.
    assert "/t/acme/repos/" not in text(client.get("/t/acme/"))
    assert "/t/acme/repos/" in text(client_for(alice).get("/t/acme/"))


def test_fetch_now_records_the_fetch_and_lists_the_branches(alice, repo, inline_jobs):
    client = client_for(alice)
    response = client.post("/t/acme/repos/fetch/", {"repository": repo.uuid}, follow=True)
    assert response.status_code == 200
    assert "Fetching “demo”…" in text(response)
    assert [name for name, _ in inline_jobs] == ["repo_job"]
    repo.refresh_from_db()
    assert repo.last_fetched is not None and repo.last_fetch_error == ""
    assert repo.branches == ["main", "feature"]  # stored for the web, the default first
    assert repos.mirror_path(repo=repo).exists()
    page = text(client.get("/t/acme/repos/"))
    assert 'data-testid="last-fetched"' in page and "never-fetched" not in page
    assert "Branches: main, feature" in page


def test_a_fetch_under_way_is_shown_and_polled(alice, repo, queued_jobs):
    client = client_for(alice)
    client.post("/t/acme/repos/fetch/", {"repository": repo.uuid})
    client.post("/t/acme/repos/fetch/", {"repository": repo.uuid})  # the same job, not two
    assert len(queued_jobs) == 1
    page = text(client.get("/t/acme/repos/"))
    status_url = f"/t/acme/repos/{repo.uuid}/status/"
    assert 'data-testid="fetch-pending"' in page and f'hx-get="{status_url}"' in page
    assert 'data-testid="fetch-pending"' in text(client.get(status_url))

    from assistant import jobs

    jobs.repo_job(*queued_jobs[0][1])
    fragment = text(client.get(status_url))
    assert 'data-testid="last-fetched"' in fragment and "hx-get" not in fragment


def test_a_failed_fetch_is_shown_in_words(alice, team, tmp_path, inline_jobs):
    repo = Repository.objects.create(team=team, name="gone", url=str(tmp_path / "nowhere"))
    client = client_for(alice)
    client.post("/t/acme/repos/fetch/", {"repository": repo.uuid}, follow=True)
    repo.refresh_from_db()
    assert repo.last_fetched is None and repo.last_fetch_error
    assert "Last fetch failed: " + repo.last_fetch_error in text(client.get("/t/acme/repos/"))
    assert RepoJob.objects.get(repository=repo).status == "failed"


def test_remove_deletes_the_repository(alice, repo):
    response = client_for(alice).post("/t/acme/repos/remove/", {"repository": repo.uuid})
    assert response.status_code == 302
    assert not Repository.objects.filter(pk=repo.pk).exists()


def test_fetch_and_remove_of_another_teams_repository_are_404(alice, team, other_team, tmp_path):
    theirs = Repository.objects.create(team=other_team, name="theirs", url=str(tmp_path / "x"))
    client = client_for(alice)
    for action in ("fetch", "remove"):
        response = client.post(f"/t/acme/repos/{action}/", {"repository": theirs.uuid})
        assert response.status_code == 404
    assert Repository.objects.filter(pk=theirs.pk).exists()
    assert client.post("/t/acme/repos/fetch/", {"repository": "nope"}).status_code == 400


def test_attach_creates_a_workspace_and_the_header_shows_it(
    alice, bob, conversation, repo, inline_jobs
):
    client = client_for(bob)  # a plain member may attach
    url = f"/t/acme/c/{conversation.uuid}/"
    assert 'data-testid="attach-repository"' in text(client.get(url))
    repos.ensure_mirror(repo=repo)
    # Once mirrored, its branches (stored at fetch time) are offered as suggestions.
    assert '<option value="feature">demo</option>' in text(client.get(url))
    response = client.post(url + "repository/", {"repository": repo.uuid, "branch": "feature"})
    assert response.status_code == 302 and response["Location"] == url
    workspace = Workspace.objects.get(conversation=conversation)
    assert workspace.repository == repo and workspace.branch == "feature"
    assert (repos.workspace_path(workspace=workspace) / "FEATURE.md").exists()
    page = text(client.get(url))
    assert "Repository: demo @ feature" in page
    assert 'data-testid="attach-repository"' not in page
    # Measured by the worker once made (in the sandbox here: no loop mount in these tests),
    # and shown on the repository page from the row.
    assert workspace.used_bytes and workspace.used_files and workspace.measured
    assert workspace.used_files >= 4  # the tree, FEATURE.md, README.md, the git directory…
    repos_page = text(client_for(alice).get("/t/acme/repos/"))
    assert f"{workspace.used_files} files" in repos_page and "Refactor the parser" in repos_page


def test_while_the_workspace_is_prepared_the_header_says_so(bob, conversation, repo, queued_jobs):
    client = client_for(bob)
    url = f"/t/acme/c/{conversation.uuid}/"
    client.post(url + "repository/", {"repository": repo.uuid})
    page = text(client.get(url))
    assert "Preparing the workspace of “demo”" in page
    assert f'hx-get="{url}repository/status/"' in page and 'hx-trigger="every 1s"' in page
    assert 'data-testid="attach-repository"' not in page
    # A second Attach meanwhile is refused in words; the same one twice is one job.
    response = client.post(url + "repository/", {"repository": repo.uuid, "branch": "feature"})
    assert "being prepared already" in text(client.get(url))
    client.post(url + "repository/", {"repository": repo.uuid})
    assert len(queued_jobs) == 1 and response.status_code == 302

    from assistant import jobs

    jobs.repo_job(*queued_jobs[0][1])
    fragment = text(client.get(url + "repository/status/"))
    assert "Repository: demo @ main" in fragment and "hx-get" not in fragment


def test_a_message_sent_while_the_workspace_is_prepared_waits_for_it(
    bob, conversation, repo, queued_jobs, no_runs
):
    from assistant import agent, jobs, services
    from assistant.models import Run

    client = client_for(bob)
    client.post(f"/t/acme/c/{conversation.uuid}/repository/", {"repository": repo.uuid})
    sent = services.message_send(conversation=conversation, author=bob, content="hi")
    run_id = str(sent.run.uuid)
    # Picked up now, it would stay queued (agent.execute_run returns before its claim) …
    assert agent._waits_for_workspace(run_id)
    # … and one request at a time holds for a workspace being prepared.
    with pytest.raises(services.RunInFlight):
        services.message_send(conversation=conversation, author=bob, content="again")
    no_runs.clear()
    jobs.repo_job(*queued_jobs[0][1])
    assert no_runs == [run_id]  # queued again once the workspace is there
    assert not agent._waits_for_workspace(run_id)
    assert Run.objects.get(uuid=run_id).status == "queued"


def test_attach_without_a_branch_takes_the_default(bob, conversation, repo, inline_jobs):
    client = client_for(bob)
    client.post(f"/t/acme/c/{conversation.uuid}/repository/", {"repository": repo.uuid})
    assert Workspace.objects.get(conversation=conversation).branch == "main"


def test_attach_errors_are_shown_in_words(bob, conversation, repo, inline_jobs):
    client = client_for(bob)
    url = f"/t/acme/c/{conversation.uuid}/repository/"
    response = client.post(url, {"repository": repo.uuid, "branch": "nope"}, follow=True)
    assert "could not be prepared: The repository has no branch “nope”." in text(response)
    assert not Workspace.objects.filter(conversation=conversation).exists()
    response = client.post(url, {"branch": "main"}, follow=True)
    assert "Choose a repository." in text(response)
    client.post(url, {"repository": repo.uuid, "branch": "main"})
    response = client.post(url, {"repository": repo.uuid, "branch": "feature"}, follow=True)
    assert "This conversation already works on a repository." in text(response)
    assert Workspace.objects.get(conversation=conversation).branch == "main"


def test_attaching_another_teams_repository_is_404(alice, bob, other_team, conversation, tmp_path):
    theirs = Repository.objects.create(team=other_team, name="theirs", url=str(tmp_path / "x"))
    response = client_for(bob).post(
        f"/t/acme/c/{conversation.uuid}/repository/", {"repository": theirs.uuid, "branch": ""}
    )
    assert response.status_code == 404
    assert not Workspace.objects.exists()


def test_posts_without_a_csrf_token_are_403(alice, conversation, repo):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = text(client.get("/t/acme/repos/"))
    assert re.search(r'name="csrfmiddlewaretoken"', page)
    posts = {
        "/t/acme/repos/": {"name": "x", "url": "/tmp/x", "auth": "none"},
        "/t/acme/repos/fetch/": {"repository": repo.uuid},
        "/t/acme/repos/remove/": {"repository": repo.uuid},
        f"/t/acme/c/{conversation.uuid}/repository/": {"repository": repo.uuid},
    }
    for url, data in posts.items():
        assert client.post(url, data).status_code == 403, url
    assert Repository.objects.filter(team=repo.team).count() == 1
    repo.refresh_from_db()
    assert repo.last_fetched is None and not Workspace.objects.exists()


# --- Issue 16: a broken address is refused, a good one is fetched at once, Attach defaults well


def test_a_local_path_is_checked_by_the_worker_s_first_fetch_not_the_web(
    alice, team, tmp_path, monkeypatch, queued_jobs
):
    """The web has no repositories volume: adding a local path looks nothing up there. The
    first fetch, a worker job, says on the row that no repository is there."""
    from assistant.jobs import repo_job

    looked: list[str] = []
    real_is_dir = Path.is_dir

    def is_dir(self):
        looked.append(str(self))
        return real_is_dir(self)

    client = client_for(alice)
    nowhere = tmp_path / "nowhere"
    with monkeypatch.context() as patch:
        patch.setattr(Path, "is_dir", is_dir)
        response = client.post("/t/acme/repos/", {"name": "x", "url": str(nowhere), "auth": "none"})
    assert response.status_code == 302
    assert str(nowhere) not in looked  # the web did not look
    repo = Repository.objects.get()
    (job,) = RepoJob.objects.filter(repository=repo, kind="fetch")
    assert queued_jobs == [("repo_job", (str(job.uuid),))]
    assert 'data-testid="fetch-pending"' in text(client.get("/t/acme/repos/"))

    repo_job(str(job.uuid))  # what the worker does with it
    job.refresh_from_db()
    nothing = "Reaching the repository failed: no git repository was found at this address."
    assert job.status == "failed" and job.error == nothing
    assert f"Last fetch failed: {nothing}" in text(client.get("/t/acme/repos/"))
    (tmp_path / "plain").mkdir()  # a folder, but no repository
    Repository.objects.filter(pk=repo.pk).update(url=f"file://{tmp_path / 'plain'}")
    job = RepoJob.objects.create(repository=repo, kind="fetch")
    repo_job(str(job.uuid))
    job.refresh_from_db()
    assert job.status == "failed" and job.error == nothing


def test_an_added_repository_is_fetched_at_once(alice, team, origin, inline_jobs):
    client = client_for(alice)
    response = client.post("/t/acme/repos/", {"name": "demo", "url": str(origin), "auth": "none"})
    repo = Repository.objects.get()
    assert response.status_code == 302
    # A fetch job, done by a worker (here at once): the page says when it fetched.
    assert [name for name, _ in inline_jobs] == ["repo_job"]
    assert RepoJob.objects.get(repository=repo, kind="fetch").status == "done"
    page = text(client.get("/t/acme/repos/"))
    assert 'data-testid="last-fetched"' in page and 'data-testid="never-fetched"' not in page


def test_attach_defaults_to_the_last_used_healthy_repository(
    alice, team, conversation, origin, tmp_path
):
    from assistant.services import conversation_create

    broken = Repository.objects.create(
        team=team, name="aaa-broken", url=str(tmp_path / "gone"), last_fetch_error="gone"
    )
    other = Repository.objects.create(team=team, name="bbb", url=str(origin))
    used = Repository.objects.create(team=team, name="ccc", url=str(origin))
    earlier = conversation_create(team=team, author=alice, title="Earlier")
    repos.create_workspace(conversation=earlier, repo=used, branch="main")

    page = text(client_for(alice).get(f"/t/acme/c/{conversation.uuid}/"))
    options = [page.index(f'value="{r.uuid}"') for r in (used, other, broken)]
    assert options == sorted(options)
    assert "aaa-broken (last fetch failed)" in page


def test_a_job_whose_worker_died_is_failed_in_words_and_the_runs_go_on(
    bob, conversation, repo, queued_jobs, no_runs
):
    from datetime import timedelta

    from django.utils import timezone

    from assistant import services

    client = client_for(bob)
    client.post(f"/t/acme/c/{conversation.uuid}/repository/", {"repository": repo.uuid})
    run = services.message_send(conversation=conversation, author=bob, content="hi").run
    job = RepoJob.objects.get(conversation=conversation)
    RepoJob.objects.filter(pk=job.pk).update(status="running")  # claimed, then its worker died
    assert services.fail_stale_repo_jobs() == 0  # a running job is left alone for a while …
    RepoJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(hours=1))
    no_runs.clear()
    assert services.fail_stale_repo_jobs() == 1  # … then failed, once
    assert services.fail_stale_repo_jobs() == 0
    assert no_runs == [str(run.uuid)]
    page = text(client.get(f"/t/acme/c/{conversation.uuid}/"))
    assert "could not be prepared: It was interrupted" in page
    assert 'data-testid="attach-repository"' in page  # and Attach is offered again
