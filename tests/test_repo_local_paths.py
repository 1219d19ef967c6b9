"""Which local repositories (a path or file://) a team may connect: Charlie's team, an outsider,
tries Alice's repository, Tandem's own installation and data, and symlinks into them; all are
refused. In production no local path is accepted unless the operator names the directories they
may come from (REPOS_LOCAL_ROOTS), and a named root inside Tandem's own files is ignored."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import pytest
from django.test import Client

from assistant import repos
from assistant.models import Repository
from tests.test_repos import git

pytestmark = pytest.mark.django_db


def make_repo(path: Path, secret: str = "") -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / ".env").write_text(f"DATABASE_PASSWORD={secret or 'nothing'}\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial commit")
    return path


@pytest.fixture
def root(settings, tmp_path) -> Path:
    settings.REPOS_ROOT = tmp_path / "repos"
    return settings.REPOS_ROOT


@pytest.fixture
def alices_repo(team, tmp_path, root) -> Repository:
    origin = make_repo(tmp_path / "alice" / "origin", secret="alices-secret")
    return Repository.objects.create(team=team, name="private", url=str(origin))


def add_as_charlie(charlie, url: str):
    client = Client()
    client.force_login(charlie)
    return client.post("/t/other/repos/", {"name": "mine", "url": url, "auth": "none"})


def refused(response, words: str) -> bool:
    return response.status_code == 422 and words in html.unescape(response.content.decode())


def test_charlie_cannot_connect_alices_repository(charlie, other_team, alices_repo, tmp_path):
    origin = Path(alices_repo.url)
    for url in (
        str(origin),
        f"file://{origin}",
        f"file://localhost{origin}/",
        str(origin / ".git"),
        str(origin / ".." / "origin"),
    ):
        assert refused(add_as_charlie(charlie, url), "another team"), url
    link = tmp_path / "charlie" / "innocent"
    link.parent.mkdir()
    link.symlink_to(origin)
    assert refused(add_as_charlie(charlie, str(link)), "another team")
    assert not Repository.objects.filter(team=other_team).exists()


def test_nor_tandems_own_files_or_data(charlie, other_team, alices_repo, settings, tmp_path):
    repos.ensure_mirror(repo=alices_repo)
    mirror = repos.mirror_path(repo=alices_repo)
    targets = {
        str(settings.BASE_DIR): "Tandem's own installation",
        f"file://{settings.BASE_DIR}": "Tandem's own installation",
        str(settings.DATA_DIR): "Tandem's own data",
        str(mirror): "Tandem's own data",
        f"file://{mirror}": "Tandem's own data",
    }
    links = tmp_path / "charlie-links"
    links.mkdir()
    for index, (url, words) in enumerate(list(targets.items())):
        link = links / f"link{index}"
        link.symlink_to(url.removeprefix("file://"))
        targets[str(link)] = words
    for url, words in targets.items():
        assert refused(add_as_charlie(charlie, url), words), url
    assert not Repository.objects.filter(team=other_team).exists()


def test_a_teams_own_local_repository_is_fine(charlie, other_team, tmp_path, root):
    origin = make_repo(tmp_path / "charlie" / "origin")
    assert add_as_charlie(charlie, str(origin)).status_code == 302
    assert Repository.objects.get(team=other_team).url == str(origin)


def test_production_refuses_local_paths_unless_roots_are_named(
    charlie, other_team, tmp_path, root, settings
):
    origin = make_repo(tmp_path / "allowed" / "origin")
    settings.PRODUCTION = True
    settings.REPOS_LOCAL_ROOTS = []
    for url in (str(origin), f"file://{origin}"):
        assert refused(add_as_charlie(charlie, url), "doesn't connect repositories by local path")
    # https and ssh are not affected.
    assert repos.validate_url("https://example.com/x.git") == "https://example.com/x.git"
    settings.REPOS_LOCAL_ROOTS = [str(tmp_path / "allowed")]
    assert add_as_charlie(charlie, f"file://{origin}").status_code == 302
    elsewhere = make_repo(tmp_path / "elsewhere")
    assert refused(add_as_charlie(charlie, str(elsewhere)), "must be under")


def test_a_root_inside_tandems_own_files_is_ignored_with_a_warning(settings, caplog, tmp_path):
    settings.PRODUCTION = True
    settings.REPOS_LOCAL_ROOTS = [str(settings.BASE_DIR / "assistant"), str(settings.DATA_DIR)]
    with caplog.at_level(logging.WARNING, logger="assistant.repos"):
        assert repos.local_roots() == []
    assert "ignoring" in caplog.text and str(settings.DATA_DIR) in caplog.text
    with pytest.raises(repos.RepoError, match="Tandem's own installation"):
        repos.validate_url(str(settings.BASE_DIR / "assistant"))
    # A root around them is kept, with them carved out.
    settings.REPOS_LOCAL_ROOTS = ["/"]
    assert repos.local_roots() == [Path("/")]
    with pytest.raises(repos.RepoError, match="Tandem's own installation"):
        repos.validate_url(str(settings.BASE_DIR))
    with pytest.raises(repos.RepoError, match="absolute"):
        repos.validate_url("file:relative/path")


def test_a_fetch_checks_the_address_again(alices_repo, settings):
    # A row that predates the rules (or an operator who tightened them): nothing is read.
    settings.PRODUCTION = True
    settings.REPOS_LOCAL_ROOTS = []
    with pytest.raises(repos.RepoError, match="local path"):
        repos.ensure_mirror(repo=alices_repo)
    alices_repo.refresh_from_db()
    assert "local path" in alices_repo.last_fetch_error
