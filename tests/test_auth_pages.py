"""allauth's pages drawn like the rest of the site (issue 16): the site's layout, a label for
every field, and a password's errors right under the password field, tied to it."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.django_db


def field_block(html: str, name: str) -> str:
    start = rf'<div class="field[^"]*" data-field="{name}">'
    end = r'</div>\s*(?=<div class="field|<input|<div class="row)'
    match = re.search(start + "(.*?)" + end, html, re.S)
    assert match, f"no field {name} in the form"
    return match.group(1)


def test_a_weak_password_is_refused_next_to_the_password_field(client):
    response = client.post(
        "/accounts/signup/",
        {"email": "zed@example.com", "password1": "short", "password2": "short"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="topbar"' in html and 'class="stack auth-form"' in html
    password = field_block(html, "password1")
    assert 'aria-invalid="true"' in password
    errors = password[password.index('data-testid="field-errors"') :]
    assert "too short" in errors
    assert password.index("<input") < password.index('data-testid="field-errors"')
    assert 'data-testid="field-errors"' not in field_block(html, "email")


@pytest.mark.parametrize(
    "path", ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"]
)
def test_every_field_has_a_label_and_the_sites_buttons(client, path):
    html = client.get(path).content.decode()
    assert 'class="topbar"' in html
    for field_id in re.findall(r'<input[^>]*type="(?:email|password|text)"[^>]*id="([^"]+)"', html):
        assert f'<label for="{field_id}">' in html, f"{path}: {field_id} has no label"
    assert re.search(r'<button class="primary"[^>]*type="submit"', html)


def test_a_wrong_password_says_so_above_the_form(client, alice):
    html = client.post(
        "/accounts/login/", {"login": alice.email, "password": "not the password"}
    ).content.decode()
    assert 'data-testid="form-errors"' in html and 'role="alert"' in html
    assert "not correct" in html
