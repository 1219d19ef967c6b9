#!/usr/bin/env python
"""A turn that writes 300 MB: how long the conversation page takes, and what it costs the web
process's memory.

    .venv/bin/python bench/diffs.py [--mb 300] [--files 3] [--repeat 15]
        [--db tandem_bench_diffs] [--json FILE]

See docs/benchmarks.md ("Huge diffs") for what it measured.

What it does, on this machine, against the local PostgreSQL and Redis (``DATABASE_URL``'s
server, ``REDIS_URL``; 127.0.0.1 by default):

1. Creates and migrates a database of its own (``--db``, dropped at the end), a team, a
   person, a conversation and a small repository, and attaches it.
2. Starts the production topology (Daphne, a Celery worker, the fake model) as the tests do.
3. Requests the conversation page a few times and waits until the web process's memory has
   settled (it imports litellm in the background at start): the "before" RSS.
4. Sends a message whose reply is slow to start; while it waits, ``--files`` files of
   ``--mb`` MB of text in all are written into the workspace, plus a small edit, so the turn's
   diff has them. Waits until the turn has finished and its diff is stored.
5. Requests the conversation page and the run's bubble ``--repeat`` times each (median, max),
   downloads the patch (size, time, and whether it was cut), and reads the web process's
   VmRSS and VmHWM again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MB = 1_000_000


def server_url() -> str:
    url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/tandem")
    return url.rsplit("/", 1)[0]


def psql(statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{server_url()}/postgres", autocommit=True) as conn:
        conn.execute(statement)


def memory(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split()[1]) // 1024
        for line in lines
        if line.startswith(("VmRSS:", "VmHWM:"))
    }


def settled(pid: int, timeout: float = 120) -> dict[str, int]:
    deadline, last = time.monotonic() + timeout, memory(pid)
    while time.monotonic() < deadline:
        time.sleep(3)
        now = memory(pid)
        if abs(now["VmRSS"] - last["VmRSS"]) < 1:
            return now
        last = now
    return last


def text_file(path: Path, size: int) -> None:
    line = b"all work and no play makes a very large diff\n"
    block = line * (1_048_576 // len(line))
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def timed(session, url: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = session.get(url, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--db", default="tandem_bench_diffs")
    parser.add_argument("--json")
    args = parser.parse_args()

    psql(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{args.db}"')
    tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-diffs-"))
    os.environ["DATABASE_URL"] = f"{server_url()}/{args.db}"
    os.environ["TANDEM_DATA_DIR"] = str(tmp / "data")
    os.environ["REPOS_ROOT"] = str(tmp / "data" / "repos")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["LOG_LEVEL"] = "WARNING"
    # Workspaces on the server's disk, not loop-mounted images (assistant/quota.py): what is
    # measured is the diff, and the bench leaves nothing mounted behind.
    os.environ.setdefault("WORKSPACE_QUOTA_MB", "0")
    import django

    django.setup()
    import requests
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from accounts.models import User
    from accounts.services import team_create
    from assistant import repos
    from assistant.models import Repository, Run, RunDiff
    from assistant.services import conversation_create, message_send
    from tests.conftest import start_stack
    from tests.helpers import session_cookie

    origin = tmp / "origin"
    origin.mkdir()
    (origin / "README.md").write_text("# Bench\n\nA small project.\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "B", "GIT_AUTHOR_EMAIL": "b@example.com"}
    env |= {"GIT_COMMITTER_NAME": "B", "GIT_COMMITTER_EMAIL": "b@example.com"}
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *command], cwd=origin, env=env, check=True)
    person = User.objects.create_user(email="bench@example.com", password="bench-password-42")
    team = team_create(name="Bench", slug="bench", owner=person)
    conversation = conversation_create(team=team, author=person, title="Huge diff")
    repository = Repository.objects.create(team=team, name="bench", url=str(origin))
    workspace = repos.create_workspace(conversation=conversation, repo=repository)

    stack = start_stack(tmp, db_name=args.db, redis_url=settings.REDIS_URL)
    try:
        web = stack.procs[1].pid
        session = requests.Session()
        session.cookies.set(settings.SESSION_COOKIE_NAME, session_cookie(person))
        page = f"{stack.base_url}/t/bench/c/{conversation.uuid}/"
        timed(session, page, 3)
        before = settled(web)

        run = message_send(
            conversation=conversation, author=person, content="[[tokens=3 first_token_ms=8000]]"
        ).run
        while not Run.objects.get(pk=run.pk).tree_before:
            time.sleep(0.05)
        tree = repos.workspace_path(workspace=workspace)
        started = time.monotonic()
        for i in range(args.files):
            text_file(tree / f"huge-{i}.log", args.mb * MB // args.files)
        (tree / "README.md").write_text("# Bench\n\nA small change too.\n")
        written = time.monotonic() - started
        while not (
            Run.objects.get(pk=run.pk).is_finished and RunDiff.objects.filter(run=run).exists()
        ):
            time.sleep(0.1)
        turn = time.monotonic() - started
        during = memory(web)

        page_ms = timed(session, page, args.repeat)
        bubble_ms = timed(session, f"{stack.base_url}/runs/{run.uuid}/", args.repeat)
        html = session.get(page, timeout=60).text
        assert "too large to show" in html, "the page does not name the huge files"
        started = time.perf_counter()
        size, tail = 0, b""
        with session.get(f"{page}patch/", stream=True, timeout=600) as response:
            for chunk in response.iter_content(65536):
                size += len(chunk)
                tail = (tail + chunk)[-300:]
        patch_s = time.perf_counter() - started
        after = memory(web)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        from django.db import connections

        connections.close_all()
        psql(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')

    result = {
        "written_mb": args.mb,
        "files": args.files,
        "write_s": round(written, 1),
        "turn_end_s": round(turn, 1),
        "page_ms": {"median": round(statistics.median(page_ms), 1), "max": round(max(page_ms), 1)},
        "bubble_ms": {
            "median": round(statistics.median(bubble_ms), 1),
            "max": round(max(bubble_ms), 1),
        },
        "patch": {
            "bytes": size,
            "seconds": round(patch_s, 2),
            "cut": b"the patch was cut" in tail,
        },
        "web_mb": {"before": before, "after_turn": during, "after_pages_and_patch": after},
        "web_rss_growth_mb": after["VmRSS"] - before["VmRSS"],
        "web_peak_growth_mb": after["VmHWM"] - before["VmHWM"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
