"""The lock file: `requirements.lock` pins every package, direct and transitive, with hashes.

    python scripts/lockfile.py lock     re-resolve the ranges and rewrite the lock
    python scripts/lockfile.py check    exit 1, in one line, if pyproject.toml and the lock disagree

The lock is compiled by uv (`uv pip compile --universal --generate-hashes`): one file that pip
installs with `--require-hashes`, so installing needs nothing but pip. Its first line records a
digest of what it was resolved from (requires-python and the dependency lists of pyproject.toml);
a change there without `make lock` is caught by `check` before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
MARK = "# pyproject-digest: "


def pyproject_digest() -> str:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    inputs = {
        "requires-python": project.get("requires-python", ""),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {
            extra: sorted(deps) for extra, deps in project.get("optional-dependencies", {}).items()
        },
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def recorded_digest() -> str | None:
    if not LOCK.exists():
        return None
    first = LOCK.read_text().splitlines()[:1]
    return first[0][len(MARK) :].strip() if first and first[0].startswith(MARK) else None


def check() -> int:
    recorded = recorded_digest()
    if recorded is None:
        print(
            "requirements.lock is missing or has no digest line: run `make lock`.", file=sys.stderr
        )
        return 1
    if recorded != pyproject_digest():
        print(
            "pyproject.toml's dependencies changed since requirements.lock was made: "
            "run `make lock` and commit requirements.lock.",
            file=sys.stderr,
        )
        return 1
    return 0


def lock(uv: str) -> int:
    scratch = LOCK.with_suffix(".lock.new")
    if LOCK.exists():
        shutil.copyfile(LOCK, scratch)
    command = [
        uv, "pip", "compile", str(PYPROJECT.relative_to(ROOT)),
        "--all-extras",              # test, and the optional plugins' (devops)
        "--universal",               # one lock for every platform and Python the project accepts
        "--python-version", "3.11",  # the oldest Python in requires-python
        "--generate-hashes",
        "--no-header",
        # The current lock is read as preferences: packages keep their pins unless the new
        # ranges need otherwise (`make lock` is not an upgrade of everything).
        "--output-file", str(scratch),
    ]  # fmt: skip
    env = {**os.environ, "UV_NO_CONFIG": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    resolved = scratch.read_text() if scratch.exists() else ""
    scratch.unlink(missing_ok=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    header = (
        f"{MARK}{pyproject_digest()}\n"
        "# Made by `make lock` (scripts/lockfile.py, uv pip compile) from pyproject.toml.\n"
        "# Do not edit by hand; `make run` and `make test` install exactly this.\n"
    )
    LOCK.write_text(header + resolved)
    pinned = [line for line in resolved.splitlines() if "==" in line and line[:1] != " "]
    print(f"Wrote {LOCK.name}: {len(pinned)} pinned packages.")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["check"]:
        sys.exit(check())
    if len(sys.argv) == 3 and sys.argv[1] == "lock":
        sys.exit(lock(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
