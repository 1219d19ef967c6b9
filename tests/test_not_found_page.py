"""A missing page (or someone else's) is the site's own page, the same for both."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_it_shows_the_sites_own_not_found_page(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert b"Not found" in response.content
    assert b'class="topbar"' in response.content  # the site's layout, not Django's bare page


def test_it_says_the_same_for_another_teams_page(client, alice, team):
    client.force_login(alice)
    missing = client.get("/t/no-such-team/")
    assert missing.status_code == 404
    assert b"alice@example.com" in missing.content  # still signed in, with the usual header
    assert b"belongs to a team you are not in" in missing.content
