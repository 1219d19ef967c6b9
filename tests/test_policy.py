"""Which commands run without asking: the team's allowlist, matched on whole words, and never
for a command with shell syntax; admins edit it on the settings page."""

from __future__ import annotations

import pytest
from django.test import Client

from assistant import policy
from assistant.models import Approval

ALLOW = ["pytest", "npm test", "python3 -m pytest"]


@pytest.mark.parametrize(
    "command",
    ["pytest", "pytest -x tests/test_a.py", "npm test", "npm test -- --watch=false",
     "python3 -m pytest -q", "  pytest   -q  "],
)  # fmt: skip
def test_allowed(command):
    assert policy.command_allowed(command, ALLOW)


@pytest.mark.parametrize(
    "command",
    [
        "pytest; rm -rf /", "pytest && curl x", "pytest | tee out", "pytest > out.txt",
        "pytest $(whoami)", "pytest `id`", "pytest\nrm -rf .", "pytest & sleep 1",
        "pytestx", "npm", "npm install", "python3 -c 'print(1)'", "'pytest", "(pytest)",
        "PYTEST=1 pytest", "pytest \\; rm",
    ],
)  # fmt: skip
def test_asked(command):
    assert not policy.command_allowed(command, ALLOW)


def test_only_run_command_asks():
    assert policy.approval_for("read_file", {"path": "x"}, []) == Approval.NOT_NEEDED
    assert policy.approval_for("edit_file", {"path": "x"}, []) == Approval.NOT_NEEDED
    assert policy.approval_for("run_command", {"command": "ls"}, []) == Approval.ASKED
    assert policy.approval_for("run_command", {"command": "ls"}, ["ls"]) == Approval.ALLOWLISTED
    assert policy.approval_for("run_command", "not a dict", ["ls"]) == Approval.ASKED


def test_allowlist_validation():
    assert policy.validate_allowlist("pytest\n\n  npm   test \n# a comment\npytest") == (
        "pytest\nnpm test"
    )
    for bad in ("pytest; ls", "make && x", "echo $HOME", "'unclosed", "x" * 201):
        with pytest.raises(ValueError):
            policy.validate_allowlist(bad)


@pytest.mark.django_db
def test_admins_edit_the_allowlist(team, alice, bob):
    client = Client()
    client.force_login(alice)
    page = client.get("/t/acme/settings/").content.decode()
    assert page.count('data-testid="allowlist-form"') == 1
    assert "<title>Settings · Acme" in page
    response = client.post(
        "/t/acme/settings/agent/", {"allowlist": "pytest\nnpm test"}, follow=True
    )
    assert "2 command prefixes run without asking" in response.content.decode()
    team.refresh_from_db()
    assert team.command_allowlist == "pytest\nnpm test"

    response = client.post(
        "/t/acme/settings/agent/", {"allowlist": "pytest; rm -rf /"}, follow=True
    )
    assert "shell syntax" in response.content.decode()
    team.refresh_from_db()
    assert team.command_allowlist == "pytest\nnpm test"  # nothing lost

    member = Client()
    member.force_login(bob)
    assert member.post("/t/acme/settings/agent/", {"allowlist": "rm"}).status_code == 404
