"""Repository pages: admins connect, fetch and remove repositories; members attach one to a
conversation. The remotes are repositories the tests make on disk."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from django.test import Client, TestCase

from assistant import repos
from assistant.models import RepoAuth, Repository, Workspace
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


def test_fetch_now_records_the_fetch_and_lists_the_branches(alice, repo):
    client = client_for(alice)
    response = client.post("/t/acme/repos/fetch/", {"repository": repo.uuid}, follow=True)
    assert response.status_code == 200
    assert "Fetched “demo”. Branches: main, feature." in text(response)
    repo.refresh_from_db()
    assert repo.last_fetched is not None and repo.last_fetch_error == ""
    assert repos.mirror_path(repo=repo).exists()
    page = text(client.get("/t/acme/repos/"))
    assert 'data-testid="last-fetched"' in page and "never-fetched" not in page


def test_a_failed_fetch_is_shown_in_words(alice, team, tmp_path):
    repo = Repository.objects.create(team=team, name="gone", url=str(tmp_path / "nowhere"))
    client = client_for(alice)
    response = client.post("/t/acme/repos/fetch/", {"repository": repo.uuid}, follow=True)
    assert "Fetching “gone” failed." in text(response)
    repo.refresh_from_db()
    assert repo.last_fetched is None and repo.last_fetch_error
    assert "Last fetch failed: " + repo.last_fetch_error in text(client.get("/t/acme/repos/"))


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


def test_attach_creates_a_workspace_and_the_header_shows_it(bob, conversation, repo):
    client = client_for(bob)  # a plain member may attach
    url = f"/t/acme/c/{conversation.uuid}/"
    assert 'data-testid="attach-repository"' in text(client.get(url))
    repos.ensure_mirror(repo=repo)
    # Once mirrored, its branches are offered as suggestions.
    assert '<option value="feature">demo</option>' in text(client.get(url))
    response = client.post(url + "repository/", {"repository": repo.uuid, "branch": "feature"})
    assert response.status_code == 302 and response["Location"] == url
    workspace = Workspace.objects.get(conversation=conversation)
    assert workspace.repository == repo and workspace.branch == "feature"
    assert (repos.workspace_path(workspace=workspace) / "FEATURE.md").exists()
    page = text(client.get(url))
    assert "Repository: demo @ feature" in page
    assert 'data-testid="attach-repository"' not in page


def test_attach_without_a_branch_takes_the_default(bob, conversation, repo):
    client = client_for(bob)
    client.post(f"/t/acme/c/{conversation.uuid}/repository/", {"repository": repo.uuid})
    assert Workspace.objects.get(conversation=conversation).branch == "main"


def test_attach_errors_are_shown_in_words(bob, conversation, repo):
    client = client_for(bob)
    url = f"/t/acme/c/{conversation.uuid}/repository/"
    response = client.post(url, {"repository": repo.uuid, "branch": "nope"}, follow=True)
    assert "The repository has no branch “nope”." in text(response)
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


def test_a_local_path_that_is_not_there_is_refused(alice, team, tmp_path):
    client = client_for(alice)
    response = client.post(
        "/t/acme/repos/", {"name": "x", "url": str(tmp_path / "nowhere"), "auth": "none"}
    )
    assert response.status_code == 422
    assert f"There is no folder at {tmp_path / 'nowhere'}." in text(response)
    (tmp_path / "plain").mkdir()
    response = client.post(
        "/t/acme/repos/", {"name": "x", "url": f"file://{tmp_path / 'plain'}", "auth": "none"}
    )
    assert "is not a git repository" in text(response)
    assert not Repository.objects.exists()


def test_an_added_repository_is_fetched_at_once(alice, team, origin, monkeypatch):
    fetched: list[int] = []
    monkeypatch.setattr("assistant.runner.enqueue_fetch", fetched.append)
    client = client_for(alice)
    with TestCase.captureOnCommitCallbacks(execute=True):
        response = client.post(
            "/t/acme/repos/", {"name": "demo", "url": str(origin), "auth": "none"}
        )
    repo = Repository.objects.get()
    assert response.status_code == 302 and fetched == [repo.pk]
    assert 'data-testid="fetch-pending"' in text(client.get("/t/acme/repos/"))

    from assistant.tasks import fetch_repository

    fetch_repository(repo.pk)
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
