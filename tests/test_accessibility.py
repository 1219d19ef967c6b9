"""Every page through axe-core (issue 16): signed out, the account pages, each team page, a
conversation with a reply and a diff (folded, expanded, side by side), a file opened from a
reply, the shared page, the API docs and the 404 page — at a desktop and a phone size, in the
light and the dark colour scheme — with no serious or critical violation.

axe-core is vendored for the tests only (tests/vendor/README.md) and evaluated in the page
through Playwright (the site's Content-Security-Policy forbids injected script tags, not the
browser's own evaluation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from sharing.models import ShareLink, new_token
from tests.test_approvals import waiting_command
from tests.test_browser import sign_in
from tests.test_browser_diffs import a_turn_with_changes
from tests.test_browser_diffs import origin as origin

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = (Path(__file__).parent / "vendor" / "axe-core-4.10.3" / "axe.min.js").read_text()
RUN_AXE = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id} (${v.impact}): ${v.help} — ` +
            v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(" | "));
}"""


def violations(page: Page, path: str) -> list[str]:
    page.goto(path)  # "load": the pages render on the server; scripts only add to them
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE)
    return [f"{path}: {line}" for line in page.evaluate(RUN_AXE)]


@pytest.mark.parametrize(
    ("size", "scheme"),
    [
        ({"width": 1400, "height": 900}, "light"),
        ({"width": 390, "height": 844}, "light"),
        ({"width": 1400, "height": 900}, "dark"),
        ({"width": 390, "height": 844}, "dark"),
    ],
    ids=["desktop", "phone", "desktop-dark", "phone-dark"],
)
def test_no_page_has_a_serious_accessibility_violation(
    stack, new_context, team, conversation, alice, no_runs, origin, size, scheme
):
    a_turn_with_changes(conversation, alice, origin)
    waiting_command(conversation, alice, "make test")
    token, token_hash = new_token()
    ShareLink.objects.create(
        conversation=conversation,
        created_by=alice,
        title=conversation.display_title,
        token_hash=token_hash,
    )
    page = new_context(
        "axe", base_url=stack.base_url, viewport=size, color_scheme=scheme
    ).new_page()
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
    conversation_url = f"/t/{slug}/c/{conversation.uuid}/"
    found += violations(page, conversation_url)
    page.get_by_test_id("diff-expand").click()  # every file's rows, unified
    found += [f"{conversation_url} (expanded): {line}" for line in page.evaluate(RUN_AXE)]
    if size["width"] > 700:
        page.get_by_test_id("diff-split").click()  # and side by side
        found += [f"{conversation_url} (split): {line}" for line in page.evaluate(RUN_AXE)]
        page.get_by_test_id("diff-split").click()
    # A file opened from the reply, once the worker has read it; and one refused in words.
    page.locator("a.file-link").first.click()
    page.get_by_test_id("target-line").wait_for()
    page.evaluate(AXE)
    found += [f"{page.url}: {line}" for line in page.evaluate(RUN_AXE)]
    for path in (
        f"/t/{slug}/c/{conversation.uuid}/file/?path=calc",
        f"/t/{slug}/",
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
