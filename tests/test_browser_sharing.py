"""Sharing in the browser, against the production topology: the owner shares a conversation
live with anyone who has the link; a signed-out browser opens it and watches a reply stream
in; the owner revokes the link; the viewer is cut off at once and a reload is 404."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from sharing.models import ShareLink
from tests.test_browser import expect_live, open_page, partial_text, send, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_anonymous_viewer_watches_live_until_the_link_is_revoked(
    stack, new_context, alice, conversation
):
    owner = open_page(new_context, "alice", stack)
    owner.context.grant_permissions(["clipboard-read", "clipboard-write"])
    # Links for anyone are the admins' decision: switch them on first.
    sign_in(owner, "alice@example.com", "/t/acme/shares/")
    owner.get_by_test_id("allow-public").check()
    owner.get_by_role("button", name="Save").click()
    expect(owner.get_by_test_id("allow-public")).to_be_checked()
    owner.goto(f"/t/acme/c/{conversation.uuid}/")
    expect_live(owner)

    owner.get_by_test_id("share").click()
    dialog = owner.locator("#share-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_test_id("audience-public").check()
    dialog.get_by_test_id("mode-live").check()
    dialog.get_by_test_id("expiry").select_option("1d")
    dialog.get_by_test_id("create-share").click()
    url_field = dialog.get_by_test_id("share-url")
    expect(url_field).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/s/[A-Za-z0-9_-]{43}/$"))
    url = url_field.input_value()
    dialog.get_by_test_id("copy-link").click()
    expect(dialog.get_by_test_id("copy-link")).to_have_text("Copied")
    assert owner.evaluate("navigator.clipboard.readText()") == url
    dialog.get_by_test_id("share-close").click()

    # A different browser, signed in nowhere.
    viewer = new_context("anonymous").new_page()
    response = viewer.goto(url)
    assert response.status == 200
    assert response.headers["x-robots-tag"] == "noindex, nofollow"
    expect(viewer.get_by_test_id("share-title")).to_have_text("Refactor the parser")
    expect(viewer.locator("#connection")).to_have_attribute("data-state", "live")
    expect(viewer.get_by_test_id("composer")).to_have_count(0)

    run_id = send(owner, "Tell me a story [[tokens=400 delay_ms=20]]")
    first = partial_text(viewer, run_id, 10)
    later = partial_text(viewer, run_id, len(first) + 20)
    assert later.startswith(first)  # it grows as it is written
    expect(viewer.locator(f"#run-{run_id}")).to_have_attribute("data-status", "running")
    expect(viewer.locator(f"#run-{run_id} [data-testid=stop]")).to_have_count(0)

    # The owner revokes it from the same dialog.
    owner.on("dialog", lambda prompt: prompt.accept())
    owner.get_by_test_id("share").click()
    row = dialog.get_by_test_id("share-row")
    expect(row).to_have_count(1)
    row.get_by_test_id("revoke").click()
    expect(row.get_by_test_id("revoked")).to_be_visible()

    expect(viewer.locator("#share-notice")).to_have_text("This link was revoked.")
    expect(viewer.locator("#connection")).to_have_attribute("data-state", "closed")
    frozen = viewer.locator(f"#run-{run_id} [data-testid=stream]").text_content()
    viewer.wait_for_timeout(500)
    assert viewer.locator(f"#run-{run_id} [data-testid=stream]").text_content() == frozen
    response = viewer.reload()
    assert response.status == 404
    expect(viewer.get_by_test_id("share-unavailable")).to_have_text("This link does not work")
    link = ShareLink.objects.get()
    assert link.revoked_by == alice and link.views == 1
