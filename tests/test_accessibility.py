"""Every page through axe-core (issue 16): signed out, the account pages, each team page, a
conversation with a reply and a diff, the shared page, the API docs and the 404 page — at a
desktop and a phone size — with no serious or critical violation.

axe-core is vendored for the tests only (tests/vendor/README.md) and evaluated in the page
through Playwright (the site's Content-Security-Policy forbids injected script tags, not the
browser's own evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from assistant import diff_html
from assistant.models import Message, Role, Run, RunDiff, RunStatus
from sharing.models import ShareLink, new_token
from tests.test_approvals import waiting_command
from tests.test_browser import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = (Path(__file__).parent / "vendor" / "axe-core-4.10.3" / "axe.min.js").read_text()
RUN_AXE = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id} (${v.impact}): ${v.help} — ` +
            v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(" | "));
}"""

DIFF = """diff --git a/calc/ops.py b/calc/ops.py
--- a/calc/ops.py
+++ b/calc/ops.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""
REPLY = """Fixed `add`:

```python
def add(a, b):
    return a + b
```

| a | b |
|---|---|
| 1 | 2 |
"""


def violations(page: Page, path: str) -> list[str]:
    page.goto(path)  # "load": the pages render on the server; scripts only add to them
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE)
    return [f"{path}: {line}" for line in page.evaluate(RUN_AXE)]


def a_turn_with_a_diff(conversation, alice) -> None:
    message = Message.objects.create(
        conversation=conversation, role=Role.USER, author=alice, content="Fix add in calc/ops.py"
    )
    run = Run.objects.create(
        conversation=conversation,
        user_message=message,
        requested_by=alice,
        status=RunStatus.SUCCEEDED,
        tree_before="a" * 40,
        tree_after="b" * 40,
    )
    Message.objects.create(conversation=conversation, role=Role.ASSISTANT, content=REPLY, run=run)
    files = [
        {
            "path": "calc/ops.py",
            "old_path": "",
            "status": "M",
            "added": 1,
            "deleted": 1,
            "size": 40,
            "binary": False,
            "too_large": False,
            "shown": True,
        }
    ]
    RunDiff.objects.create(
        run=run,
        files=files,
        files_total=1,
        added=1,
        deleted=1,
        text=DIFF,
        html=diff_html.render(DIFF, files),
    )


@pytest.mark.parametrize(
    "size",
    [{"width": 1400, "height": 900}, {"width": 390, "height": 844}],
    ids=["desktop", "phone"],
)
def test_no_page_has_a_serious_accessibility_violation(
    stack, new_context, team, conversation, alice, no_runs, size
):
    a_turn_with_a_diff(conversation, alice)
    waiting_command(conversation, alice, "make test")
    token, token_hash = new_token()
    ShareLink.objects.create(
        conversation=conversation,
        created_by=alice,
        title=conversation.display_title,
        token_hash=token_hash,
    )
    page = new_context("axe", base_url=stack.base_url, viewport=size).new_page()
    page.set_default_navigation_timeout(30_000)  # two shared cores: patience, not a time limit
    found: list[str] = []
    for path in (
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/no/such/page/",
    ):
        found += violations(page, path)
    sign_in(page, alice.email)
    slug = team.slug
    for path in (
        f"/t/{slug}/",
        f"/t/{slug}/c/{conversation.uuid}/",
        f"/t/{slug}/approvals/",
        f"/t/{slug}/members/",
        f"/t/{slug}/api-keys/",
        f"/t/{slug}/repos/",
        f"/t/{slug}/shares/",
        f"/t/{slug}/slack/",
        f"/t/{slug}/settings/",
        f"/t/{slug}/usage/",
        "/api/v1/docs",
        "/accounts/email/",
        "/accounts/password/change/",
        "/accounts/3rdparty/",
        "/t/no-such-team/",
        f"/s/{token}/",
    ):
        found += violations(page, path)
    assert not found, "\n".join(found)
