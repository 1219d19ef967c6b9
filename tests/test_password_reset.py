"""Password reset by email, through allauth's real forms."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_a_forgotten_password_is_reset_by_email(alice, mailoutbox):
    client = Client()
    response = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    link = re.search(r"http://[^\s]+/accounts/password/reset/key/[^\s]+", mailoutbox[0].body)
    assert link, mailoutbox[0].body
    path = link.group(0).split("://", 1)[1].split("/", 1)[1]
    form_page = client.get("/" + path, follow=True)
    assert form_page.status_code == 200
    response = client.post(
        form_page.redirect_chain[-1][0] if form_page.redirect_chain else "/" + path,
        {"password1": "a brand new passphrase 99", "password2": "a brand new passphrase 99"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("a brand new passphrase 99")
    assert not alice.check_password(PASSWORD)


def test_an_unknown_email_sends_no_reset_link(mailoutbox):
    Client().post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert all("/password/reset/key/" not in mail.body for mail in mailoutbox)


def test_sign_out_is_a_post(alice):
    client = Client()
    client.force_login(alice)
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302
    assert "/accounts/login/" in client.get("/").url
