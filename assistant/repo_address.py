"""Repository addresses: what a team may connect (https, ssh, scp-like, file:// or a local
path the operator allows, outside Tandem's own files and other teams' repositories), checked
before a Repository is saved and before every fetch. Its own module, below both the model
(Repository.clean) and assistant/repos.py, which had imported each other for it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db.models import Q

log = logging.getLogger(__name__)

_SCP_LIKE = re.compile(r"(?:[\w.~-]+@)?[A-Za-z0-9][\w.-]*:[^\s]+")


class RepoError(Exception):
    """A repository operation that cannot be done, with a message for the user."""


def repos_root() -> Path:
    return Path(settings.REPOS_ROOT).absolute()


def validate_url(url: str, *, team=None) -> str:
    """The address, stripped, or RepoError. Never holds a secret: tokens go in the credential.
    With ``team`` (adding a repository), a local path another team uses is refused too."""
    url = url.strip()
    if not url or url.startswith("-") or any(c in url for c in "\0\r\n"):
        raise RepoError("Enter a repository address.")
    if url.startswith("/"):
        _check_local(Path(url), team=team)
        return url
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RepoError("A file:// address names a path on this server: file:///path.")
        _check_local(Path(unquote(parts.path)), team=team)
        return url
    if parts.scheme in ("https", "ssh"):
        if not parts.hostname or parts.hostname.startswith("-"):
            raise RepoError("The address has no host name.")
        if parts.password:
            raise RepoError("Put the token in the credential field, not in the address.")
        return url
    # scp-like git@host:path; "::" would make git run a transport helper (ext::sh -c …).
    if "::" not in url and "://" not in url and _SCP_LIKE.fullmatch(url):
        return url
    raise RepoError(
        "Use an https:// or ssh:// address, git@host:path, a file:// URL or an absolute path."
    )


# Local repositories (a path or file://) are read with the server's own rights, so which ones a
# team may connect is the operator's call (REPOS_LOCAL_ROOTS, absolute directories):
# - production: none unless the operator names the directories they may come from;
# - embedded mode (one person's machine) with none named: anywhere, but what follows;
# - never inside Tandem's own data (TANDEM_DATA_DIR, REPOS_ROOT: other teams' mirrors and
#   workspaces) or its own files (BASE_DIR: settings, the generated secret key's neighbours);
#   a root inside one of those is ignored, with a warning at start-up;
# - never a repository another team connected by path (nor one inside it, or around it);
# - every check on the path with symlinks resolved (realpath).


def _private_dirs() -> list[tuple[Path, str]]:
    return [
        (repos_root().resolve(), "That path is inside Tandem's own data directory."),
        (Path(settings.DATA_DIR).resolve(), "That path is inside Tandem's own data directory."),
        (Path(settings.BASE_DIR).resolve(), "That path is inside Tandem's own installation."),
    ]


def _overlaps(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def local_roots() -> list[Path] | None:
    """The directories local repositories may come from; None: anywhere (embedded mode with
    none named); []: nowhere."""
    named = settings.REPOS_LOCAL_ROOTS
    if not named:
        return [] if settings.PRODUCTION else None
    roots = []
    for name in named:
        root = Path(name).resolve()
        private = [where for where, _ in _private_dirs() if root.is_relative_to(where)]
        if private:
            log.warning(
                "REPOS_LOCAL_ROOTS: ignoring %s, which is inside %s (Tandem's own files)",
                name,
                private[0],
            )
            continue
        roots.append(root)
    if not roots:  # every root named was refused: that is not "anywhere"
        return []
    return roots


def _check_local(path: Path, *, team=None) -> None:
    if not path.is_absolute():
        raise RepoError("A local repository is an absolute path.")
    resolved = path.resolve()
    for private, message in _private_dirs():
        if resolved.is_relative_to(private):
            raise RepoError(message)
    allowed = local_roots()
    if allowed is not None and not allowed:
        raise RepoError(
            "This server doesn't connect repositories by local path: use https:// or ssh://."
        )
    if allowed and not any(resolved.is_relative_to(root) for root in allowed):
        raise RepoError("Local repositories must be under " + ", ".join(map(str, allowed)) + ".")
    if team is not None and _used_by_another_team(resolved, team):
        raise RepoError("That path is another team's repository.")


def _used_by_another_team(resolved: Path, team) -> bool:
    # Through the team's relation, not an import: the Repository model imports this module
    # (its clean() checks its address), which must not import it back.
    others = (
        team.repositories.model.objects.exclude(team=team)
        .filter(Q(url__startswith="/") | Q(url__startswith="file:"))
        .values_list("url", flat=True)
    )
    for url in others:
        path = Path(unquote(urlsplit(url).path)) if url.startswith("file:") else Path(url)
        if path.is_absolute() and _overlaps(resolved, path.resolve()):
            return True
    return False
