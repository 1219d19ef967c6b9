"""Team admins set the team's model; the API key is encrypted at rest and never shown back."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Team

pytestmark = pytest.mark.django_db

SECRET = "sk-live-very-secret-key-0123456789"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_it_saves_the_model_and_encrypts_the_key(team, alice):
    client = signed_in(alice)
    response = client.post(
        "/t/acme/settings/",
        {
            "llm_model": "anthropic/claude-sonnet-4-5",
            "llm_api_base": "https://llm.example.com",
            "llm_api_key": SECRET,
            "llm_temperature": "0.3",
        },
    )
    assert response.status_code == 302
    team = Team.objects.get(slug="acme")
    assert team.llm_model == "anthropic/claude-sonnet-4-5"
    assert team.llm_temperature == 0.3
    assert team.llm_api_key == SECRET
    assert SECRET not in team.llm_api_key_encrypted  # ciphertext at rest
    page = client.get("/t/acme/settings/").content.decode()
    assert SECRET not in page
    assert "a key is stored" in page
    assert "anthropic/claude-sonnet-4-5" in page


def test_an_empty_key_field_keeps_the_stored_key(team, alice):
    team.llm_api_key = SECRET
    team.save()
    signed_in(alice).post("/t/acme/settings/", {"llm_model": "openai/gpt-4o"})
    assert Team.objects.get(slug="acme").llm_api_key == SECRET


def test_the_key_can_be_removed(team, alice):
    team.llm_api_key = SECRET
    team.save()
    signed_in(alice).post("/t/acme/settings/", {"clear_api_key": "on"})
    assert Team.objects.get(slug="acme").llm_api_key == ""


def test_it_refuses_bad_values(team, alice):
    response = signed_in(alice).post(
        "/t/acme/settings/", {"llm_api_base": "not a url", "llm_temperature": "7"}
    )
    assert response.status_code == 200
    assert b"Enter a valid URL" in response.content
    assert b"less than or equal to 2" in response.content


def test_members_cannot_see_or_change_settings(team, bob):
    client = signed_in(bob)
    assert client.get("/t/acme/settings/").status_code == 404
    assert client.post("/t/acme/settings/", {"llm_model": "x"}).status_code == 404
    assert Team.objects.get(slug="acme").llm_model == ""


def test_test_connection_reports_success_and_failure_in_words(team, alice, provider_port):
    team.llm_model = "openai/fake-model"
    team.llm_api_base = f"http://127.0.0.1:{provider_port}/v1"
    team.llm_api_key = "test-key"
    team.save()
    client = signed_in(alice)
    ok = client.post("/t/acme/settings/test/").content.decode()
    assert "Connection works" in ok and "answered in" in ok
    team.llm_api_key = "bad-key"
    team.save()
    failed = client.post("/t/acme/settings/test/").content.decode()
    assert "Connection failed" in failed and "rejected the API key" in failed
    assert "bad-key" not in failed


def test_test_connection_tries_the_unsaved_form_values(team, alice, provider_port):
    client = signed_in(alice)
    form = {
        "llm_model": "openai/fake-model",
        "llm_api_base": f"http://127.0.0.1:{provider_port}/v1",
        "llm_api_key": "bad-key",
    }
    failed = client.post("/t/acme/settings/test/", form).content.decode()
    assert "rejected the API key" in failed
    ok = client.post("/t/acme/settings/test/", {**form, "llm_api_key": "k"}).content.decode()
    assert "Connection works" in ok
    assert Team.objects.get(slug="acme").llm_model == ""  # nothing was saved
    invalid = client.post("/t/acme/settings/test/", {"llm_api_base": "nope"}).content.decode()
    assert "Enter a valid URL" in invalid
