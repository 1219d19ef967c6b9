"""Paths in replies link to a read-only view of the file (issue 16): which paths become links,
the view at a line, and what it refuses — paths out of the workspace, symbolic links, folders,
binary and huge files — in words; outsiders get 404. The file is read by a worker from the
workspace's git objects in the sandbox (here the jobs run at once, in the test's thread)."""

from __future__ import annotations

import os
from html import unescape
from pathlib import Path

import pytest
from django.test import Client

from assistant import file_links, repo_context, repos
from assistant.models import Message, RepoJob, Role, Run, RunStatus, Workspace
from assistant.services import conversation_create
from tests import test_repos

pytestmark = pytest.mark.django_db

root, origin, repo, workspace = (
    test_repos.root,
    test_repos.origin,
    test_repos.repo,
    test_repos.workspace,
)
REPLY = (
    "Changed `src/app.py:2`, see README.md and src/nope.py; [docs](https://x.example/src/app.py)"
)


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    """The workspace after a turn that left a symlink out of it, a folder and a large file."""
    tree = repos.workspace_path(workspace=workspace)
    os.symlink("/etc/passwd", tree / "passwd")
    (tree / "big.txt").write_text("x" * 5000 + "\n")
    workspace.tree = repos.snapshot(workspace=workspace)
    workspace.save(update_fields=["tree"])
    repo_context.build(workspace=workspace)  # a turn's start lists the files: linkable paths
    workspace.refresh_from_db()
    return workspace


def a_reply(conversation, alice, text: str = REPLY) -> Run:
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Where?"
    )
    run = Run.objects.create(
        conversation=conversation, user_message=message, status=RunStatus.SUCCEEDED
    )
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content=text, run=run)
    return run


def view(client: Client, ws: Workspace, path: str, line: str = ""):
    url = f"/t/acme/c/{ws.conversation.uuid}/file/"
    return client.get(url, {"path": path, **({"line": line} if line else {})})


@pytest.fixture
def client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_the_workspaces_files_are_remembered_and_a_turns_new_files_added(ws):
    assert {"README.md", "src/app.py", "big.txt"} <= set(ws.paths)
    assert "passwd" not in ws.paths and "src" not in ws.paths  # a link, a folder
    file_links.add(ws, ["src/new.py", "README.md"])
    ws.refresh_from_db()
    assert ws.paths.count("README.md") == 1 and "src/new.py" in ws.paths


def test_known_paths_in_a_reply_link_to_the_file_at_their_line(ws, alice, client):
    run = a_reply(ws.conversation, alice)
    base = f"/t/acme/c/{ws.conversation.uuid}/file/"
    for url in (f"/t/acme/c/{ws.conversation.uuid}/", f"/runs/{run.uuid}/"):
        html = client.get(url).content.decode()
        assert f'<code><a class="file-link" href="{base}?path=src/app.py&amp;line=2#L2">' in html
        assert f'<a class="file-link" href="{base}?path=README.md">README.md</a>' in html
        assert "src/nope.py" in html and "path=src/nope.py" not in html  # not in the workspace
        assert html.count('class="file-link"') == 2  # not inside the existing link


def test_the_view_shows_the_file_with_line_numbers_and_marks_the_line(ws, client, inline_jobs):
    response = view(client, ws, "src/app.py", "2")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<tr id="L2" class="hl" data-testid="target-line"><td class="ln" data-ln="2">' in html
    assert 'id="L1"' in html and "main" in html and 'id="L3"' not in html
    assert inline_jobs == [("repo_job", (str(RepoJob.objects.get(path="src/app.py").uuid),))]
    view(client, ws, "src/app.py", "1")
    assert len(inline_jobs) == 1  # read once per snapshot


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("../../../../etc/passwd", 400, "no '..' or '.'"),
        ("src/../../x", 400, "no '..' or '.'"),
        ("/etc/passwd", 400, "by a relative path"),
        ("", 400, "No file was named."),
        ("passwd", 200, "This is a symbolic link; links are not followed."),
        ("src", 200, "This is a folder, not a file."),
        ("logo.png", 200, "This is a binary file; it can't be shown as text."),
        ("big.txt", 200, "This file is too large to show here (5,001 bytes; at most 1,000)."),
        ("src/nope.py", 404, "There is no such file in this conversation's workspace."),
    ],
)
def test_the_view_refuses_in_words(ws, client, inline_jobs, settings, path, status, words):
    settings.FILE_VIEW_MAX_BYTES = 1000
    response = view(client, ws, path)
    html = unescape(response.content.decode())
    assert response.status_code == status
    assert words in html and 'data-testid="file-refused"' in html
    assert "root:" not in html  # /etc/passwd was never read


def test_outsiders_and_conversations_without_a_repository_get_404(
    ws, client, alice, charlie, other_team, inline_jobs
):
    outsider = Client()
    outsider.force_login(charlie)
    assert view(outsider, ws, "src/app.py").status_code == 404
    other = f"/t/{other_team.slug}/c/{ws.conversation.uuid}/file/?path=src/app.py"
    assert outsider.get(other).status_code == 404
    assert not RepoJob.objects.exists()  # nothing read for them
    bare = conversation_create(team=ws.conversation.team, author=alice, title="No repository")
    assert client.get(f"/t/acme/c/{bare.uuid}/file/?path=README.md").status_code == 404


def test_a_file_still_being_read_asks_again(ws, client, queued_jobs):
    html = view(client, ws, "README.md").content.decode()
    assert 'data-testid="file-reading"' in html and 'hx-trigger="every 1s"' in html
    assert len(queued_jobs) == 1


def test_the_tree_on_disk_is_never_read(ws, client, inline_jobs):
    # The snapshot is what is shown: a file changed on disk since (by a process of the
    # workspace) is not, nor is a file that only exists on disk.
    tree = Path(repos.workspace_path(workspace=ws))
    (tree / "README.md").write_text("changed on disk\n")
    (tree / "later.txt").write_text("later\n")
    html = view(client, ws, "README.md").content.decode()
    assert "A small project." in html and "changed on disk" not in html
    assert view(client, ws, "later.txt").status_code == 404


def test_blank_lines_at_either_end_keep_their_numbers(ws, client, inline_jobs):
    tree = repos.workspace_path(workspace=ws)
    (tree / "blank.py").write_text("\n\nx = 1\n\n")
    Workspace.objects.filter(pk=ws.pk).update(tree=repos.snapshot(workspace=ws))
    html = view(client, ws, "blank.py", "3").content.decode()
    assert '<tr id="L3" class="hl"' in html and 'id="L4"' in html and 'id="L5"' not in html


def test_before_the_first_turn_the_base_commit_is_shown(workspace, client, inline_jobs):
    assert not workspace.tree
    html = view(client, workspace, "src/app.py", "1").content.decode()
    assert '<tr id="L1" class="hl"' in html and "main" in html
