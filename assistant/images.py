"""Sandbox images: root file systems the sandbox mounts read-only instead of the host's ``/usr``.

An image is a Debian root built with ``mmdebstrap --variant=minbase`` from the apt sources the
machine already uses, kept at ``DATA_DIR/images/NAME/root`` with ``manifest.json`` beside it
(packages, suite, built-at, size). It is built in a temporary directory next to it and renamed
into place, so a half-built image is never used. ``host`` is not an image on disk: it is the
server's own system, for development only.

Each repository names its image (``Repository.sandbox_image``; ``SANDBOX_DEFAULT_IMAGE`` for new
ones). A call whose image is not built on this machine fails with a sentence saying how to build
it; it never falls back to the host's system.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HOST = "host"
HOST_LABEL = "host — development only: the server's own system"
MMDEBSTRAP = "mmdebstrap"
DEFAULT_SUITE = "bookworm"
# The common stacks: Python (venv, pip, `python`), Node (npm), C toolchains, git, ripgrep...
# python3 and ripgrep are needed by the file tools themselves (sandbox_helper), git by git_*.
DEFAULT_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "nodejs",
    "npm",
    "build-essential",
    "make",
    "git",
    "ripgrep",
    "curl",
    "ca-certificates",
)
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?")
_SUITE = re.compile(r"[a-z][a-z0-9-]*")
SOURCES = Path("/etc/apt/sources.list")
SOURCES_D = Path("/etc/apt/sources.list.d")


class ImageError(Exception):
    """An image could not be built, found or removed; the message says why in one sentence."""


@dataclass(frozen=True)
class Image:
    name: str
    root: Path | None  # None: the host's own system
    packages: tuple[str, ...] = ()
    suite: str = ""
    built_at: str = ""
    size_bytes: int = 0

    @property
    def is_host(self) -> bool:
        return self.root is None

    @property
    def label(self) -> str:
        return HOST_LABEL if self.is_host else self.name


def images_dir() -> Path:
    from django.conf import settings

    return Path(settings.SANDBOX_IMAGES_DIR)


def default_image() -> str:
    from django.conf import settings

    return settings.SANDBOX_DEFAULT_IMAGE or HOST


def check_name(name: str) -> str:
    if name == HOST:
        return name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ImageError(
            f"“{name}” is not a valid image name: use lower-case letters, digits, '.', '_' "
            "and '-' (at most 63, starting with a letter or digit)."
        )
    return name


def missing_sentence(name: str) -> str:
    return (
        f"the sandbox image '{name}' is not built on this worker: "
        f"run manage.py sandboximage build {name}"
    )


def root_of(name: str, base: Path | None = None) -> Path | None:
    """The root file system of image ``name`` (None for ``host``), or ImageError if not built."""
    check_name(name)
    if name == HOST:
        return None
    root = (base or images_dir()) / name / "root"
    if not (root / "usr").is_dir():
        raise ImageError(missing_sentence(name))
    return root


def get(name: str, base: Path | None = None) -> Image:
    if name == HOST:
        return Image(HOST, None)
    root = root_of(name, base)
    assert root is not None  # only the host has none, answered above
    try:
        manifest = json.loads((root.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    return Image(
        name=name,
        root=root,
        packages=tuple(manifest.get("packages") or ()),
        suite=str(manifest.get("suite") or ""),
        built_at=str(manifest.get("built_at") or ""),
        size_bytes=int(manifest.get("size_bytes") or 0),
    )


def available(base: Path | None = None) -> list[Image]:
    """``host`` first, then every image built on this machine, by name."""
    found = [Image(HOST, None)]
    folder = base or images_dir()
    with contextlib.suppress(OSError):
        for entry in sorted(folder.iterdir()):
            if _NAME.fullmatch(entry.name) and (entry / "root" / "usr").is_dir():
                found.append(get(entry.name, folder))
    return found


def choices(current: str = "", on_disk: list[Image] | None = None) -> list[tuple[str, str]]:
    """(value, label) for a form: the images on disk, and ``current`` even when it is not.
    A page with many repositories passes ``on_disk`` (``available()``) read once."""
    found = [(image.name, image.label) for image in (on_disk or available())]
    if current and current not in {name for name, _ in found}:
        found.append((current, f"{current} (not built on this machine)"))
    return found


def remove(name: str, base: Path | None = None) -> None:
    check_name(name)
    if name == HOST:
        raise ImageError("the host image is the server's own system; it cannot be removed.")
    folder = base or images_dir()
    target = folder / name
    if not target.is_dir():
        raise ImageError(f"there is no sandbox image '{name}' on this machine.")
    # Out of the way first (atomic), then deleted: a call never sees half an image.
    doomed = Path(tempfile.mkdtemp(prefix=f".{name}.removed-", dir=folder))
    os.rename(target, doomed / name)
    shutil.rmtree(doomed, ignore_errors=True)


# --- Building -----------------------------------------------------------------------------------


def cannot_build() -> str | None:
    """One line saying what this machine lacks to build images, or None."""
    if shutil.which(MMDEBSTRAP) is None:
        return "cannot build sandbox images: mmdebstrap is not installed (apt-get install it)"
    if os.geteuid() != 0:
        return "cannot build sandbox images: this needs root (mmdebstrap's root mode)"
    if not (SOURCES.exists() or SOURCES_D.is_dir()):
        return "cannot build sandbox images: this is not Debian (no /etc/apt sources to build from)"
    return None


def check_packages(packages) -> tuple[str, ...]:
    out = []
    for raw in packages:
        name = raw.strip()
        if not name:
            continue
        if not _PACKAGE.fullmatch(name):
            raise ImageError(f"“{name}” is not a Debian package name.")
        if name not in out:
            out.append(name)
    return tuple(out)


def host_sources(suite: str) -> list[str]:
    """The machine's apt sources as one-line ``deb`` entries for ``suite``.

    Read from /etc/apt/sources.list and sources.list.d (``*.list`` and deb822 ``*.sources``);
    only entries of the host's own distribution (their suite is its codename, or
    codename-updates / -security) are kept, with the codename replaced by ``suite``.
    """
    entries: list[tuple[str, str, str, str]] = []  # (options, uri, suite, components)
    files = [SOURCES] if SOURCES.is_file() else []
    if SOURCES_D.is_dir():
        files += sorted(p for p in SOURCES_D.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            entries += _deb822_entries(text)
        else:
            entries += _one_line_entries(text)
    codename = _host_codename()
    out = []
    for options, uri, their_suite, components in entries:
        base, _, tail = their_suite.partition("-")
        if codename and base != codename:
            continue  # another vendor's repository (nodesource, a cloud SDK...): not Debian's
        new_suite = suite + ("-" + tail if tail else "")
        line = f"deb {'[' + options + '] ' if options else ''}{uri} {new_suite} {components}"
        if line not in out:
            out.append(line)
    return out


def _host_codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME":
                return value.strip().strip('"')
    return ""


def _one_line_entries(text: str) -> list[tuple[str, str, str, str]]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        options = ""
        if rest.startswith("["):
            options, _, rest = rest[1:].partition("]")
        parts = rest.split()
        if len(parts) >= 3:
            out.append((options.strip(), parts[0], parts[1], " ".join(parts[2:])))
    return out


def _deb822_entries(text: str) -> list[tuple[str, str, str, str]]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        options = []
        if fields.get("signed-by", "").startswith("/"):
            options.append(f"signed-by={fields['signed-by']}")
        if fields.get("architectures"):
            options.append(f"arch={','.join(fields['architectures'].split())}")
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                out.append((" ".join(options), uri, suite, fields.get("components", "main")))
    return out


def build(
    name: str,
    packages=DEFAULT_PACKAGES,
    *,
    suite: str = DEFAULT_SUITE,
    base: Path | None = None,
    log=None,
) -> Image:
    """Build image ``name`` with mmdebstrap and put it in place (replacing one of that name)."""
    check_name(name)
    if name == HOST:
        raise ImageError("“host” is the server's own system; give the image another name.")
    if why := cannot_build():
        raise ImageError(why)
    if not _SUITE.fullmatch(suite):
        raise ImageError(f"“{suite}” is not a Debian suite name.")
    packages = check_packages(packages)
    sources = host_sources(suite)
    if not sources:
        raise ImageError(
            "cannot build sandbox images: no Debian entry in /etc/apt/sources.list(.d)"
        )
    folder = base or images_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the sandbox's uid (as root: nobody) reads the images
    work = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=folder))
    try:
        root = work / "root"
        argv = [MMDEBSTRAP, "--variant=minbase", "--mode=root", "--quiet"]
        if packages:
            argv.append("--include=" + ",".join(packages))
        # Nothing the image doesn't need at run time: apt's lists and caches, docs.
        argv += ["--aptopt=APT::Install-Recommends false"]
        argv += ["--dpkgopt=path-exclude=/usr/share/man/*"]
        argv += [suite, str(root), *sources]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ImageError(f"mmdebstrap failed ({proc.returncode}): " + " | ".join(tail))
        if log is not None and proc.stderr.strip():
            log(proc.stderr.strip())
        work.chmod(0o755)
        root.chmod(0o755)
        manifest = {
            "name": name,
            "packages": list(packages),
            "suite": suite,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "size_bytes": _size(root),
            "sources": sources,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (work / "manifest.json").chmod(0o644)
        target = folder / name
        if target.exists():  # swap: the old one out of the way, the new one in, then delete
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=folder))
            os.rename(target, old / name)
            os.rename(work, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return get(name, folder)


def _size(root: Path) -> int:
    total, seen = 0, set()
    for top, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, f))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def human_size(n: int) -> str:
    return f"{n / 1_000_000:.0f} MB" if n else "—"
