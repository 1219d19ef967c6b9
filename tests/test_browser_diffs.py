"""A turn's diff and the files it names, in Chromium against the production topology (issue 16):
each file a folding section with line numbers (large ones folded), Expand all / Collapse all, a
side-by-side view remembered in this browser (unified on a phone); a path in the reply opens a
read-only view of the file at that line, read by the worker. Nothing scrolls sideways at
1400×900 or 390×844."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from assistant import diffs, file_links, repos
from assistant.models import Message, Repository, Role, Run, RunStatus, Workspace
from tests.test_browser import sign_in_to_conversation
from tests.test_browser_ui import DESKTOP, OVERFLOW, PHONE, in_view

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

expect.set_options(timeout=20_000)  # two shared cores: patience, never a time limit

OPS = "".join(f"def op_{i}(a, b):\n    return a + {i}\n\n" for i in range(60))  # 180 lines
REPLY = """Fixed the sign in `calc/ops.py:122` (`op_40`); the long one is docs/long.txt.

```python
def op_40(a, b):
    return a + 40  # was a - 40
```

| op | before | after |
|----|--------|-------|
| 40 | a - 40 | a + 40 |
"""


def git(cwd: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "O", "GIT_AUTHOR_EMAIL": "o@example.com"}
    env |= {"GIT_COMMITTER_NAME": "O", "GIT_COMMITTER_EMAIL": "o@example.com"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def origin() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="tandem-browser-diffs-"))
    parent.chmod(0o711)  # the sandbox runs as nobody: it must reach the mirror
    path = parent / "calc"
    (path / "calc").mkdir(parents=True)
    (path / "calc" / "ops.py").write_text(OPS.replace("a + 40", "a - 40"))
    (path / "docs").mkdir()
    (path / "docs" / "long.txt").write_text("".join(f"old line {i}\n" for i in range(200)))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        git(path, *args)
    yield path
    shutil.rmtree(parent, ignore_errors=True)


def a_turn_with_changes(conversation, alice, origin: Path) -> Workspace:
    """A workspace and a finished turn that fixed calc/ops.py and rewrote docs/long.txt: its
    diff stored as the worker stores it, its reply naming the file at a line."""
    repo = Repository.objects.create(team=conversation.team, name="calc", url=str(origin))
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    tree = repos.workspace_path(workspace=ws)
    before = repos.snapshot(workspace=ws)
    (tree / "calc" / "ops.py").write_text(OPS)
    (tree / "docs" / "long.txt").write_text("".join(f"new line {i}\n" for i in range(200)))
    after = repos.snapshot(workspace=ws)
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Fix op_40"
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        requested_by=alice,
        status=RunStatus.SUCCEEDED,
        tree_before=before,
        tree_after=after,
    )
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content=REPLY, run=run)
    diffs.record(run)
    Workspace.objects.filter(pk=ws.pk).update(tree=after)
    file_links.remember(ws, repos.tree_entries(workspace=ws, tree=after))
    return ws


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_diff_folds_per_file_shows_line_numbers_and_splits_where_there_is_room(
    stack, new_context, conversation, alice, origin, size
):
    a_turn_with_changes(conversation, alice, origin)
    viewport = DESKTOP if size == "desktop" else PHONE
    page = new_context(f"alice-{size}", base_url=stack.base_url, viewport=viewport).new_page()
    sign_in_to_conversation(page, alice.email, conversation)
    files = page.get_by_test_id("diff-file")
    expect(files).to_have_count(2)
    ops, long = files.filter(has_text="calc/ops.py"), files.filter(has_text="docs/long.txt")
    expect(ops.locator("summary")).to_contain_text("+1 −1")
    expect(long.locator("summary")).to_contain_text("+200 −200")
    # Small files open; a large one folded until asked for.
    expect(ops).to_have_attribute("open", "")
    expect(long).not_to_have_attribute("open", "")
    # The changed line with its old and new numbers (shown by CSS, never copied).
    changed = ops.locator("tr.da")
    expect(changed).to_contain_text("return a + 40")
    number = "(el) => getComputedStyle(el, '::before').content"
    assert changed.locator("td").nth(1).evaluate(number) == '"122"'
    assert ops.locator("tr.dd td").first.evaluate(number) == '"122"'
    assert changed.locator("td").first.evaluate(number) == "none"  # no old line

    page.get_by_test_id("diff-expand").click()
    expect(long).to_have_attribute("open", "")
    assert page.evaluate(OVERFLOW) <= 0
    page.get_by_test_id("diff-collapse").click()
    expect(ops).not_to_have_attribute("open", "")

    ops.locator("summary").click()
    split = ops.locator(".diff-split-table")
    if size == "phone":
        # No room beside each other: the choice is not offered, and if made on a wide screen
        # the phone still shows the unified rows.
        expect(page.get_by_test_id("diff-split")).to_be_hidden()
        page.evaluate("localStorage.setItem('tandem.diffView', 'split')")
        page.reload()
        expect(page.locator("html")).to_have_attribute("data-diff-view", "split")
        expect(ops.locator("tr.da")).to_be_visible()
        expect(split).to_be_hidden()
    else:
        page.get_by_test_id("diff-split").click()
        expect(page.get_by_test_id("diff-split")).to_have_attribute("aria-pressed", "true")
        expect(split).to_be_visible()
        row = split.locator("tr", has_text="return a + 40")
        expect(row.locator("td.dd")).to_have_text("    return a - 40")
        expect(row.locator("td.da")).to_have_text("    return a + 40")
        expect(ops.locator("tr.da")).to_be_hidden()
        page.reload()  # remembered
        expect(split).to_be_visible()
        long.locator("summary").click()  # built when opened
        expect(long.locator(".diff-split-table")).to_be_visible()
        page.get_by_test_id("diff-split").click()
        expect(split).to_be_hidden()
    assert page.evaluate(OVERFLOW) <= 0


@pytest.mark.parametrize("size", ["desktop", "phone"])
def test_a_path_in_a_reply_opens_the_file_at_that_line(
    stack, new_context, conversation, alice, origin, size
):
    a_turn_with_changes(conversation, alice, origin)
    viewport = DESKTOP if size == "desktop" else PHONE
    page = new_context(f"alice-{size}", base_url=stack.base_url, viewport=viewport).new_page()
    sign_in_to_conversation(page, alice.email, conversation)
    links = page.locator("a.file-link")
    expect(links).to_have_count(2)  # calc/ops.py:122 and docs/long.txt; not op_40
    links.first.click()
    # The worker reads the file from the turn's snapshot; the page shows it when it has.
    target = page.get_by_test_id("target-line")
    expect(target).to_contain_text("return a + 40")
    expect(target).to_have_attribute("id", "L122")
    expect(page.get_by_test_id("file-view").locator("tr")).to_have_count(180)
    page.wait_for_function("document.getElementById('L122').getBoundingClientRect().top > 0")
    assert in_view(page, "#L122")
    assert page.evaluate(OVERFLOW) <= 0
