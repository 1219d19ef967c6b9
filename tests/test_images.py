"""Sandbox images (assistant/images.py): a small Debian image built once with mmdebstrap (the
session fixture ``sandbox_image``, cached across runs), the sandbox running in it with all its
protections, a missing image failing in words, list/remove, the repository's choice of image and
the tools running in it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from assistant import agent, images, repos, sandbox, tools
from assistant.models import Repository
from assistant.sandbox import SandboxError, SandboxLimits, run_sync
from assistant.tools import ToolContext
from tests.test_repos import GIT_ENV

FAST = SandboxLimits(wall_seconds=60)
HOST_ONLY = "/usr/bin/chromium"  # the browser tests' Chromium: on the host, never in an image

pytestmark = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)


@pytest.fixture
def image(sandbox_image, settings) -> str:
    """The small image, found where images are looked up."""
    base, name = sandbox_image
    settings.SANDBOX_IMAGES_DIR = base
    return name


@pytest.fixture
def fake_images(settings, tmp_path) -> Path:
    """An images folder with one fake image (a manifest and an empty /usr): no build needed."""
    base = tmp_path / "images"
    (base / "tiny" / "root" / "usr").mkdir(parents=True)
    manifest = {
        "packages": ["python3", "git"],
        "suite": "bookworm",
        "built_at": "2026-12-01T10:00:00+00:00",
        "size_bytes": 123_000_000,
    }
    (base / "tiny" / "manifest.json").write_text(json.dumps(manifest))
    settings.SANDBOX_IMAGES_DIR = base
    return base


def sh(script: str, wt: Path, **kw) -> sandbox.SandboxResult:
    return run_sync(["sh", "-c", script], worktree=wt, limits=FAST, **kw)


# --- The sandbox in an image --------------------------------------------------------------------


def test_python_and_venv_work_in_the_image(image, worktree):
    r = sh("python -c 'print(1)' && python -m venv .venv && .venv/bin/python -c 'print(2)'",
           worktree, image=image)  # fmt: skip
    assert r.ok, r
    assert r.stdout == "1\n2\n"
    # The venv is in the workspace (read-write), and the server sees it.
    assert (worktree / ".venv" / "bin" / "python").is_symlink()


def test_the_image_replaces_the_hosts_system(image, worktree):
    assert Path(HOST_ONLY).exists(), "the test needs a host-only binary (Chromium)"
    probe = f"test -e {HOST_ONLY} && echo visible || echo absent; cat /etc/debian_version"
    on_host = sh(probe, worktree)
    in_image = sh(probe, worktree, image=image)
    assert on_host.ok and on_host.stdout.startswith("visible"), on_host
    assert in_image.ok and in_image.stdout.startswith("absent\n"), in_image


def test_the_image_keeps_the_sandbox_protections(image, worktree):
    script = (
        "echo written > made-inside.txt && "
        "echo home > $HOME/x && cat $HOME/x && echo $HOME && "
        "env | sort && "
        "grep -c . /etc/passwd; test -e /etc/shadow && echo SHADOW; "
        "touch /usr/bin/x 2>/dev/null && echo USR-WRITABLE; "
        "python -c 'import socket; socket.create_connection((\"127.0.0.1\", 5432), 2)' "
        "2>&1 | tail -1"
    )
    r = sh(script, worktree, image=image)
    assert (worktree / "made-inside.txt").read_text() == "written\n"
    lines = r.stdout.splitlines()
    assert lines[:2] == ["home", "/tmp"], r
    env = dict(line.split("=", 1) for line in lines if "=" in line and line.isascii())
    shell_own = {"PWD", "OLDPWD", "SHLVL", "_"}  # what sh itself sets
    assert set(env) - shell_own == {
        "HOME", "LANG", "LOGNAME", "PATH", "PYTHONDONTWRITEBYTECODE", "TERM", "TMPDIR", "USER",
    }, env  # fmt: skip
    assert "DATABASE_URL" not in r.stdout and "REDIS_URL" not in r.stdout
    assert "SHADOW" not in r.stdout and "USR-WRITABLE" not in r.stdout
    passwd = sh("cat /etc/passwd", worktree, image=image).stdout
    assert "sandbox:x:" in passwd and len(passwd.splitlines()) <= 3  # the stub, not the image's
    # No network: not even the server's loopback, where PostgreSQL listens.
    assert lines[-1].startswith(("ConnectionRefusedError", "OSError")), r


def test_a_missing_image_is_refused_in_words_and_nothing_runs(settings, tmp_path, worktree):
    settings.SANDBOX_IMAGES_DIR = tmp_path / "no-images"
    sentence = (
        "the sandbox image 'node' is not built on this worker: "
        "run manage.py sandboximage build node"
    )
    with pytest.raises(SandboxError) as exc:
        sh("touch ran", worktree, image="node")
    assert str(exc.value) == sentence
    assert not (worktree / "ran").exists()
    # Through the tools: a result the model (and the person) reads, never the host's system.
    ctx = ToolContext(tree=worktree, limits=FAST, image="node")
    r = asyncio.run(tools.execute("run_command", {"command": "touch ran"}, ctx))
    assert not r.ok and r.output == f"The run_command tool could not run: {sentence}"
    r = asyncio.run(tools.execute("read_file", {"path": "README.md"}, ctx))
    assert not r.ok and sentence in r.output
    assert not (worktree / "ran").exists()


def test_tools_run_in_the_repositorys_image(image, worktree):
    ctx = ToolContext(tree=worktree, limits=FAST, image=image)
    r = asyncio.run(
        tools.execute("run_command", {"command": f"python -c 'print(1)'; ls {HOST_ONLY}"}, ctx)
    )
    assert not r.ok and r.output.startswith("1\n") and "No such file" in r.output, r
    # The file tools' helper (python3) and grep (ripgrep) run in it too.
    r = asyncio.run(tools.execute("grep", {"pattern": "hello"}, ctx))
    assert r.ok and r.output == "README.md:1:hello from the repo", r
    r = asyncio.run(tools.execute("list_files", {"pattern": "*"}, ctx))
    assert r.ok and r.output == "README.md", r


@pytest.mark.django_db
def test_the_agent_uses_the_repositorys_image(image, settings, alice, team, conversation):
    parent = Path(tempfile.mkdtemp(prefix="tandem-images-agent-"))
    parent.chmod(0o711)
    try:
        settings.REPOS_ROOT = parent / "repos"
        origin = parent / "origin"
        origin.mkdir()
        env = {**os.environ, **GIT_ENV}
        (origin / "app.py").write_text("print('hi')\n")
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "Init"]):
            subprocess.run(["git", *args], cwd=origin, env=env, check=True, capture_output=True)
        repo = Repository.objects.create(
            team=team, name="demo", url=str(origin), sandbox_image=image
        )
        workspace = repos.create_workspace(conversation=conversation, repo=repo, branch="")
        ctx = agent._tool_context(workspace)
        assert ctx.image == image
        # The conversation header says which image its commands run in.
        client = Client()
        client.force_login(alice)
        page = client.get(f"/t/acme/c/{conversation.uuid}/").content.decode()
        assert re.search(rf'data-testid="sandbox-image"[^>]*>image: {image}</span>', page)
        command = f"python app.py && git log --oneline | wc -l; test -e {HOST_ONLY} || echo no"
        r = asyncio.run(tools.execute("run_command", {"command": command}, ctx))
        assert r.ok and r.output == "hi\n1\nno\n", r
    finally:
        shutil.rmtree(parent)


# --- Managing images ----------------------------------------------------------------------------


def test_list_shows_host_and_the_images_on_disk(fake_images, capsys):
    call_command("sandboximage", "list")
    out = capsys.readouterr().out
    assert images.HOST_LABEL in out
    row = next(line for line in out.splitlines() if line.startswith("tiny"))
    assert "123 MB" in row and "2026-12-01T10:00:00+00:00" in row and "python3,git" in row
    names = [image.name for image in images.available()]
    assert names == ["host", "tiny"]


def test_remove_takes_an_image_away(fake_images, capsys):
    call_command("sandboximage", "remove", "tiny")
    assert "Removed tiny." in capsys.readouterr().out
    assert [p.name for p in fake_images.iterdir()] == []
    with pytest.raises(CommandError, match="there is no sandbox image 'tiny'"):
        call_command("sandboximage", "remove", "tiny")
    with pytest.raises(CommandError, match="cannot be removed"):
        call_command("sandboximage", "remove", "host")
    with pytest.raises(CommandError, match="not a valid image name"):
        call_command("sandboximage", "remove", "../etc")


def test_build_says_in_one_line_what_is_missing(fake_images, monkeypatch):
    with pytest.raises(CommandError, match="give the image another name"):
        call_command("sandboximage", "build", "host")
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(CommandError, match=r"^cannot build sandbox images: mmdebstrap is not"):
        call_command("sandboximage", "build", "x")
    monkeypatch.undo()
    monkeypatch.setattr(images.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(images.os, "geteuid", lambda: 1000)
    with pytest.raises(CommandError, match=r"^cannot build sandbox images: this needs root"):
        call_command("sandboximage", "build", "x")


def test_the_machines_apt_sources_are_used_for_the_suite(monkeypatch, tmp_path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
    )
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n"
    )
    (d / "vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.example/node\nSuites: nodistro\nComponents: main\n"
    )
    (d / "old.list.disabled").write_text("deb http://elsewhere.example/x bookworm main\n")
    monkeypatch.setattr(images, "SOURCES", tmp_path / "sources.list")
    monkeypatch.setattr(images, "SOURCES_D", d)
    monkeypatch.setattr(images, "_host_codename", lambda: "bookworm")
    key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    assert images.host_sources("trixie") == [
        "deb [arch=amd64] http://mirror.example/debian trixie main contrib",
        f"deb {key}http://mirror.example/debian trixie main",
        f"deb {key}http://mirror.example/debian trixie-updates main",
        "deb http://mirror.example/debian-security trixie-security main",
    ]


# --- Choosing a repository's image --------------------------------------------------------------


@pytest.mark.django_db
def test_the_repository_form_offers_the_images_and_saves_the_choice(alice, team, fake_images):
    repo = Repository.objects.create(team=team, name="demo", url="/tmp/x")
    assert repo.sandbox_image == "host"  # SANDBOX_DEFAULT_IMAGE
    client = Client()
    client.force_login(alice)
    page = client.get("/t/acme/repos/").content.decode()
    assert '<option value="tiny">tiny</option>' in page
    assert "host — development only: the server&#x27;s own system" in page
    choose = {"repository": repo.uuid, "sandbox_image": "tiny"}
    response = client.post("/t/acme/repos/image/", choose)
    assert response.status_code == 302
    repo.refresh_from_db()
    assert repo.sandbox_image == "tiny"
    page = client.get("/t/acme/repos/").content.decode()
    assert '<option value="tiny" selected>tiny</option>' in page
    # Only images built here; nothing changes otherwise.
    response = client.post(
        "/t/acme/repos/image/", {"repository": repo.uuid, "sandbox_image": "nope"}, follow=True
    )
    assert "There is no sandbox image “nope” on this machine." in response.content.decode()
    repo.refresh_from_db()
    assert repo.sandbox_image == "tiny"
    # The add form offers them too.
    origin = fake_images.parent / "origin"
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    add = {"name": "other", "url": str(origin), "auth": "none", "sandbox_image": "nope"}
    assert client.post("/t/acme/repos/", add).status_code == 422
    response = client.post("/t/acme/repos/", {**add, "sandbox_image": "tiny"})
    assert response.status_code == 302
    assert Repository.objects.get(team=team, name="other").sandbox_image == "tiny"


@pytest.mark.django_db
def test_members_cannot_choose_the_image(bob, team, fake_images):
    repo = Repository.objects.create(team=team, name="demo", url="/tmp/x")
    client = Client()
    client.force_login(bob)
    choose = {"repository": repo.uuid, "sandbox_image": "tiny"}
    response = client.post("/t/acme/repos/image/", choose)
    assert response.status_code == 404
    repo.refresh_from_db()
    assert repo.sandbox_image == "host"


@pytest.mark.django_db
def test_the_default_image_comes_from_the_setting(settings, team, fake_images):
    settings.SANDBOX_DEFAULT_IMAGE = "tiny"
    assert Repository.objects.create(team=team, name="d", url="/tmp/x").sandbox_image == "tiny"


def test_the_start_up_check_warns_when_the_default_image_is_not_built(settings, fake_images):
    from assistant import checks

    settings.SANDBOX_DEFAULT_IMAGE = "tiny"
    assert "tandem.W003" not in {w.id for w in checks.sandbox_limits()}
    settings.SANDBOX_DEFAULT_IMAGE = "node"
    found = {w.id: w.msg for w in checks.sandbox_limits()}
    assert "the sandbox image 'node' is not built on this worker" in found["tandem.W003"]
