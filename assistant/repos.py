"""Git on the server: mirrors of a team's repositories and one workspace per conversation.

Layout under REPOS_ROOT (default DATA_DIR/repos)::

    <team uuid>/<repo uuid>/mirror.git                  bare mirror of the remote
    <team uuid>/<repo uuid>/lock                        flock: fetch exclusive, clone shared
    <team uuid>/<repo uuid>/workspaces/<uuid>/tree      the working tree the agent edits
    <team uuid>/<repo uuid>/workspaces/<uuid>/git       its git directory, outside the tree

A workspace is its own clone of the mirror (objects hardlinked, so it is cheap), not a
`git worktree`: worktrees share the mirror's refs, config, hooks and object store, so one
conversation could move another's branch or plant config the server later reads, and a
`fetch --prune` of the mirror would prune the work branches. A clone shares nothing writable:
git never rewrites an object file in place, so hardlinks are read-only in effect, and deleting
a workspace is an `rm -r` that cannot touch its neighbours.

The git directory sits beside the tree, not in it, and every command names both
(`--git-dir`, `--work-tree`): the tree is hostile (the agent and the repository's authors
control it), so a `.git` file or directory planted there — pointing at another team's
repository, or carrying hooks and config — is never read. The sandbox may mount the git
directory read-only at `tree/.git` so git works inside it. On top of that every command runs
with `_HARDENING` and a clean environment, as if the config it reads were hostile too.

Every git command that reads or writes a workspace (`_ws_git`, `_ws_sh`) runs inside the
sandbox (`sandbox_git`): the agent's processes can change the tree while git reads it, so git
must not be able to reach anything the agent could not read itself. Only the mirrors (and the
push, which reads the workspace's objects, never its tree) use git on the host.
"""

from __future__ import annotations

import base64
import fcntl
import io
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import overlays, quota, sandbox_git
from .models import Conversation, RepoAuth, Repository, Workspace
from .repo_address import RepoError, repos_root, validate_url
from .repo_address import local_roots as local_roots  # still repos.local_roots to callers

log = logging.getLogger(__name__)

LOCAL_TIMEOUT = 120  # seconds; status, diff, commit on a large tree
NETWORK_TIMEOUT = 600  # seconds; a first fetch of a large repository
HTTPS_USER = "x-access-token"  # GitHub's name for token auth; GitLab and Gitea accept any name

# Each flag overrides whatever the repository's config (or a planted one) says.
_HARDENING = (
    "-c", "core.hooksPath=/dev/null",  # no hook runs: post-commit, post-checkout, pre-push, …
    "-c", "core.fsmonitor=false",  # fsmonitor is a command git runs on every index refresh
    "-c", "core.askPass=",  # an askpass program would run when a remote wants a password
    "-c", "credential.helper=",  # empty resets the list: no helper runs, none stores a token
    "-c", "core.pager=cat",  # never a configured pager (only with a tty, but be sure)
    "-c", "core.attributesFile=/dev/null",  # no per-user attributes naming drivers
    "-c", "core.excludesFile=/dev/null",  # what is untracked depends on the repository only
    "-c", "core.autocrlf=false",  # bytes in, bytes out
    "-c", "core.quotePath=true",  # odd names are C-quoted in diffs, never raw bytes
    "-c", "protocol.allow=never",  # ext:: (runs a command), fd::, git://, http:// refused
    "-c", "protocol.https.allow=always",
    "-c", "protocol.ssh.allow=always",
    "-c", "protocol.file.allow=always",  # local paths and file:// for self-hosted setups
    "-c", "submodule.recurse=false",  # a nested repository's config is never read
    "-c", "diff.ignoreSubmodules=all",
    "-c", "status.submoduleSummary=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "push.recurseSubmodules=no",
    "-c", "commit.gpgSign=false",  # gpg.program is a command too
    "-c", "log.showSignature=false",
    "-c", "advice.addEmbeddedRepo=false",
    # Snapshot trees are referenced by no ref (their ids live in the database), so an automatic
    # gc (which prunes unreachable objects) must never run: undo would lose what it reverts to.
    "-c", "gc.auto=0",
)  # fmt: skip
# Diff drivers and filters are commands named by .gitattributes and defined in config. This
# file has the highest precedence of all attributes, so in-tree .gitattributes cannot name one.
_NEUTRAL_ATTRIBUTES = "* !filter !diff !merge !text !eol !ident !working-tree-encoding\n"
# Only these reach git from the server's environment; GIT_DIR, GIT_EXTERNAL_DIFF, SSH_AUTH_SOCK,
# GIT_CONFIG_PARAMETERS and the rest are dropped.
_PASSED_ENV = (
    "PATH", "HOME", "TMPDIR", "LANG",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH",
)  # fmt: skip
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
# Git's wording → what a person can do about it. The first match wins.
_HINTS = (
    ("could not read username", "the remote asked for credentials; add a token or a key."),
    ("could not read password", "the remote asked for credentials; add a token or a key."),
    ("authentication failed", "the remote refused the credentials."),
    ("permission denied (publickey", "the remote refused the SSH key."),
    ("host key verification failed", "the remote's SSH host key changed since it was first seen."),
    ("could not resolve host", "the remote's host name could not be resolved."),
    ("could not resolve hostname", "the remote's host name could not be resolved."),
    ("connection refused", "the remote could not be reached."),
    ("failed to connect", "the remote could not be reached."),
    ("couldn't connect", "the remote could not be reached."),
    ("timed out", "the remote did not answer in time."),
    ("ssl certificate problem", "the remote's TLS certificate could not be verified."),
    ("does not appear to be a git repository", "no git repository was found at this address."),
    ("not found", "no repository was found at this address (or the credentials cannot see it)."),
    ("not allowed", "this kind of address is not allowed."),
    ("non-fast-forward", "the remote branch has commits this work does not; pick a new name."),
    ("fetch first", "the remote branch has commits this work does not; pick a new name."),
)


_REFUSED_TOKEN = "the remote refused the token."


@dataclass(frozen=True)
class FileStatus:
    code: str  # porcelain v1 "XY": "M " staged, " M" modified, "??" untracked, " D" deleted…
    path: str  # os.fsdecode'd: names that are not UTF-8 survive as surrogate escapes


@dataclass(frozen=True)
class DiffStat:
    path: str  # the name after the change; os.fsdecode'd like FileStatus.path
    status: str  # "A", "M", "D" or "R"; a type change (file ↔ symlink) counts as "M"
    added: int | None  # lines; None for a binary file
    deleted: int | None
    old_path: str = ""  # the name before a rename, else ""


@dataclass(frozen=True)
class TreeEntry:
    mode: str  # "100644", "100755", "120000" (a symlink: its blob is the target) or "160000"
    id: str
    size: int | None  # bytes; None for a submodule
    path: str  # os.fsdecode'd like FileStatus.path


# --- Where things live ---------------------------------------------------------------------


def _repo_dir(repo: Repository) -> Path:
    return repos_root() / str(repo.team.uuid) / str(repo.uuid)


def mirror_path(*, repo: Repository) -> Path:
    return _repo_dir(repo) / "mirror.git"


def _workspace_dir(workspace: Workspace) -> Path:
    path = _repo_dir(workspace.repository) / "workspaces" / str(workspace.uuid)
    try:
        quota.ensure_mounted(path)  # its own file system (quota.py), after a restart too
        overlays.ensure(path)  # its prepared tree's overlay (overlays.py), likewise
    except quota.QuotaError as exc:
        raise RepoError(str(exc))
    return path


def workspace_path(*, workspace: Workspace) -> Path:
    """The working tree: what tools read and edit, and the sandbox mounts read-write."""
    return _workspace_dir(workspace) / "tree"


def git_dir(*, workspace: Workspace) -> Path:
    """The workspace's git directory; only the server writes it."""
    return _workspace_dir(workspace) / "git"


# --- Running git ---------------------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    env.update(
        LC_ALL="C",  # English messages, which _HINTS matches
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_ATTR_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",  # fail instead of waiting for a password
        GIT_ASKPASS="",  # set but empty: git then skips core.askPass and SSH_ASKPASS
        SSH_ASKPASS="",
        GIT_PAGER="cat",
        GIT_EDITOR="false",
        GIT_NO_REPLACE_OBJECTS="1",  # refs/replace cannot make a diff lie about a commit
        GIT_LITERAL_PATHSPECS="1",
        GIT_SSH_COMMAND=_ssh_command(None),  # the environment beats core.sshCommand
        GIT_SSH_VARIANT="ssh",
    )
    env.update(extra or {})
    return env


def _ssh_command(key: Path | None) -> str:
    known_hosts = repos_root() / "known_hosts"  # trust on first use, then pinned
    options = [
        "ssh", "-F", "/dev/null",  # no user ssh config: no ProxyCommand, no agent forwarding
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none",  # never the server's agent or keys
        "-o", f"IdentityFile={_ssh_quoted(key) if key else 'none'}",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={_ssh_quoted(known_hosts)}",
    ]  # fmt: skip
    return shlex.join(options)  # GIT_SSH_COMMAND goes through a shell


def _ssh_quoted(path: Path) -> str:
    # ssh splits these options on spaces and expands %-tokens in them.
    return '"' + str(path).replace("%", "%%") + '"'


def _git(
    *args: str | Path,
    doing: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = LOCAL_TIMEOUT,
    ok_codes: tuple[int, ...] = (0,),
) -> bytes:
    """Run git hardened; its stdout, or RepoError("<doing> failed: <what to do>")."""
    code, out, err = _run_git(args, doing=doing, env=env, input=input, timeout=timeout)
    if code not in ok_codes:
        raise RepoError(f"{doing} failed: {_explain(err, env)}")
    return out


def _run_git(
    args: tuple[str | Path, ...],
    *,
    doing: str,
    env: dict[str, str] | None,
    input: bytes | None,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    """Run git hardened; exit code, stdout and stderr, for callers that read git's errors."""
    command = ["git", *_HARDENING, *map(str, args)]
    try:
        proc = subprocess.Popen(
            command,
            cwd="/",  # every path is absolute; no repository is ever discovered from here
            env=_env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # so a timeout kills git's helpers (ssh, remote-https) too
        )
    except FileNotFoundError:
        raise RepoError("git is not installed on the server.")
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RepoError(f"{doing} took longer than {timeout:g} seconds and was stopped.")
    return proc.returncode, out, err


class GitStream:
    """git's stdout read as it comes, never more than ``limit`` bytes: once that much has come,
    or ``timeout`` seconds have passed, git (and its process group) is killed. ``cut`` then
    says so; a failure exit that was not ours raises RepoError at the end of the iteration.
    Its stderr goes to a file (only the last few kilobytes are read), stdin gets ``input`` from
    a thread of its own, so neither side of a pipe can stall the other."""

    CHUNK = 64 * 1024

    def __init__(
        self,
        args: tuple[str | Path, ...],
        *,
        doing: str,
        limit: int,
        input: bytes | None = None,
        timeout: float = LOCAL_TIMEOUT,
    ) -> None:
        self.args, self.doing, self.limit = args, doing, limit
        self.input, self.timeout = input, timeout
        self.cut = False  # stopped at ``limit``, not at the end of git's output
        self.timed_out = False
        self.read = 0

    def __iter__(self) -> Generator[bytes, None, None]:
        import threading

        command = ["git", *_HARDENING, *map(str, self.args)]
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    command,
                    cwd="/",
                    env=_env(None),
                    stdin=subprocess.PIPE if self.input is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise RepoError("git is not installed on the server.")

            def kill() -> None:
                if proc.poll() is None:
                    with suppress(OSError):
                        os.killpg(proc.pid, signal.SIGKILL)

            def expire() -> None:
                self.timed_out = True
                kill()

            timer = threading.Timer(self.timeout, expire)
            timer.daemon = True
            timer.start()
            if self.input is not None:
                threading.Thread(target=_feed, args=(proc, self.input), daemon=True).start()
            # stdout=PIPE with the default buffering: a BufferedReader, which has read1.
            stdout = cast(io.BufferedReader, proc.stdout)
            try:
                while self.read < self.limit:
                    chunk = stdout.read1(min(self.CHUNK, self.limit - self.read))
                    if not chunk:
                        break
                    self.read += len(chunk)
                    yield chunk
                else:
                    # Exactly at the limit: cut only if git had more to say.
                    self.cut = bool(stdout.read1(1))
            finally:
                timer.cancel()
                if self.cut or proc.poll() is None:
                    kill()
                stdout.close()
                code = proc.wait()
            if self.timed_out:
                raise RepoError(
                    f"{self.doing} took longer than {self.timeout:g} seconds and was stopped."
                )
            if code and not self.cut:
                err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
                raise RepoError(f"{self.doing} failed: {_explain(err.read(), None)}")

    def collect(self) -> bytes:
        return b"".join(self)


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        assert proc.stdin is not None  # stdin=PIPE
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # git stopped reading: it was killed, or it failed and says why on stderr


def ws_git_stream(workspace: Workspace, *args: str, doing: str, limit: int, **kwargs) -> GitStream:
    """A git command on a workspace whose output is read bounded: see GitStream. Every read of
    a turn's changes for display, and the patch download, goes through here."""
    # Objects only (trees and blobs by id): no work tree is named, so none is ever read here.
    return GitStream(
        (f"--git-dir={git_dir(workspace=workspace)}", *args),
        doing=doing,
        limit=limit,
        **kwargs,
    )


def _explain(stderr: bytes, env: dict[str, str] | None) -> str:
    text = stderr.decode("utf-8", "replace")
    header = (env or {}).get("GIT_CONFIG_VALUE_0", "")
    if header:  # belt and braces: git never echoes it
        text = text.replace(header, "…")
    lowered = text.lower()
    for needle, hint in _HINTS:
        if needle in lowered:
            # The token goes out unasked, so a 401 reads to git as "no credentials".
            return _REFUSED_TOKEN if header and "asked for credentials" in hint else hint
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = lines[-1] if lines else "git gave no reason."
    detail = re.sub(r"^(fatal|error): ", "", detail).replace(str(repos_root()), "…")
    return detail[:300]


# --- Running git on a workspace, in the sandbox --------------------------------------------

_STOPPED = {
    "output": "git printed more than can be kept",
    "cpu": "git used too much CPU time",
    "file_size": "git tried to write a file that is too large",
    "memory": "git needed more memory than the sandbox allows",
    "cancelled": "it was stopped",
}
# The prefix of every script run with _ws_sh: g is git with the fixed flags (constants only).
_G = "g() { git " + shlex.join([*_HARDENING, *sandbox_git.FLAGS]) + ' "$@"; }\n'


def _ws_run(
    workspace: Workspace,
    argv: list[str],
    *,
    doing: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = LOCAL_TIMEOUT,
) -> tuple[int, bytes, bytes]:
    """Run argv in the sandbox over the workspace: exit code, stdout, stderr; RepoError when
    the sandbox cannot start or stopped it."""
    try:
        result = sandbox_git.run(
            argv,
            tree=workspace_path(workspace=workspace),
            git_dir=git_dir(workspace=workspace),
            env=env,
            input=input,
            timeout=timeout,
        )
    except sandbox_git.SandboxError as exc:
        detail = str(exc).replace(str(repos_root()), "…")
        raise RepoError(f"{doing} failed: {detail}.")
    if result.why == "timeout":
        raise RepoError(f"{doing} took longer than {timeout:g} seconds and was stopped.")
    if result.why:
        raise RepoError(f"{doing} failed: {_STOPPED.get(result.why, result.why)}.")
    assert result.code is not None
    return result.code, result.out, result.err


def _ws_git(
    workspace: Workspace,
    *args: str,
    doing: str,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    timeout: float = LOCAL_TIMEOUT,
    ok_codes: tuple[int, ...] = (0,),
) -> bytes:
    """git on the workspace, hardened, in the sandbox; its stdout, or RepoError in words."""
    argv = ["git", *_HARDENING, *sandbox_git.FLAGS, *args]
    code, out, err = _ws_run(workspace, argv, doing=doing, env=env, input=input, timeout=timeout)
    if code not in ok_codes:
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    return out


def _ws_sh(
    workspace: Workspace, script: str, *args: str, doing: str, **kwargs
) -> tuple[int, bytes, bytes]:
    """A fixed shell script (several git commands, one sandbox) with its arguments as $1…; in
    it, g runs git hardened. Names never go into the script's text."""
    argv = ["/bin/sh", "-c", _G + script, "sh", *args]
    return _ws_run(workspace, argv, doing=doing, **kwargs)


@contextmanager
def _remote_env(repo: Repository) -> Iterator[dict[str, str]]:
    """Credentials for one command, in its environment only: never in a URL, .git/config or
    argv (which every local user can read in ps)."""
    if repo.auth == RepoAuth.HTTPS_TOKEN:
        user, colon, token = repo.credential.strip().partition(":")  # "token" or "user:token"
        if not colon:
            user, token = HTTPS_USER, user
        basic = base64.b64encode(f"{user}:{token}".encode()).decode()
        yield {  # git's config-from-environment: http.extraHeader for this process only
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }
    elif repo.auth == RepoAuth.SSH_KEY:
        with tempfile.TemporaryDirectory(prefix="tandem-key-") as tmp:  # 0700
            key = Path(tmp) / "key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:  # ssh refuses keys without the final newline
                fh.write(repo.credential.replace("\r\n", "\n").strip() + "\n")
            yield {"GIT_SSH_COMMAND": _ssh_command(key)}
    else:
        yield {}


@contextmanager
def _locked(repo: Repository, *, shared: bool = False) -> Iterator[None]:
    # A fetch rewrites refs; clones read them. Beat and a person's "Fetch now" may overlap.
    directory = _repo_dir(repo)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield


# --- Mirrors -------------------------------------------------------------------------------


def ensure_mirror(*, repo: Repository) -> Path:
    """Create or update the mirror. The outcome is recorded on the row; failures also raise."""
    path = mirror_path(repo=repo)
    try:
        url = validate_url(repo.url)
        with _locked(repo), _remote_env(repo) as remote:
            if path.exists():
                _fetch(path, url, remote)
            else:
                _first_fetch(path, url, remote)
    except RepoError as exc:
        _record_fetch(repo, error=str(exc))
        raise
    _record_fetch(repo, error="", branches=branches(repo=repo))
    return path


def _first_fetch(path: Path, url: str, remote: dict[str, str]) -> None:
    # Into a side directory, so mirror.git exists only once a fetch has worked.
    new = path.with_name("mirror.new")
    _rmtree(new)
    try:
        _git("init", "--bare", "--quiet", "--template=", "--", new, doing="Creating the mirror")
        _fetch(new, url, remote)
        new.rename(path)
    finally:
        _rmtree(new)


def _fetch(mirror: Path, url: str, remote: dict[str, str]) -> None:
    head = _git(
        f"--git-dir={mirror}", "ls-remote", "--symref", "--", url, "HEAD",
        doing="Reaching the repository", env=remote, timeout=NETWORK_TIMEOUT,
    )  # fmt: skip
    # Branches and tags only: a mirror refspec (refs/*) would also fetch every pull request.
    _git(
        f"--git-dir={mirror}", "fetch", "--prune", "--no-tags", "--quiet", "--", url,
        "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
        doing="Fetching the repository", env=remote, timeout=NETWORK_TIMEOUT,
    )  # fmt: skip
    match = re.search(rb"^ref: (refs/heads/\S+)\tHEAD$", head, re.MULTILINE)
    if match:
        _git(f"--git-dir={mirror}", "symbolic-ref", "HEAD", os.fsdecode(match[1]), doing="Fetching")


def _record_fetch(repo: Repository, *, error: str, branches: list[str] | None = None) -> None:
    fields: dict[str, Any] = {"last_fetch_error": error}
    if not error:
        fields["last_fetched"] = timezone.now()
    if branches is not None:
        fields["branches"] = branches  # the attach form's list: the web never reads the mirror
    Repository.objects.filter(pk=repo.pk).update(**fields)
    for name, value in fields.items():
        setattr(repo, name, value)


def branches(*, repo: Repository) -> list[str]:
    """Branch names of the mirror, the default first."""
    path = mirror_path(repo=repo)
    if not path.exists():
        return []
    out = _git(
        f"--git-dir={path}", "for-each-ref", "--format=%(refname:strip=2)", "refs/heads/",
        doing="Listing branches",
    )  # fmt: skip
    names = sorted(os.fsdecode(name) for name in out.splitlines())
    default = default_branch(repo=repo)
    return sorted(names, key=lambda name: name != default)


def default_branch(*, repo: Repository) -> str:
    if repo.default_branch:
        return repo.default_branch
    out = _git(
        f"--git-dir={mirror_path(repo=repo)}", "symbolic-ref", "--quiet", "--short", "HEAD",
        doing="Reading the default branch", ok_codes=(0, 1),
    )  # fmt: skip
    return os.fsdecode(out.strip())


# --- Workspaces ----------------------------------------------------------------------------


def create_workspace(
    *, conversation: Conversation, repo: Repository, branch: str = ""
) -> Workspace:
    """Give the conversation its own clone of `branch`, on a new work branch."""
    if repo.team_id != conversation.team_id:
        raise RepoError("That repository belongs to another team.")
    if Workspace.objects.filter(conversation=conversation).exists():
        raise RepoError("This conversation already works on a repository.")
    if not mirror_path(repo=repo).exists():
        ensure_mirror(repo=repo)
    workspace = Workspace(
        uuid=uuid.uuid4(),
        conversation=conversation,
        repository=repo,
        branch=branch or default_branch(repo=repo),
        work_branch=f"tandem/{conversation.uuid.hex[:8]}",
    )
    try:
        with _locked(repo, shared=True):
            workspace.base_commit = _branch_tip(repo, workspace.branch)
            quota.prepare(_workspace_dir(workspace))  # bytes and files bounded, where possible
            _clone(workspace)
        with transaction.atomic():
            workspace.save()
    except IntegrityError:
        _rmtree(_workspace_dir(workspace))
        raise RepoError("This conversation already works on a repository.")
    except quota.QuotaError as exc:
        _rmtree(_workspace_dir(workspace))
        raise RepoError(str(exc))
    except BaseException:
        _rmtree(_workspace_dir(workspace))
        raise
    return workspace


def _branch_tip(repo: Repository, branch: str) -> str:
    _git("check-ref-format", "--branch", branch, doing=f"Using the branch “{branch}”")
    out = _git(
        f"--git-dir={mirror_path(repo=repo)}", "rev-parse", "--verify", "--quiet",
        f"refs/heads/{branch}^{{commit}}",
        doing="Finding the branch", ok_codes=(0, 1),
    )  # fmt: skip
    if not out.strip():
        raise RepoError(f"The repository has no branch “{branch}”.")
    return out.decode().strip()


def _clone(workspace: Workspace) -> None:
    gd, tree = git_dir(workspace=workspace), workspace_path(workspace=workspace)
    doing = "Preparing the workspace"
    # Local clone: objects hardlinked from our own mirror, only the base branch's ref.
    _git(
        "clone", "--bare", "--quiet", "--single-branch", "--no-tags",
        f"--branch={workspace.branch}", "--", mirror_path(repo=workspace.repository), gd,
        doing=doing,
    )  # fmt: skip
    (gd / "info").mkdir(exist_ok=True)
    (gd / "info" / "attributes").write_text(_NEUTRAL_ATTRIBUTES)
    tree.mkdir()
    for key, value in (("core.bare", "false"), ("core.logAllRefUpdates", "true")):
        _git(f"--git-dir={gd}", "config", key, value, doing=doing)
    _git(f"--git-dir={gd}", "remote", "remove", "origin", doing=doing)  # no server paths inside
    ref = f"refs/heads/{workspace.work_branch}"
    code, _, err = _ws_sh(
        workspace,
        'g update-ref "$1" "$2" && g symbolic-ref HEAD "$1" && g reset --quiet --hard',
        ref, _checked_sha(workspace.base_commit),
        doing=doing,
    )  # fmt: skip
    if code:
        raise RepoError(f"{doing} failed: {_explain(err, None)}")


def usage(*, workspace: Workspace) -> tuple[int, int]:
    """Bytes and files (inodes: directories count) the workspace holds, git directory included:
    what counts against its quota. Its own file system's statfs where it has one; else counted
    in the sandbox. Never by walking the agent's tree with the server's rights."""
    directory = _workspace_dir(workspace)
    if os.path.ismount(directory):
        fs = os.statvfs(directory)
        return (fs.f_blocks - fs.f_bfree) * fs.f_frsize, fs.f_files - fs.f_ffree
    doing = "Measuring the workspace"
    # du and find never follow symbolic links; /workspace is the tree with its git directory.
    code, out, err = _ws_sh(
        workspace, "du -s -B1 /workspace | cut -f1 && find /workspace | wc -l", doing=doing
    )
    figures = out.split()
    if code or len(figures) != 2 or not all(f.isdigit() for f in figures):
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    return int(figures[0]), int(figures[1])


def record_usage(*, workspace: Workspace) -> None:
    """Store what the workspace holds (``usage``) on its row, for the repository page; a
    measurement that fails is logged and leaves the last one."""
    try:
        used, files = usage(workspace=workspace)
    except RepoError:
        log.warning("Could not measure workspace %s", workspace.uuid, exc_info=True)
        return
    Workspace.objects.filter(pk=workspace.pk).update(
        used_bytes=used, used_files=files, measured=timezone.now()
    )


def remove_workspace(*, workspace: Workspace) -> None:
    workspace.delete()
    _rmtree(_workspace_dir(workspace))


def _rmtree(path: Path) -> None:
    def unlock(func, failed, _exc) -> None:
        # The sandbox may leave read-only directories; rmtree never follows symlinks, and
        # neither does this.
        parent = os.path.dirname(failed)
        if not os.path.islink(parent):
            os.chmod(parent, 0o700)
        func(failed)

    try:
        quota.release(path)  # a workspace's own file system: unmounted, its image deleted
    except quota.QuotaError as exc:
        raise RepoError(f"Removing the workspace failed: {exc}")
    if not os.path.lexists(path):
        return
    handler: dict[str, Any] = (
        {"onexc": unlock} if sys.version_info >= (3, 12) else {"onerror": unlock}
    )
    try:
        shutil.rmtree(path, **handler)
    except OSError as exc:
        raise RepoError(f"Removing the workspace failed: {exc.strerror}.")


# --- Looking at and keeping the work --------------------------------------------------------


def status(*, workspace: Workspace) -> list[FileStatus]:
    """Uncommitted changes, against the work branch's last commit."""
    out = _ws_git(
        workspace, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames",
        "--ignore-submodules=all",
        doing="Reading the status",
    )  # fmt: skip
    # NUL-separated, so names with newlines or quotes come through as they are.
    return [
        FileStatus(code=entry[:2].decode(), path=os.fsdecode(entry[3:]))
        for entry in out.split(b"\0")
        if entry
    ]


# In a throwaway index (a copy of the real one: it keeps stat data, so only changed files
# rehash; with its mtime, which is how git tells a file edited in the same second as the index
# was written, "racily clean", from an unchanged one): add everything and write the tree —
# unless git warned that it added an untracked directory with a .git of its own as a gitlink,
# which _NESTED redoes (exit 4). Then print the tree id and, when more arguments follow, run
# them as a git command with the tree as its last argument (a diff), in the same sandbox. $1 is
# a hex name made here.
_SNAPSHOT = """
i=/workspace/.git/tandem-snapshot-$1
trap 'rm -f "$i"' EXIT
if [ -f /workspace/.git/index ]; then
  cp --preserve=timestamps /workspace/.git/index "$i" || exit 1
fi
export GIT_INDEX_FILE="$i"
w=$(g add --all 2>&1) || exit 3
case $w in *"adding embedded git repository"*) exit 4 ;; esac
t=$(g write-tree) || exit 1
echo "$t"
shift
[ $# -eq 0 ] || g "$@" "$t"
"""
# The same with nested repositories (untracked directories holding a .git file or directory of
# their own: git would record the commit their HEAD names, or fail when it names none) taken as
# plain directories: their files are staged one by one, every .git in them left out, so git then
# walks them like any other directory. One with no file but its .git is left out. Runs in the
# sandbox, with the standard library only; argv: the index's hex name, then git and its flags.
_NESTED = r"""
import os, shutil, subprocess, sys
index = "/workspace/.git/tandem-snapshot-" + sys.argv[1]
git = sys.argv[2:]
env = dict(os.environ, GIT_INDEX_FILE=index)

def g(*args, data=None, check=True, **extra):
    done = subprocess.run([*git, *args], input=data, capture_output=True, env={**env, **extra})
    if check and done.returncode:
        sys.stderr.buffer.write(done.stderr)
        sys.exit(1)
    return done

def files(top):
    found, stack = [], [top]
    while stack and len(found) < 1_000_000:
        here = stack.pop()
        with os.scandir(b"/workspace/" + here) as entries:
            for entry in entries:
                if entry.name == b".git":
                    continue
                rel = here + b"/" + entry.name
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    found.append(rel)
    return found

try:
    if os.path.isfile("/workspace/.git/index"):
        shutil.copy2("/workspace/.git/index", index)
    empty = set()
    for _ in range(1000):
        others = g("ls-files", "-z", "-o", "--exclude-standard").stdout.split(b"\0")
        nested = [name[:-1] for name in others if name.endswith(b"/") and name[:-1] not in empty]
        if not nested:
            break
        for top in nested:
            names = files(top)
            listed = b"".join(name + b"\0" for name in names)
            ignored = g("check-ignore", "-z", "--stdin", "--no-index", data=listed, check=False)
            skip = set(ignored.stdout.split(b"\0"))
            names = [name for name in names if name not in skip]
            if names:
                g("update-index", "--add", "-z", "--stdin", data=b"".join(n + b"\0" for n in names))
            else:
                empty.add(top)
    else:
        sys.exit("too many nested repositories")
    excluded = [b":(exclude,literal)" + top for top in sorted(empty)]
    g("add", "--all", "--", *excluded, GIT_LITERAL_PATHSPECS="0")
    sys.stdout.buffer.write(g("write-tree").stdout)
finally:
    try:
        os.unlink(index)
    except FileNotFoundError:
        pass
"""


def _snapshot_then(
    workspace: Workspace, *then: str, doing: str = "Reading the changes"
) -> tuple[str, bytes]:
    """The tree as it is on disk, untracked files included, as a git tree id, and the output of
    the git command `then` (if any) run on it. Built in a throwaway index so the real one (and
    what counts as committed) is left alone. Nested repositories count as plain directories:
    their .git is never read nor recorded. One sandbox, two when there are nested ones."""
    code, out, err = _ws_sh(workspace, _SNAPSHOT, uuid.uuid4().hex, *then, doing=doing)
    if code == 0:
        first, _, rest = out.partition(b"\n")
        return first.decode().strip(), rest
    if code not in (3, 4):  # 3: git add failed, perhaps over a nested repository; 4: nested
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    argv = ["python3", "-I", "-S", "-c", _NESTED, uuid.uuid4().hex, "git", *_HARDENING]
    code, out, err = _ws_run(workspace, [*argv, *sandbox_git.FLAGS], doing=doing)
    if code:
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    tree = out.decode().strip()
    return tree, (_ws_git(workspace, *then, tree, doing=doing) if then else b"")


def _snapshot(workspace: Workspace) -> str:
    return _snapshot_then(workspace)[0]


def _diff(workspace: Workspace, since: str) -> bytes:
    _, out = _snapshot_then(
        workspace, "diff-tree", "-r", "-p", "--binary", "-M", "--no-ext-diff", "--no-textconv",
        "--ignore-submodules=all", _checked_sha(since),
        doing="Computing the diff",
    )  # fmt: skip
    return out


def diff(*, workspace: Workspace, since: str | None = None) -> str:
    """Unified diff from a commit (default: the workspace's base) to the files on disk, new
    files included. Binary files come as git binary patches; other bytes that are not UTF-8
    are shown as U+FFFD — use `patch` for the exact bytes."""
    return _diff(workspace, since or workspace.base_commit).decode("utf-8", "replace")


def patch(*, workspace: Workspace) -> bytes:
    """Everything the conversation changed since its base, for `git apply` on that base."""
    return _diff(workspace, workspace.base_commit)


def has_changes(*, workspace: Workspace) -> bool:
    """Whether the files on disk differ from the base commit: the snapshot's tree id against
    the base's, in the snapshot's sandbox."""
    base = _checked_sha(workspace.base_commit)
    _, out = _snapshot_then(workspace, "rev-parse", f"{base}^{{tree}}")
    ids = out.split()  # the base's tree, then the snapshot (appended as the last argument)
    if len(ids) != 2:
        raise RepoError("Reading the changes failed: git gave no tree.")
    return ids[0] != ids[1]


def snapshot(*, workspace: Workspace) -> str:
    """The files on disk, untracked ones included, as a git tree id: what a turn started or
    ended with, for `diff_between` and `revert_between`. No ref keeps it: see gc.auto."""
    return _snapshot(workspace)


def _checked_trees(workspace: Workspace, *ids: str) -> list[str]:
    """The trees that ``ids`` name in this workspace (a commit is taken as its tree), or
    RepoError: full hex ids only, nothing option-like, no ref names."""
    out = _on_trees(workspace, ids, "rev-parse", doing="Reading the snapshots")
    trees = out.decode("ascii", "replace").split()  # rev-parse prints each id it was given
    if len(trees) != len(ids) or not all(_SHA.fullmatch(tree) for tree in trees):
        raise RepoError("That is not a snapshot of this workspace.")
    return trees


# $1: how many ids follow; each must name a tree in this workspace (a commit is taken as its
# tree) or the script exits 5; then the remaining arguments run as a git command with the trees
# appended.
_ON_TREES = """
n=$1; shift
while [ "$n" -gt 0 ]; do
  t=$(g rev-parse --verify --quiet "$1^{tree}") || exit 5
  shift; set -- "$@" "$t"; n=$((n - 1))
done
g "$@"
"""


def _on_trees(workspace: Workspace, ids: tuple[str, ...], *args: str, doing: str) -> bytes:
    """git `args` with the trees that `ids` name appended, in one sandbox. Full hex ids only:
    nothing option-like, no ref names."""
    if not all(_SHA.fullmatch(value or "") for value in ids):
        raise RepoError("That is not a snapshot of this workspace.")
    code, out, err = _ws_sh(workspace, _ON_TREES, str(len(ids)), *ids, *args, doing=doing)
    if code == 5:
        raise RepoError("That is not a snapshot of this workspace.")
    if code:
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    return out


def _tree_diff(workspace: Workspace, old: str, new: str, *options: str, doing: str) -> bytes:
    return _on_trees(
        workspace, (old, new),
        "diff-tree", "-r", "-M", *options, "--no-ext-diff", "--no-textconv",
        "--ignore-submodules=all",
        doing=doing,
    )  # fmt: skip


def diff_between(*, workspace: Workspace, old: str, new: str) -> str:
    """Unified diff from one snapshot (tree id) to another, binary files as git binary patches;
    bytes that are not UTF-8 are shown as U+FFFD."""
    out = _tree_diff(workspace, old, new, "-p", "--binary", doing="Computing the diff")
    return out.decode("utf-8", "replace")


def diff_stat(*, workspace: Workspace, old: str, new: str) -> list[DiffStat]:
    """Per file: what happened between two snapshots and how many lines went in and out."""
    out = _tree_diff(workspace, old, new, "-z", "--raw", "--numstat", doing="Counting the changes")
    # NUL-separated, so any name survives. --raw comes first, one ":<modes> <ids> <status>"
    # field then one name (two for a rename) per file; --numstat follows in the same order,
    # "<added>\t<deleted>\t<name>", or for a rename "<added>\t<deleted>\t", old name, new name.
    fields = out.split(b"\0")
    at = 0
    changes: list[tuple[str, bytes, bytes]] = []
    while at < len(fields) and fields[at].startswith(b":"):
        letter = fields[at].rsplit(b" ", 1)[-1][:1].decode()
        if letter in ("R", "C"):
            changes.append((letter, fields[at + 1], fields[at + 2]))
            at += 3
        else:
            changes.append((letter, b"", fields[at + 1]))
            at += 2
    stats = []
    for letter, old_name, name in changes:
        added, deleted, rest = fields[at].split(b"\t", 2)
        at += 3 if rest == b"" else 1
        stats.append(
            DiffStat(
                path=os.fsdecode(name),
                status={"T": "M", "C": "A"}.get(letter, letter),
                added=None if added == b"-" else int(added),
                deleted=None if deleted == b"-" else int(deleted),
                old_path=os.fsdecode(old_name),
            )
        )
    return stats


def tree_entries(*, workspace: Workspace, tree: str) -> list[TreeEntry]:
    """Every file of a snapshot, in all directories, with its size: one git process."""
    out = _on_trees(
        workspace, (tree,), "ls-tree", "-r", "-l", "-z", "--full-tree", doing="Listing the files"
    )
    entries = []
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, path = record.partition(b"\t")  # "<mode> <type> <id> <padded size>\t<path>"
        mode, _, oid, size_text = meta.decode().split()
        size = None if size_text == "-" else int(size_text)
        entries.append(TreeEntry(mode, oid, size, path.decode("utf-8", "surrogateescape")))
    return entries


# $1: a snapshot id (or RepoError as in _on_trees), $2: one path: its entry, never more.
_TREE_ENTRY = """
t=$(g rev-parse --verify --quiet "$1^{tree}") || exit 5
g ls-tree -z -l --full-tree "$t" -- "$2"
"""


def tree_entry(*, workspace: Workspace, tree: str, path: str) -> TreeEntry | None:
    """The entry of one path in a snapshot (a file, link, folder or submodule), or None. The
    path is taken literally (no pathspec magic or globs) and never leaves the snapshot."""
    if not _SHA.fullmatch(tree or ""):
        raise RepoError("That is not a snapshot of this workspace.")
    # sandbox_git.ENV sets GIT_LITERAL_PATHSPECS: the path is a name, never a pattern.
    code, out, err = _ws_sh(workspace, _TREE_ENTRY, tree, path, doing="Finding the file")
    if code == 5:
        raise RepoError("That is not a snapshot of this workspace.")
    if code:
        raise RepoError(f"Finding the file failed: {_explain(err, None)}")
    for record in out.split(b"\0"):
        meta, _, name = record.partition(b"\t")
        if name.decode("utf-8", "surrogateescape") == path:
            mode, _, oid, size_text = meta.decode().split()
            return TreeEntry(mode, oid, None if size_text == "-" else int(size_text), path)
    return None


def read_blobs(*, workspace: Workspace, ids: list[str]) -> dict[str, bytes]:
    """Blob contents by id, in one git process; ids that are not blobs here are left out."""
    ids = [value for value in dict.fromkeys(ids) if _SHA.fullmatch(value or "")]
    if not ids:
        return {}
    out = _ws_git(
        workspace, "cat-file", "--batch",
        doing="Reading files", input="".join(f"{value}\n" for value in ids).encode(),
    )  # fmt: skip
    found, at = {}, 0
    for _ in ids:  # "<id> <type> <size>\n<content>\n", or "<id> missing\n"
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if len(header) == 3:
            size = int(header[2])
            if header[1] == b"blob":
                found[header[0].decode()] = out[at : at + size]
            at += size + 1
    return found


# git apply's complaints, by what they mean for the person undoing. A path can draw several
# (a failed hunk then "patch does not apply"); the more specific reason wins.
_APPLY_REASONS = (
    (re.compile(rb"^error: patch failed: (.*):\d+$"), "lines"),
    (re.compile(rb"^error: (.*): patch does not apply$"), "lines"),
    (re.compile(rb"^error: (.*): does not exist in (?:working directory|index)$"), "gone"),
    (re.compile(rb"^error: (.*): No such file or directory$"), "gone"),
    (re.compile(rb"^error: (.*): already exists in working directory$"), "back"),
    (re.compile(rb"^error: (.*): wrong type$"), "replaced"),
    (re.compile(rb"^error: affected file '(.*)' is beyond a symbolic link$"), "replaced"),
    (re.compile(rb"^error: reading from '(.*)' beyond a symbolic link$"), "replaced"),
    (re.compile(rb"^error: new mode \(\d+\) of (.*) does not match old mode \(\d+\)$"), "replaced"),
)
# The mode on a patch's "index" line, for regular files. Without it git apply keeps the mode
# the file has now, so a later `chmod +x` survives the undo; symlinks keep theirs, so a link
# put where the turn left a file is still refused. (Binary patch lines are base85: no spaces.)
_INDEX_MODE = re.compile(rb"^(index [0-9a-f]+\.\.[0-9a-f]+) 100(?:644|755)$", re.MULTILINE)
_APPLY_WORDS = {
    "lines": "later changes touch the same lines of {}",
    "gone": "{} was deleted or renamed later",
    "back": "{} was created again later",
    "replaced": "{} was replaced later by a symbolic link or another kind of file",
}


def revert_between(*, workspace: Workspace, old: str, new: str) -> None:
    """Undo the change from snapshot `old` to snapshot `new` on the files on disk now, keeping
    later edits that do not overlap it. All or nothing: when a later edit touches the same
    lines (or deleted, re-created or replaced a file the change made), RepoError in words, and
    no file has changed."""
    doing = "Undoing the changes"
    change = _tree_diff(workspace, old, new, "-p", "--binary", doing=doing)
    if not change:
        return
    change = _INDEX_MODE.sub(rb"\1", change)
    # git apply works on files relative to its current directory, not to --work-tree (without
    # --index it never sets the work tree up; from "/" it would patch /src/app.py): -C puts it
    # at the top of the tree, where the paths in the patch resolve. It checks every file before
    # writing any, reads and replaces symlinks as links, and refuses paths behind one.
    argv = [
        "git", *_HARDENING, *sandbox_git.FLAGS, "-C", sandbox_git.TREE,
        "-c", "apply.ignoreWhitespace=no",  # exact matches only, whatever config says
        "apply", "-R", "--binary", "--whitespace=nowarn", "-",
    ]  # fmt: skip
    code, _, err = _ws_run(workspace, argv, doing=doing, input=change)
    if code:
        raise RepoError(_why_not_applied(err))


def _why_not_applied(stderr: bytes) -> str:
    reasons: dict[bytes, str] = {}
    for line in stderr.splitlines():
        for pattern, reason in _APPLY_REASONS:
            if match := pattern.match(line):
                if reason != "lines" or match[1] not in reasons:
                    reasons[match[1]] = reason
                break
    if not reasons:
        return f"Undo could not be applied: {_explain(stderr, None)}"
    by_reason: dict[str, list[str]] = {}
    for path, reason in reasons.items():
        by_reason.setdefault(reason, []).append(path.decode("utf-8", "replace"))
    parts = [_APPLY_WORDS[reason].format(_names(paths)) for reason, paths in by_reason.items()]
    return f"Undo could not be applied: {'; '.join(parts)}. Undo the later turn first."


def _names(paths: list[str]) -> str:
    shown = paths[:3] + ([f"{len(paths) - 3} more"] if len(paths) > 3 else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def commit_all(*, workspace: Workspace, message: str, author_name: str, author_email: str) -> str:
    """Commit every change on disk to the work branch; the new (or unchanged) HEAD.

    Plumbing, not `git commit`: it runs no hooks, signs nothing and never opens an editor."""
    doing = "Saving the changes"
    tree, _ = _snapshot_then(workspace, doing=doing)  # nested repositories as plain directories
    parent = head(workspace=workspace)
    if tree == _ws_git(workspace, "rev-parse", f"{parent}^{{tree}}", doing=doing).decode().strip():
        return parent
    # The person who asked is author and committer; <, > and newlines would forge the header.
    email = re.sub(r"[<>\s]", "", author_email)
    name = re.sub(r"[<>\r\n]", "", author_name).strip() or email
    who = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email}
    who |= {"GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    sha = _ws_git(
        workspace, "commit-tree", tree, "-p", parent, "-F", "-",
        doing=doing, env=who, input=message.encode(),
    ).decode().strip()  # fmt: skip
    # The index follows, so that git status in the tree shows nothing left to commit.
    code, _, err = _ws_sh(
        workspace,
        'g update-ref -m "tandem: commit" HEAD "$1" "$2" && g read-tree "$1" || exit 1\n'
        "g update-index -q --refresh >/dev/null; exit 0",
        sha, parent,
        doing=doing,
    )  # fmt: skip
    if code:
        raise RepoError(f"{doing} failed: {_explain(err, None)}")
    return sha


def head(*, workspace: Workspace) -> str:
    out = _ws_git(workspace, "rev-parse", "--verify", "HEAD", doing="Reading the last commit")
    return out.decode().strip()


def undo_to(*, workspace: Workspace, commit: str) -> None:
    """Put the work branch and the files back exactly as they were at `commit`."""
    doing = "Undoing the changes"
    sha = _checked_sha(commit)
    found = _ws_git(
        workspace, "rev-parse", "--verify", "--quiet", f"{sha}^{{commit}}",
        doing=doing, ok_codes=(0, 1),
    )  # fmt: skip
    if not found.strip():
        raise RepoError("That point is not in this conversation's history.")
    _ws_git(workspace, "reset", "--quiet", "--hard", sha, doing=doing)
    _ws_git(workspace, "clean", "-ffdq", doing=doing)  # -ff: nested repositories go too


def push(*, workspace: Workspace, remote_branch: str) -> str:
    """Push the work branch's HEAD to a branch of the remote (never forced); the pushed sha."""
    repo = workspace.repository
    _git("check-ref-format", "--branch", remote_branch, doing=f"Using the name “{remote_branch}”")
    url, sha = validate_url(repo.url), head(workspace=workspace)
    # From a throwaway repository whose config is ours, reading the workspace's objects: the
    # workspace's config is never consulted while credentials are around (url.*.insteadOf
    # there could send the token elsewhere, remote.*.receivepack could run a command).
    with tempfile.TemporaryDirectory(prefix="tandem-push-") as tmp, _remote_env(repo) as remote:
        _git("init", "--bare", "--quiet", "--template=", "--", tmp, doing="Pushing")
        env = {**remote, "GIT_OBJECT_DIRECTORY": str(git_dir(workspace=workspace) / "objects")}
        _git(
            f"--git-dir={tmp}", "push", "--quiet", "--", url, f"{sha}:refs/heads/{remote_branch}",
            doing="Pushing", env=env, timeout=NETWORK_TIMEOUT,
        )  # fmt: skip
    return sha


def _checked_sha(value: str) -> str:
    # Only full object ids reach git here: nothing option-like, nothing a ref could shadow.
    if not _SHA.fullmatch(value or ""):
        raise RepoError("That is not a commit id.")
    return value


def remove_orphans(*, older_than: float = 3600) -> int:
    """Delete mirrors and workspaces whose row is gone (a repository or conversation was
    deleted); how many directories went. Young directories stay: a workspace being created
    has its files before its row."""
    removed = 0
    for pattern, model in (("*/*/workspaces/*", Workspace), ("*/*", Repository)):
        for directory in repos_root().glob(pattern):
            if time.time() - directory.lstat().st_mtime < older_than or not directory.is_dir():
                continue
            # A name that is no UUID is None, which matches no row: such a directory goes too.
            if not model.objects.filter(uuid=_uuid(directory.name)).exists():  # type: ignore[misc]
                _rmtree(directory)
                removed += 1
    return removed


def _uuid(name: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(name)
    except ValueError:
        return None
