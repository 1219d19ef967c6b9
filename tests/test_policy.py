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


# --- Prefixes that run the repository's code --------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["pytest", "make test", "make", "npm test", "npm run", "python", "python3 -m pytest",
     "./script", "scripts/check.sh", "cargo test", "go test", "tox", "yarn", "bash", "env pytest",
     "timeout 60 make check", "FOO=1 npm test", "uv run", "bundle exec rspec", "gradle",
     "run.py"],
)  # fmt: skip
def test_prefixes_that_run_repository_code(prefix):
    assert policy.runs_repository_code(prefix)


@pytest.mark.parametrize("prefix", ["ls", "cat", "git status", "git diff", "rg", "wc -l", "echo"])
def test_prefixes_that_do_not(prefix):
    assert not policy.runs_repository_code(prefix)


def test_a_guarded_entry_asks_once_the_run_changed_files():
    allow, guarded = ["pytest", "ls"], {"pytest"}
    pytest_call = {"command": "pytest -x"}
    ask = policy.approval_for
    assert ask("run_command", pytest_call, allow, guarded=guarded) == Approval.ALLOWLISTED
    assert ask("run_command", pytest_call, allow, guarded=guarded, changed=True) == Approval.ASKED
    # Unguarded entries and other commands are as before.
    assert ask("run_command", {"command": "ls"}, allow, guarded=guarded, changed=True) == (
        Approval.ALLOWLISTED
    )
    assert ask("run_command", pytest_call, allow, changed=True) == Approval.ALLOWLISTED


def test_what_counts_as_changing_files():
    assert policy.changes_files("write_file", {"path": "a"}, read_only=False)
    assert policy.changes_files("edit_file", {"path": "a"}, read_only=False)
    assert not policy.changes_files("read_file", {"path": "a"}, read_only=True)
    assert not policy.changes_files("run_command", {"command": "git diff"}, read_only=False)
    assert not policy.changes_files("run_command", {"command": "ls -la src"}, read_only=False)
    for command in ("pytest", "echo x > f", "cat a; touch b", "sed -i s/a/b/ f", "cat x | sh"):
        assert policy.changes_files("run_command", {"command": command}, read_only=False)


@pytest.mark.django_db
def test_the_settings_page_warns_and_guards_entries_that_run_repository_code(team, alice):
    client = Client()
    client.force_login(alice)
    response = client.post(
        "/t/acme/settings/agent/", {"allowlist": "git status\nmake test"}, follow=True
    )
    team.refresh_from_db()
    # A new entry that runs the repository's code starts guarded; the page says why.
    assert team.command_allowlist_guarded == "make test"
    page = response.content.decode()
    assert page.count('data-testid="runs-code-warning"') == 1
    entry = page[page.index("<code>make test</code>") :]
    assert "Runs the repository's own code" in entry[:400]
    assert 'value="make test" checked' in entry

    # Unticked (the entry was shown): no longer guarded, and a warning says what that means.
    response = client.post(
        "/t/acme/settings/agent/",
        {"allowlist": "git status\nmake test", "shown": ["git status", "make test"]},
        follow=True,
    )
    team.refresh_from_db()
    assert team.command_allowlist_guarded == ""
    assert "can run anything it wrote this way without asking" in response.content.decode()

    # Ticked again.
    client.post(
        "/t/acme/settings/agent/",
        {"allowlist": "git status\nmake test", "shown": ["git status", "make test"],
         "guarded": ["make test"]},
    )  # fmt: skip
    team.refresh_from_db()
    assert policy.guarded_entries(team) == {"make test"}


@pytest.mark.django_db
def test_always_allow_guards_a_prefix_that_runs_repository_code(team):
    policy.allow_always(team, "pytest")
    policy.allow_always(team, "ls")
    team.refresh_from_db()
    assert policy.prefixes(team) == ["pytest", "ls"]
    assert policy.guarded_entries(team) == {"pytest"}
