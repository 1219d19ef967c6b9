"""A turn's changes: read bounded in the worker, stored, and served from the database; the patch
download streamed from git with a cap. The last test runs a turn that writes 300 MB against
the real stack and watches the web process's memory."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client

from assistant import diff_html, diffs, jobs, rendering, repos
from assistant.models import Message, Repository, Role, Run, RunDiff, RunStatus, Workspace
from tests import test_repos

pytestmark = pytest.mark.django_db

MB = 1_000_000
# test_repos's origin (a small project), its repository row and a workspace of it.
root, origin, repo, workspace = (
    test_repos.root,
    test_repos.origin,
    test_repos.repo,
    test_repos.workspace,
)


def tree_of(ws: Workspace) -> Path:
    return repos.workspace_path(workspace=ws)


def text_file(path: Path, size: int, line: bytes = b"all work and no play makes a diff\n"):
    """``size`` bytes of text, written in big blocks (fast)."""
    block = line * (1_048_576 // len(line))
    with open(path, "wb") as fh:
        left = size
        while left > 0:
            fh.write(block[:left])
            left -= len(block)


def turn(ws: Workspace, change) -> tuple[str, str]:
    before = repos.snapshot(workspace=ws)
    change(tree_of(ws))
    return before, repos.snapshot(workspace=ws)


def finished_run(ws: Workspace, alice, before: str, after: str) -> Run:
    conversation = ws.conversation
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Change things"
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        status=RunStatus.SUCCEEDED,
        tree_before=before,
        tree_after=after,
    )
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content="Done.")
    return run


def by_path(fields: dict) -> dict[str, dict]:
    return {f["path"]: f for f in fields["files"]}


def test_a_turns_changes_are_listed_counted_and_shown(workspace):
    def change(tree: Path) -> None:
        (tree / "README.md").write_text("# Demo\n\nA bigger project.\n")
        (tree / "NEW.md").write_text("one\ntwo\n")
        (tree / "src" / "util.py").unlink()
        (tree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00changed\x00")

    fields = diffs.compute(
        workspace=workspace, **dict(zip(("old", "new"), turn(workspace, change), strict=True))
    )
    files = by_path(fields)
    assert set(files) == {"README.md", "NEW.md", "src/util.py", "logo.png"}
    assert files["NEW.md"]["status"] == "A" and files["NEW.md"]["added"] == 2
    assert files["src/util.py"]["status"] == "D" and files["src/util.py"]["deleted"] == 2
    assert files["README.md"]["added"] == 1 and files["README.md"]["deleted"] == 1
    assert files["logo.png"]["binary"] and files["logo.png"]["added"] is None
    assert all(f["shown"] and not f["too_large"] for f in files.values())
    assert "+A bigger project." in fields["text"] and "+two" in fields["text"]
    assert "Binary files" in fields["text"]
    assert fields["html"].count("A bigger project") == 1
    assert (fields["added"], fields["deleted"], fields["clipped"]) == (3, 3, False)


def test_files_above_the_cap_are_named_with_their_size_and_never_diffed(settings, workspace):
    settings.DIFF_MAX_FILE_BYTES = 100_000

    def change(tree: Path) -> None:
        for name in ("huge-1.txt", "huge-2.txt"):
            text_file(tree / name, 3 * MB)
        (tree / "README.md").write_text("# Demo\n\nStill small.\n")

    old, new = turn(workspace, change)
    fields = diffs.compute(workspace=workspace, old=old, new=new)
    files = by_path(fields)
    for name in ("huge-1.txt", "huge-2.txt"):
        assert files[name]["too_large"] and files[name]["size"] == 3 * MB
        assert files[name]["added"] is None and not files[name]["shown"]
        assert name not in fields["text"]
    assert files["README.md"]["shown"] and "+Still small." in fields["text"]
    assert len(fields["text"]) < 1000


def test_each_file_and_the_turn_are_cut_at_their_caps(settings, workspace):
    settings.DIFF_MAX_TOTAL_BYTES = 4000  # a file keeps at most half

    def change(tree: Path) -> None:
        (tree / "a-long.txt").write_text("".join(f"line {i}\n" for i in range(2000)))
        (tree / "b-short.txt").write_text("short\n")
        for name in ("c.txt", "d.txt", "e.txt", "f.txt"):
            (tree / name).write_text("".join(f"{name} {i}\n" for i in range(300)))

    old, new = turn(workspace, change)
    fields = diffs.compute(workspace=workspace, old=old, new=new)
    files = by_path(fields)
    assert len(fields["text"].encode()) <= 4000
    assert fields["clipped"]
    assert files["a-long.txt"]["shown"] and files["a-long.txt"]["clipped"]
    assert files["a-long.txt"]["added"] == 2000  # counted whole, shown in part
    assert "+line 10\n" in fields["text"] and "+line 1999" not in fields["text"]
    assert files["b-short.txt"]["shown"] and "+short" in fields["text"]
    assert not files["f.txt"]["shown"]  # no room left
    assert fields["files_total"] == 6


def test_at_most_diff_max_files_are_listed(settings, workspace):
    settings.DIFF_MAX_FILES = 3

    def change(tree: Path) -> None:
        for i in range(5):
            (tree / f"new-{i}.txt").write_text(f"{i}\n")

    old, new = turn(workspace, change)
    fields = diffs.compute(workspace=workspace, old=old, new=new)
    assert [f["path"] for f in fields["files"]] == ["new-0.txt", "new-1.txt", "new-2.txt"]
    assert fields["files_total"] == 5 and fields["clipped"]
    assert "+2" in fields["text"] and "new-3.txt" not in fields["text"]


def git_forbidden(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the web process ran git on a workspace")

    monkeypatch.setattr(repos, "_run_git", refuse)
    monkeypatch.setattr(repos.GitStream, "__iter__", refuse)


def test_pages_read_the_stored_diff_and_never_run_git(settings, workspace, alice, monkeypatch):
    settings.DIFF_MAX_FILE_BYTES = 100_000

    def change(tree: Path) -> None:
        text_file(tree / "huge.txt", 2 * MB)
        (tree / "README.md").write_text("# Demo\n\nShown.\n")

    run = finished_run(workspace, alice, *turn(workspace, change))
    diffs.record(run)
    git_forbidden(monkeypatch)
    client = Client()
    client.force_login(alice)
    for url in (f"/runs/{run.uuid}/", f"/t/acme/c/{workspace.conversation.uuid}/"):
        html = client.get(url).content.decode()
        assert "Changed 2 files" in html
        assert "too large to show (2.0 MB)" in html
        assert 'data-testid="too-large-notice"' in html
        assert "Shown." in html


def test_a_turn_without_a_stored_diff_is_handed_to_the_worker(workspace, alice, monkeypatch):
    run = finished_run(
        workspace, alice, *turn(workspace, lambda tree: (tree / "x.txt").write_text("x\n"))
    )
    asked = []
    monkeypatch.setattr(jobs, "enqueue", lambda name, *args: asked.append((name, args)))
    jobs._asked.clear()
    git_forbidden(monkeypatch)
    client = Client()
    client.force_login(alice)
    html = client.get(f"/runs/{run.uuid}/").content.decode()
    assert "Reading the changes of this turn" in html
    client.get(f"/runs/{run.uuid}/")  # asked once, however many look
    assert asked == [("record_diff", (str(run.uuid),))]
    monkeypatch.undo()
    jobs.record_diff(str(run.uuid))  # what the worker does
    assert RunDiff.objects.get(run=run).files[0]["path"] == "x.txt"


def test_the_patch_is_written_by_the_worker_and_says_when_it_was_cut(
    settings, workspace, alice, queued_jobs
):
    from assistant import jobs

    client = Client()
    client.force_login(alice)
    url = f"/t/acme/c/{workspace.conversation.uuid}/patch/"
    assert client.get(url).status_code == 409  # no finished turn yet
    settings.PATCH_MAX_BYTES = 50_000
    _, after = turn(workspace, lambda tree: text_file(tree / "big.txt", 200_000))
    Workspace.objects.filter(pk=workspace.pk).update(tree=after)
    waiting = client.get(url)
    assert waiting.status_code == 202 and b"Preparing the patch" in waiting.content
    assert b'http-equiv="refresh"' in waiting.content  # the page asks again by itself
    assert client.get(url).status_code == 202 and len(queued_jobs) == 1  # one job, not two
    jobs.repo_job(*queued_jobs[0][1])
    response = client.get(url)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert len(body) < 50_000 + 1000
    assert body.startswith(b"diff --git a/big.txt b/big.txt")
    assert body.rstrip().endswith(b"will not apply. Push the branch to get all of it.")
    # Below the cap it is whole, and applies (test_agent checks that), with no notice. A new
    # turn (another tree) gets a new patch.
    settings.PATCH_MAX_BYTES = 1_000_000
    _, later = turn(workspace, lambda tree: text_file(tree / "more.txt", 1_000))
    Workspace.objects.filter(pk=workspace.pk).update(tree=later)
    assert client.get(url).status_code == 202
    jobs.repo_job(*queued_jobs[1][1])
    whole = b"".join(client.get(url).streaming_content)
    assert b"# Tandem" not in whole and len(whole) > 200_000 and b"more.txt" in whole


# --- The real stack -----------------------------------------------------------------------------


def rss_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        line.split(":")[0]: int(line.split()[1])
        for line in status.splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }


def settled_rss(pid: int, timeout: float = 90) -> dict[str, int]:
    """The process's memory once it has stopped growing (3 s within 1 MB)."""
    deadline = time.monotonic() + timeout
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(3)
        now = rss_kb(pid)
        if abs(now["VmRSS"] - last["VmRSS"]) < 1024:
            return now
        last = now
    raise AssertionError(f"the web process's memory never settled: {last}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_turn_writing_300_mb_leaves_the_web_process_small(
    tmp_path_factory,
    redis_clean,
    conversation,
    team,
    alice,
    origin,  # noqa: F811
    monkeypatch,
):
    import requests
    from django.conf import settings as django_settings

    from assistant.services import message_send
    from assistant.tasks import execute_run

    # The run goes to this test's stack, on its own queue (see below).
    monkeypatch.setattr(
        "assistant.runner.enqueue_run",
        lambda run_id: execute_run.apply_async(args=[run_id], queue="tandem-test-diffs"),
    )
    from tests.conftest import start_stack
    from tests.helpers import session_cookie

    stack = start_stack(
        tmp_path_factory.mktemp("stack-diffs"),
        db_name=django_settings.DATABASES["default"]["NAME"],
        redis_url=django_settings.REDIS_URL,
        # A queue of its own: the session's stack shares this broker, and its worker (with
        # the default PATCH_MAX_BYTES) must not take this stack's jobs.
        extra_env={"PATCH_MAX_BYTES": str(20 * MB), "CELERY_QUEUE": "tandem-test-diffs"},
    )
    ws = None
    try:
        repository = Repository.objects.create(team=team, name="demo", url=str(origin))
        ws = repos.create_workspace(conversation=conversation, repo=repository, branch="main")
        session = requests.Session()
        session.cookies.set(django_settings.SESSION_COOKIE_NAME, session_cookie(alice))
        page = f"{stack.base_url}/t/acme/c/{conversation.uuid}/"
        web = stack.procs[1].pid
        for _ in range(3):  # warm: templates, imports, the first queries
            assert session.get(page, timeout=30).status_code == 200
        before = settled_rss(web)  # the server imports litellm in the background at start

        # The model takes its time to answer: meanwhile "the turn" writes 300 MB of text.
        sent = message_send(
            conversation=conversation, author=alice, content="[[tokens=3 first_token_ms=5000]]"
        )
        run = sent.run
        deadline = time.monotonic() + 30
        while not Run.objects.get(pk=run.pk).tree_before:
            assert time.monotonic() < deadline, "the turn never started"
            time.sleep(0.05)
        tree = tree_of(ws)
        for i in range(3):
            text_file(tree / f"huge-{i}.log", 90 * MB)
        for i in range(2):
            text_file(tree / f"mid-{i}.txt", 12 * MB, b"twelve megabytes of lines\n")
        (tree / "README.md").write_text("# Demo\n\nA small change too.\n")
        deadline = time.monotonic() + 120
        while not RunDiff.objects.filter(run=run).exists():
            assert time.monotonic() < deadline, "the diff was never stored"
            time.sleep(0.2)
        while not Run.objects.get(pk=run.pk).is_finished:
            assert time.monotonic() < deadline, "the turn never finished"
            time.sleep(0.1)

        print("after the turn", rss_kb(web))
        stored = RunDiff.objects.get(run=run)
        files = {f["path"]: f for f in stored.files}
        assert all(files[f"huge-{i}.log"]["too_large"] for i in range(3))
        assert files["huge-0.log"]["size"] == 90 * MB
        assert files["mid-0.txt"]["too_large"] and files["README.md"]["shown"]
        assert len(stored.text) <= django_settings.DIFF_MAX_TOTAL_BYTES

        timings = {}
        for url in (page, f"{stack.base_url}/runs/{run.uuid}/"):
            started = time.monotonic()
            response = session.get(url, timeout=30)
            timings[url] = time.monotonic() - started
            assert response.status_code == 200
            html = response.text
            assert "too large to show (90.0 MB)" in html and "A small change too." in html
            assert 'data-testid="too-large-notice"' in html

        print("after the pages", rss_kb(web))
        # The worker writes the patch (a job); the page answers 202 until it is there.
        while session.get(f"{page}patch/", timeout=30).status_code == 202:
            assert time.monotonic() < deadline + 60, "the patch was never written"
            time.sleep(0.3)
        with session.get(f"{page}patch/", stream=True, timeout=60) as response:
            assert response.status_code == 200
            size, tail = 0, b""
            for chunk in response.iter_content(65536):
                size += len(chunk)
                tail = (tail + chunk)[-400:]
        assert size < 20 * MB + 1000
        assert b"the patch was cut at 20,000,000 bytes (PATCH_MAX_BYTES)" in tail

        after = rss_kb(web)
        grown = {key: (after[key] - before[key]) / 1024 for key in after}
        print(f"web RSS before {before}, after {after} (kB); grown {grown} MB; {timings}")
        assert grown["VmRSS"] < 50, grown
        assert grown["VmHWM"] < 50, grown  # no spike on the way either
    finally:
        stack.stop()
        if ws is not None:
            repos._rmtree(repos._workspace_dir(ws))  # 300 MB of files and their objects


def test_the_migration_gives_existing_workspaces_their_latest_tree(workspace, alice):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("assistant.migrations.0006_turn_diff")
    first = finished_run(workspace, alice, "a" * 40, "b" * 40)
    second = finished_run(workspace, alice, "b" * 40, "c" * 40)
    Run.objects.filter(pk=first.pk).update(finished=second.created)
    Run.objects.filter(pk=second.pk).update(finished=second.created + timedelta(seconds=1))
    finished_run(workspace, alice, "", "")  # a turn without a repository's trees
    migration.latest_trees(apps, None)
    workspace.refresh_from_db()
    assert workspace.tree == "c" * 40


# --- How a stored diff reads: line numbers, a section per file, folding ----------------------


def test_each_file_is_a_section_with_its_counts_and_every_line_its_numbers(workspace):
    def change(tree: Path) -> None:
        (tree / "README.md").write_text("# Demo\n\nA bigger <b>project</b>.\n")
        (tree / "long.txt").write_text("".join(f"line {i}\n" for i in range(300)))
        (tree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00changed\x00")

    old, new = turn(workspace, change)
    html = diffs.compute(workspace=workspace, old=old, new=new)["html"]
    sections = html.split('<details class="diff-file"')[1:]
    assert len(sections) == 3
    readme = next(s for s in sections if "README.md" in s.split("</summary>")[0])
    # Its header: status, path, counts; open (small). Lines: old and new numbers.
    assert readme.startswith(' data-testid="diff-file" data-lines="5" open>')
    assert '<span class="added">+1</span> <span class="deleted">−1</span></summary>' in readme
    assert '<tr class="dc"><td data-ln="1"><td data-ln="1"><td># Demo<tr' in readme
    assert '<tr class="dd"><td data-ln="3"><td><td>A small project.<tr' in readme
    assert '<tr class="da"><td><td data-ln="3"><td>A bigger &lt;b&gt;project&lt;/b&gt;.' in readme
    long = next(s for s in sections if "long.txt" in s.split("</summary>")[0])
    assert " open>" not in long.split("<summary>")[0]  # 300 lines: folded at first
    assert '<tr class="da"><td><td data-ln="300"><td>line 299</tbody>' in long
    binary = next(s for s in sections if "logo.png" in s.split("</summary>")[0])
    assert '<span class="muted">binary</span>' in binary and "Binary file" in binary


def test_a_diff_stored_before_line_numbers_is_shown_with_them(workspace, alice):
    run = finished_run(workspace, alice, "a" * 40, "b" * 40)
    text = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -4 +4 @@\n-old\n+new\n"
    files = [{"path": "x.py", "old_path": "", "status": "M", "added": 1, "deleted": 1}]
    files[0] |= {"shown": True, "size": 4, "binary": False, "too_large": False}
    RunDiff.objects.create(run=run, files=files, files_total=1, text=text, html="<span>old</span>")
    run.refresh_from_db()
    html = rendering.run_changes(run, workspace)["diff_html"]
    assert html.startswith(diff_html.MARK) and '<td data-ln="4"><td>new' in html


def test_renames_notes_and_names_are_rendered_as_words_never_markup():
    text = (
        "diff --git a/old.txt b/new <b>.txt\nsimilarity index 90%\nrename from old.txt\n"
        "rename to new <b>.txt\n--- a/old.txt\n+++ b/new <b>.txt\n@@ -1 +1 @@\n"
        "-<script>alert(1)</script>\n+fine\n\\ No newline at end of file\n"
    )
    entry = {"path": "new <b>.txt", "old_path": "old.txt", "status": "R", "shown": True}
    html = diff_html.render(text, [{**entry, "added": 1, "deleted": 1, "clipped": True}])
    assert "<script>" not in html and "<b>" not in html
    assert '<span class="diff-path">old.txt → new &lt;b&gt;.txt</span>' in html
    assert "(cut short)" in html and 'aria-label="Changes to old.txt → new &lt;b&gt;.txt"' in html
    assert '<tr class="dd"><td data-ln="1"><td><td>&lt;script&gt;alert(1)&lt;/script&gt;' in html
    assert '<tr class="dn"><td><td><td>\\ No newline at end of file' in html
