"""Repositories: mirrors, per-conversation workspaces and git run safely on hostile trees.

Every remote here is a repository the test makes: a local path, a file:// URL, an HTTPS server
(git http-backend behind TLS) that wants a token, and "ssh" through a stand-in ssh that runs the
remote command locally."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shlex
import subprocess
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from assistant import repos
from assistant.models import RepoAuth, Repository, Workspace
from assistant.repos import RepoError
from assistant.services import conversation_create

pytestmark = pytest.mark.django_db

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Origin Author",
    "GIT_AUTHOR_EMAIL": "origin@example.com",
    "GIT_COMMITTER_NAME": "Origin Author",
    "GIT_COMMITTER_EMAIL": "origin@example.com",
}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
TOKEN = "ghp_S3cretT0kenThatMustNeverLand"


def git(cwd: Path, *args: str, input: bytes | None = None, check: bool = True) -> str:
    """Plain git, as a person would run it (no hardening): for setting up and checking."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        input=input,
        capture_output=True,
        check=False,
    )
    if check and result.returncode:
        raise AssertionError(f"git {args} failed: {result.stderr.decode()}")
    return result.stdout.decode("utf-8", "replace")


@pytest.fixture
def root(settings, tmp_path) -> Path:
    settings.REPOS_ROOT = tmp_path / "repos"
    return settings.REPOS_ROOT


@pytest.fixture
def origin(tmp_path) -> Path:
    """A repository with a README, a few files, a binary, and branches main and feature."""
    path = tmp_path / "origin"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# Demo\n\nA small project.\n")
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("def main():\n    return 1\n")
    (path / "src" / "util.py").write_text("def helper():\n    return 'help'\n")
    (path / "logo.png").write_bytes(PNG)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial commit")
    git(path, "checkout", "-qb", "feature")
    (path / "FEATURE.md").write_text("A feature in progress.\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Start a feature")
    git(path, "checkout", "-q", "main")
    return path


@pytest.fixture
def repo(team, origin, root) -> Repository:
    return Repository.objects.create(team=team, name="demo", url=str(origin))


@pytest.fixture
def workspace(conversation, repo) -> Workspace:
    return repos.create_workspace(conversation=conversation, repo=repo, branch="main")


def tree(ws: Workspace) -> Path:
    return repos.workspace_path(workspace=ws)


def files_of(path: Path) -> dict[str, bytes]:
    """Every file under path except .git, as bytes; symlinks as their target."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(path)):
        dirnames[:] = [d for d in dirnames if d != b".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(full, os.fsencode(path)))
            if os.path.islink(full):
                found[rel] = os.readlink(full)
            else:
                with open(full, "rb") as fh:
                    found[rel] = fh.read()
    return found


# --- Mirrors ---------------------------------------------------------------------------------


def test_it_mirrors_a_local_path_and_records_the_fetch(repo, origin):
    path = repos.ensure_mirror(repo=repo)

    assert path == repos.mirror_path(repo=repo) and (path / "HEAD").exists()
    repo.refresh_from_db()
    assert repo.last_fetched is not None and repo.last_fetch_error == ""
    assert repos.branches(repo=repo) == ["main", "feature"]
    assert repos.default_branch(repo=repo) == "main"

    # Upstream moves on and deletes a branch: the next fetch follows, pruning included.
    (origin / "NEWS.md").write_text("news\n")
    git(origin, "add", "-A")
    git(origin, "commit", "-qm", "News")
    git(origin, "branch", "-qD", "feature")
    first = repo.last_fetched
    repos.ensure_mirror(repo=repo)
    repo.refresh_from_db()
    assert repo.last_fetched > first
    assert repos.branches(repo=repo) == ["main"]
    assert git(path, "log", "-1", "--format=%s", "main").strip() == "News"


def test_it_mirrors_a_file_url_and_follows_the_remote_default(team, origin, root):
    git(origin, "symbolic-ref", "HEAD", "refs/heads/feature")
    repo = Repository.objects.create(team=team, name="demo", url=f"file://{origin}")

    repos.ensure_mirror(repo=repo)

    assert repos.branches(repo=repo) == ["feature", "main"]
    repo.default_branch = "main"
    assert repos.branches(repo=repo) == ["main", "feature"]


def test_a_bad_address_is_recorded_on_the_row_in_words(team, root, tmp_path):
    repo = Repository.objects.create(team=team, name="gone", url=str(tmp_path / "nowhere"))

    with pytest.raises(RepoError) as caught:
        repos.ensure_mirror(repo=repo)

    message = "Reaching the repository failed: no git repository was found at this address."
    assert str(caught.value) == message
    repo.refresh_from_db()
    assert repo.last_fetch_error == message and repo.last_fetched is None
    assert not repos.mirror_path(repo=repo).exists()  # no half-made mirror left behind
    assert repos.branches(repo=repo) == []


def test_an_unreachable_https_remote_is_a_readable_error(team, root):
    from tests.conftest import free_port

    url = f"https://127.0.0.1:{free_port()}/demo.git"
    repo = Repository.objects.create(team=team, name="down", url=url)

    with pytest.raises(RepoError, match="could not be reached"):
        repos.ensure_mirror(repo=repo)
    repo.refresh_from_db()
    assert "could not be reached" in repo.last_fetch_error


def test_a_good_fetch_clears_the_last_error(repo, origin):
    repo.url = "/nonexistent/repo"
    with pytest.raises(RepoError):
        repos.ensure_mirror(repo=repo)
    repo.url = str(origin)
    repos.ensure_mirror(repo=repo)
    repo.refresh_from_db()
    assert repo.last_fetch_error == "" and repo.last_fetched is not None


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "git@host:ext::sh",
        "fd::3",
        "git://example.com/repo.git",
        "http://example.com/repo.git",
        "https://user:secret@example.com/repo.git",
        "ssh://-oProxyCommand=touch%20x/repo",
        "-u/tmp/x",
        "relative/path",
        "",
    ],
)
def test_it_refuses_addresses_that_run_commands_or_hold_secrets(url, root):
    with pytest.raises(RepoError):
        repos.validate_url(url)


def test_a_local_path_cannot_reach_into_tandems_own_data(repo, team, root, settings):
    repos.ensure_mirror(repo=repo)
    for url in (str(repos.mirror_path(repo=repo)), f"file://{root}", str(settings.DATA_DIR)):
        with pytest.raises(RepoError, match="Tandem's own data"):
            repos.validate_url(url)
    sneaky = Repository(team=team, name="sneaky", url=str(repos.mirror_path(repo=repo)))
    with pytest.raises(Exception, match="Tandem's own data"):
        sneaky.full_clean()


def test_local_paths_can_be_limited_to_listed_directories(settings, origin, tmp_path, root):
    settings.REPOS_LOCAL_ROOTS = [str(tmp_path / "allowed")]
    with pytest.raises(RepoError, match="must be under"):
        repos.validate_url(str(origin))
    settings.REPOS_LOCAL_ROOTS = [str(tmp_path)]
    assert repos.validate_url(f" file://{origin} ") == f"file://{origin}"


def test_git_itself_refuses_the_ext_transport(team, root, tmp_path):
    marker = tmp_path / "pwned-ext"
    # Past validation (a row written some other way): git's own protocol rules still hold.
    with pytest.raises(RepoError, match="not allowed"):
        repos._git("ls-remote", f"ext::sh -c touch% {marker}", doing="Reaching")
    repo = Repository.objects.create(team=team, name="x", url=f"ext::sh -c touch% {marker}")
    with pytest.raises(RepoError):
        repos.ensure_mirror(repo=repo)
    assert not marker.exists()


# --- Workspaces ------------------------------------------------------------------------------


def test_a_workspace_is_a_checkout_on_its_own_work_branch(workspace, conversation, repo):
    assert conversation.workspace == workspace
    assert workspace.work_branch == f"tandem/{conversation.uuid.hex[:8]}"
    assert workspace.base_commit == git(repos.mirror_path(repo=repo), "rev-parse", "main").strip()
    assert (tree(workspace) / "src" / "app.py").read_text() == "def main():\n    return 1\n"
    # The git directory lives beside the tree; the sandbox's mount point for it stays empty.
    planted = tree(workspace) / ".git"
    assert not planted.exists() or (planted.is_dir() and not any(planted.iterdir()))
    assert repos.status(workspace=workspace) == []
    assert repos.diff(workspace=workspace) == ""
    assert repos.head(workspace=workspace) == workspace.base_commit


def test_a_workspace_can_start_from_another_branch(conversation, repo):
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="feature")
    assert (tree(ws) / "FEATURE.md").exists()


def test_a_missing_branch_or_another_teams_repo_is_refused(conversation, repo, other_team, root):
    with pytest.raises(RepoError, match="no branch “nope”"):
        repos.create_workspace(conversation=conversation, repo=repo, branch="nope")
    with pytest.raises(RepoError):
        repos.create_workspace(conversation=conversation, repo=repo, branch="-x")
    theirs = Repository.objects.create(team=other_team, name="theirs", url=str(repo.url))
    with pytest.raises(RepoError, match="another team"):
        repos.create_workspace(conversation=conversation, repo=theirs, branch="main")
    assert not Workspace.objects.exists()
    assert list(root.glob("*/*/workspaces/*")) == []  # failed attempts leave nothing


def test_a_conversation_has_one_workspace(workspace, conversation, repo):
    with pytest.raises(RepoError, match="already works on a repository"):
        repos.create_workspace(conversation=conversation, repo=repo, branch="main")


def test_two_workspaces_never_see_each_others_edits(workspace, team, alice, repo):
    other = repos.create_workspace(
        conversation=conversation_create(team=team, author=alice, title="Second"),
        repo=repo,
        branch="main",
    )
    (tree(workspace) / "README.md").write_text("changed by the first\n")
    (tree(workspace) / "only-first.txt").write_text("mine\n")
    first_commit = repos.commit_all(
        workspace=workspace, message="First", author_name="A", author_email="a@example.com"
    )

    assert (tree(other) / "README.md").read_text() == "# Demo\n\nA small project.\n"
    assert not (tree(other) / "only-first.txt").exists()
    assert repos.diff(workspace=other) == "" and repos.status(workspace=other) == []
    other_objects = repos.git_dir(workspace=other)
    assert git(other_objects, "cat-file", "-t", first_commit, check=False) == ""

    # Deleting the first leaves the second whole.
    repos.remove_workspace(workspace=workspace)
    assert not tree(workspace).exists() and not repos.git_dir(workspace=workspace).exists()
    (tree(other) / "src" / "app.py").write_text("def main():\n    return 2\n")
    repos.commit_all(workspace=other, message="Second", author_name="B", author_email="b@x.org")
    git(repos.git_dir(workspace=other), "fsck", "--no-dangling", "--no-progress")


def test_diff_shows_an_edit_a_new_file_and_a_deletion(workspace):
    (tree(workspace) / "src" / "app.py").write_text("def main():\n    return 42\n")
    (tree(workspace) / "src" / "new_module.py").write_text("VALUE = 'fresh'\n")
    (tree(workspace) / "src" / "util.py").unlink()

    text = repos.diff(workspace=workspace)

    assert "--- a/src/app.py\n+++ b/src/app.py" in text
    assert "-    return 1\n+    return 42" in text
    assert "new file mode 100644\n" in text and "+VALUE = 'fresh'" in text
    assert "deleted file mode 100644\n" in text and "-    return 'help'" in text
    codes = {entry.path: entry.code for entry in repos.status(workspace=workspace)}
    assert codes == {"src/app.py": " M", "src/new_module.py": "??", "src/util.py": " D"}
    # The real index is untouched: an untracked file is still untracked after the diff.
    assert git(repos.git_dir(workspace=workspace), "ls-files", "--", "src/new_module.py") == ""


def test_diff_since_a_turn_shows_only_that_turn(workspace):
    (tree(workspace) / "README.md").write_text("turn one\n")
    turn_one = repos.commit_all(
        workspace=workspace, message="Turn 1", author_name="A", author_email="a@example.com"
    )
    (tree(workspace) / "src" / "app.py").write_text("turn two\n")

    text = repos.diff(workspace=workspace, since=turn_one)

    assert "src/app.py" in text and "README.md" not in text
    assert "README.md" in repos.diff(workspace=workspace)  # since the base: both turns


def test_binary_changes_diff_as_binary_patches(workspace):
    (tree(workspace) / "logo.png").write_bytes(PNG[::-1])
    text = repos.diff(workspace=workspace)
    assert "GIT binary patch" in text


def test_undo_to_puts_everything_back(workspace):
    before = files_of(tree(workspace))
    turn_start = repos.commit_all(
        workspace=workspace, message="Start", author_name="A", author_email="a@example.com"
    )
    (tree(workspace) / "README.md").write_text("rewritten\n")
    (tree(workspace) / "src" / "util.py").unlink()
    (tree(workspace) / "scratch" / "deep").mkdir(parents=True)
    (tree(workspace) / "scratch" / "deep" / "notes.txt").write_text("temp\n")
    repos.commit_all(workspace=workspace, message="Turn", author_name="A", author_email="a@x.io")
    (tree(workspace) / "uncommitted.txt").write_text("also goes\n")

    repos.undo_to(workspace=workspace, commit=turn_start)

    assert files_of(tree(workspace)) == before
    assert repos.head(workspace=workspace) == turn_start
    assert repos.status(workspace=workspace) == []


def test_undo_refuses_what_is_not_a_commit_of_the_workspace(workspace):
    for bad in ("HEAD~1", "--hard", "0" * 40):
        with pytest.raises(RepoError):
            repos.undo_to(workspace=workspace, commit=bad)


def test_commit_all_is_authored_by_the_person_who_asked(workspace):
    (tree(workspace) / "src" / "app.py").write_text("def main():\n    return 3\n")
    (tree(workspace) / "added.txt").write_text("new\n")

    sha = repos.commit_all(
        workspace=workspace,
        message="Return three\n\nAsked in Tandem.",
        author_name="Alice Liddell",
        author_email="alice@example.com",
    )

    gd = repos.git_dir(workspace=workspace)
    shown = git(gd, "show", "-s", "--format=%an <%ae>|%cn|%s|%b", sha)
    assert (
        shown.strip()
        == "Alice Liddell <alice@example.com>|Alice Liddell|Return three|Asked in Tandem."
    )
    assert git(gd, "rev-parse", workspace.work_branch).strip() == sha
    assert git(gd, "rev-parse", f"{sha}^").strip() == workspace.base_commit
    assert set(git(gd, "show", "--name-only", "--format=", sha).split()) == {
        "added.txt",
        "src/app.py",
    }
    assert repos.status(workspace=workspace) == []
    # Nothing new to commit: the same HEAD back, no empty commit.
    again = repos.commit_all(
        workspace=workspace, message="x", author_name="A", author_email="a@b.c"
    )
    assert again == sha


def test_the_patch_applies_cleanly_to_a_fresh_clone(workspace, origin, tmp_path):
    (tree(workspace) / "src" / "app.py").write_text("def main():\n    return 'patched'\n")
    (tree(workspace) / "src" / "util.py").unlink()
    (tree(workspace) / "docs").mkdir()
    (tree(workspace) / "docs" / "guide.md").write_text("# Guide\n")
    (tree(workspace) / "logo.png").write_bytes(PNG[::-1])
    (tree(workspace) / "icon.bin").write_bytes(bytes(range(255, -1, -1)) * 4)
    repos.commit_all(workspace=workspace, message="Half", author_name="A", author_email="a@x.io")
    (tree(workspace) / "README.md").write_text("# Demo\n\nPatched, uncommitted.\n")

    data = repos.patch(workspace=workspace)

    assert isinstance(data, bytes)
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(fresh))
    git(fresh, "apply", "--check", "-", input=data)
    git(fresh, "apply", "-", input=data)
    assert files_of(fresh) == files_of(tree(workspace))


def test_push_to_a_branch_of_a_local_bare_remote(conversation, team, origin, tmp_path, root):
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(remote))
    repo = Repository.objects.create(team=team, name="remote", url=str(remote))
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    (tree(ws) / "README.md").write_text("pushed\n")
    sha = repos.commit_all(
        workspace=ws, message="Push me", author_name="Bob", author_email="bob@example.com"
    )

    assert repos.push(workspace=ws, remote_branch="tandem/readme") == sha

    assert git(remote, "rev-parse", "refs/heads/tandem/readme").strip() == sha
    assert git(remote, "log", "-1", "--format=%an", "tandem/readme").strip() == "Bob"
    # Never forced: a branch with other commits is refused in words.
    with pytest.raises(RepoError, match="pick a new name"):
        repos.push(workspace=ws, remote_branch="feature")
    with pytest.raises(RepoError):
        repos.push(workspace=ws, remote_branch="bad..name")


# --- Credentials -----------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_remote(tmp_path, origin, monkeypatch):
    """git http-backend behind TLS on 127.0.0.1, answering only Basic x-access-token:TOKEN."""
    import ssl

    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(served / "demo.git"))
    expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ.get("HTTP_AUTHORIZATION", ""))
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b""]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        cgi = {"GIT_PROJECT_ROOT": str(served), "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "ci"}
        cgi |= {"PATH": os.environ["PATH"], **GIT_ENV, "CONTENT_LENGTH": str(len(body))}
        for key in ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE"):
            cgi[key] = environ.get(key, "")
        for key in ("HTTP_CONTENT_ENCODING", "HTTP_GIT_PROTOCOL"):
            if key in environ:
                cgi[key] = environ[key]
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi, capture_output=True, check=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [tuple(line.split(": ", 1)) for line in head.decode().split("\r\n")]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [payload]

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("GIT_SSL_CAINFO", str(cert))  # the operator's CA setting passes through
    yield f"https://127.0.0.1:{server.server_port}/demo.git", served / "demo.git", seen
    server.shutdown()
    server.server_close()


def test_an_https_token_works_and_never_lands_on_disk(https_remote, team, conversation, root):
    url, served, seen = https_remote
    repo = Repository(team=team, name="https", url=url, auth=RepoAuth.HTTPS_TOKEN)
    repo.credential = TOKEN
    repo.save()

    repos.ensure_mirror(repo=repo)
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    (tree(ws) / "README.md").write_text("over https\n")
    sha = repos.commit_all(workspace=ws, message="Via https", author_name="A", author_email="a@b.c")
    repos.push(workspace=ws, remote_branch="tandem/https")

    assert git(served, "rev-parse", "refs/heads/tandem/https").strip() == sha
    repo.credential = f"x-access-token:{TOKEN}"  # the "username:token" form
    repo.save()
    repos.ensure_mirror(repo=repo)
    assert seen and all(header.startswith("Basic ") for header in seen)
    repo.refresh_from_db()
    assert repo.url == url and repo.credential == f"x-access-token:{TOKEN}"
    assert TOKEN not in repo.credential_encrypted
    basic = base64.b64encode(f"x-access-token:{TOKEN}".encode())
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            assert TOKEN.encode() not in content and basic not in content, path


def test_a_wrong_https_token_is_a_readable_error(https_remote, team, root):
    url, _, _ = https_remote
    repo = Repository(team=team, name="https", url=url, auth=RepoAuth.HTTPS_TOKEN)
    repo.credential = f"x-access-token:{TOKEN}-wrong"
    repo.save()
    with pytest.raises(RepoError, match="refused the token"):
        repos.ensure_mirror(repo=repo)
    repo.auth = RepoAuth.NONE
    with pytest.raises(RepoError, match="asked for credentials"):
        repos.ensure_mirror(repo=repo)
    repo.refresh_from_db()
    assert repo.last_fetch_error.endswith("the remote asked for credentials; add a token or a key.")


FAKE_SSH = """#!/bin/sh
# Stands in for ssh: notes the key it was given, then runs the remote command here.
key=""
prev=""
for arg in "$@"; do
  case "$prev" in -o) case "$arg" in IdentityFile=*) key="${arg#IdentityFile=}";; esac;; esac
  prev="$arg"
done
key=$(printf %s "$key" | tr -d '"')
echo "args: $*" >> LOG
echo "key: $key" >> LOG
echo "mode: $(stat -c %a "$key")" >> LOG
echo "content: $(head -c 40 "$key")" >> LOG
echo "env: $(env | grep -c -e FAKE_SSH -e DJANGO -e DATABASE_URL)" >> LOG
for last; do :; done
exec sh -c "$last"
"""


def test_an_ssh_deploy_key_is_used_for_one_command_then_deleted(
    team, conversation, origin, tmp_path, root, monkeypatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh.log"
    (bin_dir / "ssh").write_text(FAKE_SSH.replace("LOG", shlex.quote(str(log))))
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_SECRET", "server environment")
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(remote))
    key = "\r\n".join(
        [
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "b3BlbnNzaC1rZXkt",
            "-----END OPENSSH PRIVATE KEY-----",
        ]
    )
    repo = Repository(
        team=team, name="ssh", url=f"git@git.example.invalid:{remote}", auth=RepoAuth.SSH_KEY
    )
    repo.credential = key
    repo.save()

    repos.ensure_mirror(repo=repo)
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    (tree(ws) / "README.md").write_text("over ssh\n")
    sha = repos.commit_all(workspace=ws, message="Via ssh", author_name="A", author_email="a@b.c")
    repos.push(workspace=ws, remote_branch="tandem/ssh")

    assert git(remote, "rev-parse", "refs/heads/tandem/ssh").strip() == sha
    lines = log.read_text().splitlines()
    keys = {line.split(": ", 1)[1] for line in lines if line.startswith("key: ")}
    assert len(keys) == 2  # the fetch (ls-remote and fetch) and the push: one key file each…
    assert all(not Path(path).exists() for path in keys)  # …deleted afterwards
    assert {line for line in lines if line.startswith("mode: ")} == {"mode: 600"}
    assert all("BEGIN OPENSSH" in line for line in lines if line.startswith("content: "))
    assert {line for line in lines if line.startswith("env: ")} == {"env: 0"}  # a clean env
    args = next(line for line in lines if line.startswith("args: "))
    for option in ("-F /dev/null", "IdentitiesOnly=yes", "StrictHostKeyChecking=accept-new"):
        assert option in args
    assert "b3BlbnNzaC1rZXkt" not in "".join(
        p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()
    )


# --- Hostile trees ---------------------------------------------------------------------------


def _plant(config: Path, markers: Path) -> None:
    """Config that runs a command at every turn git gives it."""
    with config.open("a") as fh:
        fh.write(
            f"[core]\n\tfsmonitor = touch {markers}/pwned-fsmonitor #\n"
            f"\tpager = touch {markers}/pwned-pager #\n"
            f"\thooksPath = {config.parent / 'hooks'}\n"
            f"\taskPass = touch {markers}/pwned-askpass #\n"
            f"[diff]\n\texternal = touch {markers}/pwned-external #\n"
            f'[diff "evil"]\n\ttextconv = touch {markers}/pwned-textconv #\n'
            f"\tcommand = touch {markers}/pwned-diffcommand #\n"
            f'[filter "evil"]\n\tclean = touch {markers}/pwned-clean #\n'
            f"\tsmudge = touch {markers}/pwned-smudge #\n"
            f"[commit]\n\tgpgSign = true\n"
            f"[gpg]\n\tprogram = touch {markers}/pwned-gpg #\n"
            f"[credential]\n\thelper = !touch {markers}/pwned-credential #\n"
        )
    hooks = config.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-commit", "post-commit", "reference-transaction", "post-checkout", "pre-push"):
        (hooks / hook).write_text(f"#!/bin/sh\ntouch {markers}/pwned-hook-{hook}\n")
        (hooks / hook).chmod(0o755)


def test_hostile_config_hooks_and_attributes_run_nothing(workspace, tmp_path, team, origin):
    markers = tmp_path / "markers"
    markers.mkdir()
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(origin), str(remote))
    work = tree(workspace)
    gd = repos.git_dir(workspace=workspace)
    # What the agent can plant: a .git in the tree, attributes naming drivers, a nested repo.
    (work / ".git").mkdir(exist_ok=True)  # (the sandbox's mount point for the git directory)
    (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    _plant(work / ".git" / "config", markers)
    (work / ".gitattributes").write_text("* diff=evil filter=evil\n")
    nested = work / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    (nested / "x.txt").write_text("x\n")
    git(nested, "add", "-A")
    git(nested, "commit", "-qm", "nested")
    _plant(nested / ".git" / "config", markers)
    # And, as if the sandbox had leaked, the same in the server's own git directory.
    _plant(gd / "config", markers)
    with (gd / "config").open("a") as fh:
        fh.write(f'[url "{tmp_path}/elsewhere.git"]\n\tinsteadOf = {remote}\n')
        fh.write(f'[remote "{remote}"]\n\treceivepack = touch {markers}/pwned-receivepack #\n')
    (work / "README.md").write_text("edited\n")
    (work / "src" / "app.py").write_text("print('changed')\n")

    repos.status(workspace=workspace)
    repos.diff(workspace=workspace)
    repos.patch(workspace=workspace)
    first = repos.commit_all(
        workspace=workspace, message="m", author_name="A", author_email="a@b.c"
    )
    (work / "README.md").write_text("again\n")
    repos.commit_all(workspace=workspace, message="n", author_name="A", author_email="a@b.c")
    repos.undo_to(workspace=workspace, commit=first)
    Repository.objects.filter(pk=workspace.repository.pk).update(url=str(remote))
    workspace.repository.url = str(remote)
    repos.push(workspace=workspace, remote_branch="tandem/hostile")

    assert sorted(p.name for p in markers.iterdir()) == []
    assert git(remote, "rev-parse", "tandem/hostile").strip() == first
    assert not (tmp_path / "elsewhere.git").exists()
    assert b"edited" in git(gd, "cat-file", "-p", f"{first}:README.md").encode()

    # Control: plain git on the same directories falls for all of it (once the attributes
    # override, which it would honour too, is gone).
    (gd / "info" / "attributes").unlink()
    plain = [f"--git-dir={gd}", f"--work-tree={work}"]
    (work / "README.md").write_text("plain\n")
    git(work, *plain, "status", check=False)
    git(work, *plain, "diff", check=False)
    git(work, *plain, "commit", "-qam", "plain", check=False)
    pwned = {p.name for p in markers.iterdir()}
    assert "pwned-diffcommand" in pwned  # (diff.external is what runs when no driver is named)
    assert {
        "pwned-fsmonitor",
        "pwned-clean",
        "pwned-smudge",
        "pwned-hook-pre-commit",
    } <= pwned


def test_a_planted_git_file_cannot_point_the_server_at_another_repository(
    workspace, other_team, tmp_path, root
):
    secret = tmp_path / "secret"
    secret.mkdir()
    git(secret, "init", "-q")
    (secret / "passwords.txt").write_text("hunter2-other-team\n")
    git(secret, "add", "-A")
    git(secret, "commit", "-qm", "secret")
    planted = tree(workspace) / ".git"
    if planted.is_dir():
        planted.rmdir()  # the sandbox's (empty) mount point; the agent itself cannot remove it
    planted.write_text(f"gitdir: {secret / '.git'}\n")
    (tree(workspace) / "README.md").write_text("mine\n")

    # The sandbox cannot mount the git directory over a file: refused, in words.
    for call in (repos.diff, repos.status, repos.patch):
        with pytest.raises(RepoError, match="a .git file or link of its own"):
            call(workspace=workspace)
    with pytest.raises(RepoError, match="a .git file or link of its own"):
        repos.commit_all(workspace=workspace, message="m", author_name="A", author_email="a@b.c")
    assert git(secret, "log", "--format=%s").split() == ["secret"]  # untouched
    planted.unlink()
    text = repos.diff(workspace=workspace)
    assert "hunter2" not in text and "passwords.txt" not in text and "+mine" in text
    assert [entry.path for entry in repos.status(workspace=workspace)] == ["README.md"]


def test_diff_external_and_textconv_in_config_do_not_run(workspace, tmp_path):
    marker = tmp_path / "pwned"
    gd = repos.git_dir(workspace=workspace)
    with (gd / "config").open("a") as fh:
        fh.write(f"[diff]\n\texternal = touch {marker}-external #\n")
        fh.write(f"[core]\n\tpager = touch {marker}-pager #\n")
    (tree(workspace) / "README.md").write_text("changed\n")

    assert "+changed" in repos.diff(workspace=workspace)
    assert not list(tmp_path.glob("pwned*"))
    git(tree(workspace), f"--git-dir={gd}", f"--work-tree={tree(workspace)}", "diff")
    assert list(tmp_path.glob("pwned*")) == [Path(f"{marker}-external")]  # the control


def test_odd_names_symlinks_and_an_odd_root_path(settings, tmp_path, conversation, team, origin):
    settings.REPOS_ROOT = tmp_path / 'repos dir ü\n\'-q "x"'
    repo = Repository.objects.create(team=team, name="demo", url=str(origin))
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    work = tree(ws)
    names = ["-rf", "--help", "new\nline.txt", "sp ace ü.md", 'quo"te\ttab']
    for name in names:
        (work / name).write_text(f"content of {name!r}\n")
    raw = os.path.join(os.fsencode(work), b"latin-\xe9.txt")
    Path(os.fsdecode(raw)).write_bytes(b"\xe9t\xe9\n")
    (work / "passwd-link").symlink_to("/etc/passwd")
    (work / "etc-dir").symlink_to("/etc")

    found = {entry.path: entry.code for entry in repos.status(workspace=ws)}
    assert set(found) == {*names, os.fsdecode(b"latin-\xe9.txt"), "passwd-link", "etc-dir"}
    assert set(found.values()) == {"??"}

    text = repos.diff(workspace=ws)
    assert '+++ "b/new\\nline.txt"' in text and '+++ "b/latin-\\351.txt"' in text
    assert "new file mode 120000" in text and "+/etc/passwd" in text
    assert "root:x:0:0" not in text  # links are diffed as links, never followed

    repos.commit_all(workspace=ws, message="Odd", author_name="A", author_email="a@b.c")
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", "-b", "main", str(origin), str(fresh))
    git(fresh, "apply", "-", input=repos.patch(workspace=ws))
    assert files_of(fresh) == files_of(work)
    assert os.readlink(fresh / "etc-dir") == "/etc"

    repos.undo_to(workspace=ws, commit=ws.base_commit)
    assert files_of(work) == files_of(origin)
    repos.remove_workspace(workspace=ws)
    assert not repos.git_dir(workspace=ws).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another uid")
def test_a_tree_owned_by_the_sandbox_uid_works_without_safe_directory(workspace):
    # The sandbox runs as `nobody` under a root server, so the tree ends up owned by another
    # uid: git's ownership check only guards discovery, and the server never discovers.
    (tree(workspace) / "made-in-sandbox.txt").write_text("hello\n")
    for path in [tree(workspace), *tree(workspace).rglob("*")]:
        os.lchown(path, 65534, 65534)

    assert [e.path for e in repos.status(workspace=workspace)] == ["made-in-sandbox.txt"]
    assert "+hello" in repos.diff(workspace=workspace)
    repos.commit_all(workspace=workspace, message="m", author_name="A", author_email="a@b.c")
    repos.undo_to(workspace=workspace, commit=workspace.base_commit)
    assert not (tree(workspace) / "made-in-sandbox.txt").exists()


def test_orphaned_directories_are_swept(workspace, repo, conversation, root):
    keep = repos.workspace_path(workspace=workspace)
    conversation.delete()  # cascades to the row; the files stay until the sweep

    assert repos.remove_orphans() == 0  # too young: could be one being created
    assert repos.remove_orphans(older_than=0) == 1
    assert not keep.exists() and repos.mirror_path(repo=repo).exists()
    repo.delete()
    assert repos.remove_orphans(older_than=0) == 1
    assert not repos.mirror_path(repo=repo).exists()


# --- Snapshots, per-turn diffs and undo --------------------------------------------------------


def test_a_snapshot_is_the_tree_on_disk_and_leaves_the_index_alone(workspace):
    gd = repos.git_dir(workspace=workspace)
    first = repos.snapshot(workspace=workspace)
    assert first == git(gd, "rev-parse", "HEAD^{tree}").strip()

    (tree(workspace) / "src" / "app.py").write_text("def main():\n    return 2\n")
    (tree(workspace) / "untracked.txt").write_text("new\n")
    second = repos.snapshot(workspace=workspace)

    assert second != first and repos.snapshot(workspace=workspace) == second
    assert git(gd, "cat-file", "-p", f"{second}:untracked.txt") == "new\n"
    codes = {entry.path: entry.code for entry in repos.status(workspace=workspace)}
    assert codes == {"src/app.py": " M", "untracked.txt": "??"}  # still untracked
    assert repos._snapshot(workspace) == second  # the old name still works


def test_diff_between_shows_one_turn_with_new_and_binary_files(workspace):
    before = repos.snapshot(workspace=workspace)
    (tree(workspace) / "src" / "app.py").write_text("def main():\n    return 42\n")
    (tree(workspace) / "notes").mkdir()
    (tree(workspace) / "notes" / "todo.md").write_text("- ship it\n")
    (tree(workspace) / "logo.png").write_bytes(PNG[::-1])
    (tree(workspace) / "data.bin").write_bytes(bytes(range(256)))
    after = repos.snapshot(workspace=workspace)
    (tree(workspace) / "README.md").write_text("a later edit, not in the turn\n")

    text = repos.diff_between(workspace=workspace, old=before, new=after)

    assert "-    return 1\n+    return 42" in text
    assert "+++ b/notes/todo.md" in text and "+- ship it" in text
    assert "diff --git a/logo.png b/logo.png" in text and "GIT binary patch" in text
    assert "new file mode 100644" in text and "b/data.bin" in text
    assert "README.md" not in text
    assert repos.diff_between(workspace=workspace, old=after, new=after) == ""
    backwards = repos.diff_between(workspace=workspace, old=after, new=before)
    assert "-    return 42\n+    return 1" in backwards and "deleted file mode" in backwards
    # A commit id stands for its tree: the base commit to a snapshot.
    since_base = repos.diff_between(workspace=workspace, old=workspace.base_commit, new=after)
    assert since_base == text


def test_diff_stat_counts_lines_and_names_every_kind_of_change(workspace):
    work = tree(workspace)
    before = repos.snapshot(workspace=workspace)
    (work / "src" / "app.py").write_text("def main():\n    return 42\n\n\nMORE = 1\n")
    (work / "src" / "util.py").unlink()
    (work / "new\nline\tname.txt").write_text("one\ntwo\nthree\n")
    (work / "logo.png").write_bytes(PNG[::-1])
    (work / "docs").mkdir()
    (work / "README.md").rename(work / "docs" / "README.md")  # unchanged: a pure rename
    (work / "link").symlink_to("src/app.py")
    after = repos.snapshot(workspace=workspace)

    stats = repos.diff_stat(workspace=workspace, old=before, new=after)

    assert sorted(stats, key=lambda s: s.path) == [
        repos.DiffStat("docs/README.md", "R", 0, 0, old_path="README.md"),
        repos.DiffStat("link", "A", 1, 0),
        repos.DiffStat("logo.png", "M", None, None),
        repos.DiffStat("new\nline\tname.txt", "A", 3, 0),
        repos.DiffStat("src/app.py", "M", 4, 1),
        repos.DiffStat("src/util.py", "D", 0, 2),
    ]
    assert repos.diff_stat(workspace=workspace, old=after, new=after) == []


def _plant_turn(work: Path) -> None:
    """One turn of every kind of change: edit, add (in new directories), delete, binary edit,
    binary add, mode change, symlink added and symlink removed, rename."""
    (work / "src" / "app.py").write_text("def main():\n    return 'turn'\n")
    (work / "pkg" / "deep").mkdir(parents=True)
    (work / "pkg" / "deep" / "mod.py").write_text("X = 1\n")
    (work / "src" / "util.py").unlink()
    (work / "logo.png").write_bytes(PNG[::-1])
    (work / "blob.bin").write_bytes(bytes(range(255, -1, -1)) * 8)
    (work / "run.sh").chmod(0o755)
    (work / "to-readme").symlink_to("README.md")
    (work / "old-link").unlink()
    (work / "docs").mkdir()
    (work / "guide.md").rename(work / "docs" / "guide.md")
    (work / 'odd "name"\n\tü.txt').write_text("quoted in the patch\n")
    Path(os.fsdecode(os.path.join(os.fsencode(work), b"latin-\xe9.txt"))).write_bytes(b"\xe9\n")


def test_revert_between_puts_the_files_back_exactly(workspace):
    work = tree(workspace)
    (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (work / "old-link").symlink_to("src")
    (work / "guide.md").write_text("".join(f"line {n}\n" for n in range(30)))
    before_files = files_of(work)
    before = repos.snapshot(workspace=workspace)
    _plant_turn(work)
    after = repos.snapshot(workspace=workspace)

    repos.revert_between(workspace=workspace, old=before, new=after)

    assert repos.snapshot(workspace=workspace) == before
    assert files_of(work) == before_files
    assert not (work / "pkg").exists() and not (work / "docs").exists()  # no empty dirs left
    assert not os.stat(work / "run.sh").st_mode & 0o111  # (group bits follow the sandbox's ACL)
    assert os.readlink(work / "old-link") == "src"
    assert (work / "logo.png").read_bytes() == PNG
    # Reverting the revert brings the turn back: the diff is an exact inverse.
    repos.revert_between(workspace=workspace, old=after, new=before)
    assert repos.snapshot(workspace=workspace) == after
    # Nothing to undo is no work.
    repos.revert_between(workspace=workspace, old=after, new=after)
    assert repos.snapshot(workspace=workspace) == after


def test_revert_keeps_later_changes_that_do_not_overlap(workspace):
    work = tree(workspace)
    (work / "long.txt").write_text("".join(f"line {n}\n" for n in range(40)))
    start = repos.snapshot(workspace=workspace)
    # Turn 1: the top of long.txt, app.py, a new file.
    (work / "long.txt").write_text(
        "".join(("TURN ONE\n" if n == 2 else f"line {n}\n") for n in range(40))
    )
    (work / "src" / "app.py").write_text("def main():\n    return 'one'\n")
    (work / "one.txt").write_text("from turn one\n")
    turn_one = repos.snapshot(workspace=workspace)
    # Turn 2 (later): the bottom of long.txt, another file, another new file.
    text = (work / "long.txt").read_text().replace("line 35\n", "TURN TWO\n")
    (work / "long.txt").write_text(text)
    (work / "src" / "util.py").write_text("def helper():\n    return 'two'\n")
    (work / "two.txt").write_text("from turn two\n")
    (work / "src" / "app.py").chmod(0o755)

    repos.revert_between(workspace=workspace, old=start, new=turn_one)

    long = (work / "long.txt").read_text()
    assert "TURN ONE" not in long and "line 2\n" in long and "TURN TWO\n" in long
    assert (work / "src" / "app.py").read_text() == "def main():\n    return 1\n"
    assert os.stat(work / "src" / "app.py").st_mode & 0o111 == 0o111  # turn two's chmod stays
    assert not (work / "one.txt").exists()
    assert (work / "src" / "util.py").read_text() == "def helper():\n    return 'two'\n"
    assert (work / "two.txt").read_text() == "from turn two\n"


def test_a_conflicting_later_change_refuses_the_undo_and_changes_nothing(workspace):
    work = tree(workspace)
    start = repos.snapshot(workspace=workspace)
    (work / "src" / "app.py").write_text("def main():\n    return 'one'\n")
    (work / "README.md").write_text("# Demo\n\nTurn one.\n")  # would revert cleanly alone
    (work / "one.txt").write_text("from turn one\n")
    (work / "src" / "util.py").unlink()
    turn_one = repos.snapshot(workspace=workspace)
    (work / "src" / "app.py").write_text("def main():\n    return 'two'\n")
    later = repos.snapshot(workspace=workspace)
    before = files_of(work)

    with pytest.raises(RepoError) as caught:
        repos.revert_between(workspace=workspace, old=start, new=turn_one)

    assert str(caught.value) == (
        "Undo could not be applied: later changes touch the same lines of src/app.py. "
        "Undo the later turn first."
    )
    assert files_of(work) == before and repos.snapshot(workspace=workspace) == later

    # A file the turn added, deleted later; one it deleted, made again; the words say so.
    (work / "src" / "app.py").write_text("def main():\n    return 'one'\n")
    (work / "one.txt").unlink()
    (work / "src" / "util.py").write_text("made again\n")
    before = files_of(work)
    with pytest.raises(RepoError) as caught:
        repos.revert_between(workspace=workspace, old=start, new=turn_one)
    message = str(caught.value)
    assert "one.txt was deleted or renamed later" in message
    assert "src/util.py was created again later" in message
    assert "app.py" not in message and "README.md" not in message
    assert files_of(work) == before


def test_snapshot_ids_that_are_not_trees_of_the_workspace_are_refused(workspace, tmp_path):
    snap = repos.snapshot(workspace=workspace)
    gd = repos.git_dir(workspace=workspace)
    blob = git(gd, "rev-parse", "HEAD:README.md").strip()
    unknown = "0123456789abcdef" * 2 + "01234567"
    written = tmp_path / "written"
    bad_ids = ["HEAD", "main", f"--output={written}", snap[:12], snap.upper(), "", blob, unknown]
    for bad in bad_ids:
        for call in (repos.diff_between, repos.diff_stat, repos.revert_between):
            with pytest.raises(RepoError, match="not a snapshot"):
                call(workspace=workspace, old=bad, new=snap)
            with pytest.raises(RepoError, match="not a snapshot"):
                call(workspace=workspace, old=snap, new=bad)
    assert not written.exists()


def test_another_workspaces_snapshot_is_not_found_here(workspace, team, alice, repo):
    other = repos.create_workspace(
        conversation=conversation_create(team=team, author=alice, title="Second"),
        repo=repo,
        branch="main",
    )
    start = repos.snapshot(workspace=other)
    (tree(other) / "theirs.txt").write_text("another conversation's work\n")
    theirs = repos.snapshot(workspace=other)

    with pytest.raises(RepoError, match="not a snapshot"):
        repos.diff_between(workspace=workspace, old=start, new=theirs)
    with pytest.raises(RepoError, match="not a snapshot"):
        repos.revert_between(workspace=workspace, old=theirs, new=start)
    assert not (tree(workspace) / "theirs.txt").exists()


def test_diff_and_revert_never_follow_a_planted_symlink(workspace, tmp_path):
    work = tree(workspace)
    outside = tmp_path / "outside"
    outside.mkdir()
    start = repos.snapshot(workspace=workspace)
    # The turn: a new config file in a new directory, a README edit, a link to /etc.
    (work / "conf").mkdir()
    (work / "conf" / "app.ini").write_text("[app]\nkey = 1\n")
    (work / "README.md").write_text("# Demo\n\nEdited.\n")
    (work / "etc").symlink_to("/etc")
    (work / "passwd").symlink_to("/etc/passwd")
    turn = repos.snapshot(workspace=workspace)

    text = repos.diff_between(workspace=workspace, old=start, new=turn)
    assert "+/etc\n" in text and "+/etc/passwd\n" in text and "root:" not in text
    stats = repos.diff_stat(workspace=workspace, old=start, new=turn)
    assert {(s.path, s.added) for s in stats} >= {("etc", 1), ("passwd", 1)}  # the link text

    # Later the agent swaps conf/ and README.md for links to look-alikes outside the tree,
    # whose contents would match the patch if git followed them.
    (outside / "app.ini").write_text("[app]\nkey = 1\n")
    (outside / "README.md").write_text("# Demo\n\nEdited.\n")
    (work / "conf" / "app.ini").unlink()
    (work / "conf").rmdir()
    (work / "conf").symlink_to(outside)
    (work / "README.md").unlink()
    (work / "README.md").symlink_to(outside / "README.md")
    before = files_of(work)

    with pytest.raises(RepoError) as caught:
        repos.revert_between(workspace=workspace, old=start, new=turn)
    message = str(caught.value)
    # In the sandbox the link's target does not exist: git sees a dangling link.
    assert (
        "conf/app.ini was replaced later by a symbolic link" in message
        or "conf/app.ini was deleted or renamed later" in message
    )
    assert "README.md" in message  # the link's target text is not what the turn wrote
    assert files_of(work) == before
    assert (outside / "app.ini").read_text() == "[app]\nkey = 1\n"
    assert (outside / "README.md").read_text() == "# Demo\n\nEdited.\n"

    # Put the turn's own files back: the undo then removes the links themselves, not /etc.
    (work / "conf").unlink()
    (work / "conf").mkdir()
    (work / "conf" / "app.ini").write_text("[app]\nkey = 1\n")
    (work / "README.md").unlink()
    (work / "README.md").write_text("# Demo\n\nEdited.\n")
    repos.revert_between(workspace=workspace, old=start, new=turn)
    assert repos.snapshot(workspace=workspace) == start
    assert not os.path.lexists(work / "etc") and not os.path.lexists(work / "passwd")
    assert Path("/etc/passwd").exists() and sorted(outside.iterdir()) == [
        outside / "README.md",
        outside / "app.ini",
    ]


def test_a_link_the_turn_changed_then_made_a_file_is_refused(workspace, tmp_path):
    work = tree(workspace)
    (work / "current").symlink_to("src")
    start = repos.snapshot(workspace=workspace)
    (work / "current").unlink()
    (work / "current").symlink_to(tmp_path)
    turn = repos.snapshot(workspace=workspace)
    (work / "current").unlink()
    (work / "current").write_text(str(tmp_path))  # same bytes as the link's target

    with pytest.raises(RepoError, match="current was replaced later by a symbolic link or"):
        repos.revert_between(workspace=workspace, old=start, new=turn)
    assert (work / "current").read_text() == str(tmp_path)


def test_revert_runs_no_planted_config_or_attributes(workspace, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    work = tree(workspace)
    (work / "src" / "app.py").write_text("def main():   \n    return 1\n")
    (work / "ws.txt").write_text("a = 1\n")
    start = repos.snapshot(workspace=workspace)
    (work / "src" / "app.py").write_text("def main():\n    return 2\n")
    (work / "ws.txt").write_text("a = 2\n")
    turn = repos.snapshot(workspace=workspace)
    (work / "ws.txt").write_text("a  =  2\n")  # a later edit, whitespace only
    (work / ".gitattributes").write_text("* diff=evil filter=evil\n")
    (work / ".git").mkdir(exist_ok=True)  # (the sandbox's mount point)
    _plant(work / ".git" / "config", markers)
    gd = repos.git_dir(workspace=workspace)
    _plant(gd / "config", markers)
    with (gd / "config").open("a") as fh:
        # Refuse the trailing space the undo puts back; let whitespace-only edits match.
        fh.write("[apply]\n\twhitespace = error\n\tignoreWhitespace = change\n")

    repos.diff_between(workspace=workspace, old=start, new=turn)
    repos.diff_stat(workspace=workspace, old=start, new=turn)
    with pytest.raises(RepoError, match="touch the same lines of ws.txt"):
        repos.revert_between(workspace=workspace, old=start, new=turn)
    (work / "ws.txt").write_text("a = 2\n")
    repos.revert_between(workspace=workspace, old=start, new=turn)

    assert (work / "src" / "app.py").read_text() == "def main():   \n    return 1\n"
    assert (work / "ws.txt").read_text() == "a = 1\n"
    assert sorted(p.name for p in markers.iterdir()) == []


def test_a_same_size_edit_right_after_checkout_is_seen(team, repo, alice):
    """Racy git: an edit that keeps the size, made within the second the index was written,
    must still count as a change (the snapshot's index copy keeps the index's mtime)."""
    from assistant.services import conversation_create

    for attempt in range(3):
        conversation = conversation_create(team=team, author=alice, title=f"racy {attempt}")
        ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
        before = repos.snapshot(workspace=ws)
        (tree(ws) / "src" / "app.py").write_text("def main():\n    return 2\n")  # same size
        after = repos.snapshot(workspace=ws)
        assert after != before
        assert "+    return 2" in repos.diff_between(workspace=ws, old=before, new=after)
