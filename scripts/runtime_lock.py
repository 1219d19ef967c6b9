"""The runtime part of requirements.lock: what the container image installs.

    python scripts/runtime_lock.py [requirements.lock] > runtime.lock

The lock pins the test tools too (pytest, playwright, ruff, mypy, uv…). An image needs only
pyproject.toml's ``dependencies`` and what they pull in. uv writes, under each pinned package,
which packages it is there for (``# via celery``); following those links from the project's
own dependencies gives the runtime set. Each kept entry is copied as it is, hashes and markers
included, so ``pip install --require-hashes --no-deps -r runtime.lock`` installs exactly the
locked versions of exactly those packages.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "tandem"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_roots(pyproject: Path) -> set[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {normalize(re.match(r"[A-Za-z0-9_.-]+", dep)[0]) for dep in dependencies}


def parse(lock_text: str) -> tuple[list[str], list[tuple[str, list[str]]], dict[str, set[str]]]:
    """(header lines, each entry's package and lines, each package's dependents). A package may
    have several entries, one per platform marker (cbor2 for PyPy and for CPython)."""
    header: list[str] = []
    entries: list[tuple[str, list[str]]] = []
    dependents: dict[str, set[str]] = {}
    current: str | None = None
    in_via = False
    for line in lock_text.splitlines():
        start = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==", line)
        if start:
            current = normalize(start[1])
            entries.append((current, [line]))
            dependents.setdefault(current, set())
            in_via = False
            continue
        if current is None:
            header.append(line)
            continue
        entries[-1][1].append(line)
        via = re.match(r"^\s+# via(?: (.+))?$", line)
        if via:
            in_via = via[1] is None  # "# via" alone: a list follows, one "#   name" a line
            if via[1]:
                dependents[current].add(_via_name(via[1]))
            continue
        if in_via:
            item = re.match(r"^\s+#\s+(\S.*)$", line)
            if item:
                dependents[current].add(_via_name(item[1]))
            else:
                in_via = False
    return header, entries, dependents


def _via_name(text: str) -> str:
    # "tandem (pyproject.toml)", "celery", "-r requirements.in"…
    return normalize(text.split()[0])


def runtime_packages(dependents: dict[str, set[str]], roots: set[str]) -> set[str]:
    requires: dict[str, set[str]] = {}
    for package, users in dependents.items():
        for user in users:
            requires.setdefault(user, set()).add(package)
    keep: set[str] = set()
    todo = [root for root in roots if root in dependents]
    missing = roots - set(dependents)
    if missing:
        raise SystemExit(f"runtime_lock: not in the lock: {', '.join(sorted(missing))}")
    while todo:
        package = todo.pop()
        if package in keep:
            continue
        keep.add(package)
        todo.extend(requires.get(package, ()))
    return keep


def main(argv: list[str]) -> int:
    lock = Path(argv[0]) if argv else ROOT / "requirements.lock"
    pyproject = lock.parent / "pyproject.toml"
    header, entries, dependents = parse(lock.read_text())
    keep = runtime_packages(dependents, runtime_roots(pyproject))
    out = [
        "# The runtime part of requirements.lock (scripts/runtime_lock.py): "
        "pyproject.toml's dependencies and what they need, nothing for tests.",
    ]
    for package, lines in entries:
        if package in keep:
            out.extend(lines)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
