"""Sign-up never tells whether an address has an account: with a taken address the answer is
the one a new account gets ("check your email"), no account is made, and the address's owner
is told by email that someone tried."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

TAKEN = "already registered"


def sign_up(email: str, password: str = PASSWORD):
    client = Client()
    response = client.post(
        "/accounts/signup/", {"email": email, "password1": password, "password2": password}
    )
    page = client.get(response["Location"]) if response.status_code == 302 else response
    return response, page


@pytest.fixture
def mandatory(settings):
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"


def test_a_taken_address_gets_the_same_answer_as_a_new_one(mandatory, alice, mailoutbox):
    fresh, fresh_page = sign_up("newcomer@example.com")
    taken, taken_page = sign_up("ALICE@example.com", "another password 99")
    assert fresh.status_code == taken.status_code == 302
    assert fresh["Location"] == taken["Location"] == "/accounts/confirm-email/"
    assert fresh_page.status_code == taken_page.status_code == 200
    assert TAKEN not in taken_page.content.decode()
    assert page_text(fresh_page) == page_text(taken_page)
    # No second account; Alice's password is unchanged; she is told.
    assert User.objects.filter(email__iexact="alice@example.com").count() == 1
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
    to_alice = [m for m in mailoutbox if m.to == ["alice@example.com"]]
    assert len(to_alice) == 1
    assert "already" in to_alice[0].body.lower() and "sign" in to_alice[0].body.lower()
    # The newcomer got a confirmation link, and is not signed in before using it.
    assert [m.to for m in mailoutbox if m.to != ["alice@example.com"]] == [["newcomer@example.com"]]


def page_text(response) -> str:
    """The page minus its CSRF token and the address typed in."""
    body = re.sub(r"[A-Za-z0-9]{64}", "<csrf>", response.content.decode())
    return re.sub(r"(?i)newcomer|alice", "<who>", body)


def test_with_optional_verification_a_taken_address_is_not_an_error(alice, mailoutbox):
    # Embedded mode's default: a new account is signed in at once (that can't be imitated),
    # but the form never says the address is taken, and makes no second account.
    response, page = sign_up("alice@example.com", "another password 99")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert TAKEN not in page.content.decode()
    assert User.objects.filter(email__iexact="alice@example.com").count() == 1
    assert [m.to for m in mailoutbox] == [["alice@example.com"]]
