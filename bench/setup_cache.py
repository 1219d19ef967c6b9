#!/usr/bin/env python
"""How long a new conversation takes to start from a kept prepared tree (assistant/environment.py).

    .venv/bin/python bench/setup_cache.py [--files 20000] [--dirs 200] [--repeat 5] [--image NAME]
                                          [--quota-only] [--no-write]

A kept tree of ``--files`` small files (a ``.venv`` of ``--dirs`` packages x N files, in a temporary
folder next to a fresh workspace tree, on the same file system, as under REPOS_ROOT) is sealed
as the server seals one, then restored into a fresh tree ``--repeat`` times per method:

- ``hardlink``: what a root server does on one file system (new directories, linked files,
  the sandbox uid's ACL on the directories);
- ``copy``: a plain copy (a server running as an ordinary user, or a workspace with a quota:
  its own file system);
- ``reflink``: only where the file system can clone (btrfs, XFS); skipped elsewhere;

and into a workspace with a disk quota (its own loop-mounted ext4, ``quota.prepare``; root
only), where nothing can be linked:

- ``overlay``: the kept tree mounted read-only under a writable upper layer in the workspace's
  file system (``overlays.mount``: a skeleton of its directories, then one mount);
- ``copy``: what such a workspace got before, and still gets where overlays are refused.

``--quota-only`` measures only these two (with, say, ``--dirs 2000``: the overlay's cost
follows the directories) and writes a section of its own.

Plus the one sandbox call a start makes before restoring (the lock files' digests, in the image
``--image`` when given, else the host's system). Median and worst per method; the goal is
<= 1 s for 20,000 files. Writes the table to docs/benchmarks.md under "## Prepared trees
(bench/setup_cache.py)", replacing only that section.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from assistant import environment, overlays, quota, sandbox  # noqa: E402
from assistant.sandbox import SandboxLimits  # noqa: E402

SCRIPT = "bench/setup_cache.py"
HEADING = f"## Prepared trees ({SCRIPT})"


def make_kept(folder: Path, files: int, packages: int = 200) -> None:
    per = max(1, files // packages)
    for p in range(packages):
        d = folder / ".venv" / "lib" / "python3.11" / "site-packages" / f"pkg{p}"
        d.mkdir(parents=True)
        for f in range(per):
            (d / f"mod{f}.py").write_text(f"VALUE_{p}_{f} = {f}\n" * 4)
    (folder / ".complete").write_text("{}\n")
    environment._seal(folder)


def restore_once(kept: Path, tree: Path, how: str) -> float:
    started = time.perf_counter()
    environment._copy(kept / ".venv", tree / ".venv", how)
    if os.geteuid() == 0:
        environment._grant_directories(tree / ".venv", sandbox.SANDBOX_UID)
    return time.perf_counter() - started


def restore_quota_once(kept: Path, workspace: Path, how: str) -> float:
    """One restore into a fresh workspace with a quota (made and removed outside the timing)."""
    quota.prepare(workspace)
    try:
        (workspace / "tree").mkdir()
        started = time.perf_counter()
        if how == "overlay":
            overlays.mount(workspace, kept, [".venv"])
        else:
            restore_once(kept, workspace / "tree", how)
        return time.perf_counter() - started
    finally:
        quota.release(workspace)
        shutil.rmtree(workspace, ignore_errors=True)


def digest_once(tree: Path, image: str | None) -> float:
    started = time.perf_counter()
    result = sandbox.run_sync(
        ["/bin/sh", "-c", environment._DIGEST],
        worktree=tree,
        limits=SandboxLimits(wall_seconds=30),
        image=image,
    )
    assert result.ok, result
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dirs", type=int, default=200, help="directories the files are in")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--image", default=None)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--quota-only", action="store_true", help="only the restores into quota workspaces"
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="tandem-bench-setup-"))
    base.chmod(0o711)
    rows = []
    try:
        kept = base / "kept"
        kept.mkdir()
        t0 = time.perf_counter()
        make_kept(kept, args.files, args.dirs)
        made = time.perf_counter() - t0
        count = sum(len(f) for _, _, f in os.walk(kept / ".venv"))
        probe = base / "probe"
        probe.mkdir()
        methods = ["hardlink"] if os.geteuid() == 0 else []
        methods.append("copy")
        if environment._can_reflink(kept, probe):
            methods.insert(0, "reflink")
        if args.quota_only:
            methods = []
        for how in methods:
            times = []
            for i in range(args.repeat):
                tree = base / f"tree-{how}-{i}"
                tree.mkdir()
                times.append(restore_once(kept, tree, how))
                shutil.rmtree(tree)
            rows.append((f"restore ({how})", statistics.median(times), max(times)))
        quota_methods = [] if quota.unavailable_reason() else ["copy"]
        if quota_methods and not overlays.unavailable_reason():
            quota_methods.insert(0, "overlay")
        for how in quota_methods:
            times = [
                restore_quota_once(kept, base / f"ws-{how}-{i}", how) for i in range(args.repeat)
            ]
            rows.append(
                (f"restore into a quota workspace ({how})", statistics.median(times), max(times))
            )
        tree = base / "tree-digest"
        tree.mkdir()
        (tree / "requirements.txt").write_text("pytest\n")
        digest_once(tree, args.image)  # warm: the image's /etc copy
        times = [digest_once(tree, args.image) for _ in range(args.repeat)]
        rows.append(
            (f"lock-file digests (sandbox, {args.image or 'host'})", statistics.median(times),
             max(times))
        )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)

    heading = HEADING
    if args.quota_only:  # a section of its own, beside the full run's
        heading = f"## Prepared trees in quota workspaces, {args.dirs:,} directories ({SCRIPT})"
    lines = [
        heading,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{'root' if os.geteuid() == 0 else 'an ordinary user'}, a kept `.venv` of {count:,} "
        f"files in {args.dirs:,} directories (made and sealed in {made:.1f} s), "
        f"{args.repeat} restores each into a fresh tree (on the same file system, or a "
        f"workspace's own); load average {os.getloadavg()[0]:.1f} "
        "(a machine shared with other work: the copy suffers most).",
        "",
        "| step | median | worst |",
        "|---|---:|---:|",
        *[f"| {name} | {med * 1000:.0f} ms | {worst * 1000:.0f} ms |" for name, med, worst in rows],
        "",
    ]
    digest = rows[-1][1]
    best = min(r[1] for r in rows[:-1])
    worst_method = max(r[1] for r in rows[:-1])
    lines += [
        f"A start from a kept tree costs the digests plus one restore: "
        f"{(digest + best) * 1000:.0f} ms with the fastest method here, "
        f"{(digest + worst_method) * 1000:.0f} ms with the slowest (goal: <= 1 s for 20,000 "
        "files).",
        "",
    ]
    if not args.quota_only:
        lines += [
            "Which method a server gets: reflink where the file system clones (btrfs, XFS: not "
            "measured here, ext4); hardlinks when it runs as root and the workspace is on the same "
            "file system as the kept tree (quota off); an **overlay** for a workspace with a disk "
            "quota (its own ext4: nothing can be linked or cloned into it) when the server runs as "
            "root and the kernel allows overlays: a skeleton of the kept directories in the "
            "workspace's upper layer and one mount, so its cost follows the directories "
            f"({args.dirs:,} here), not the files; a copy otherwise (a server running as an "
            "ordinary user, or a host that refuses overlays), which misses the goal by how much "
            "depending on the disk and the load.",
            "",
        ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        path = ROOT / "docs" / "benchmarks.md"
        text = path.read_text()
        pattern = re.compile(re.escape(heading) + r".*?(?=\n## |\Z)", re.S)
        text = (
            pattern.sub(table.rstrip("\n") + "\n", text)
            if pattern.search(text)
            else text.rstrip("\n") + "\n\n" + table
        )
        path.write_text(text)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
