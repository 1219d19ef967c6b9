"""Production mode, started the way an operator starts it: fresh processes, only the
environment. It refuses to start without what it needs, and `check --deploy` is clean."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "TANDEM_MODE": "production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "DATABASE_URL": "postgres://tandem:secret@127.0.0.1:5432/tandem",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "tandem.example",
}

SHOW_SETTINGS = """
import json, django
django.setup()
from django.conf import settings as s
print(json.dumps({name: getattr(s, name) for name in (
    "DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS", "SECURE_PROXY_SSL_HEADER", "SILENCED_SYSTEM_CHECKS",
    "ALLOWED_HOSTS", "RUN_EXECUTOR", "X_FRAME_OPTIONS", "SESSION_COOKIE_HTTPONLY",
    "REPOS_LOCAL_ROOTS", "SIGNUP_REQUIRES_INVITATION", "SHARE_FAILED_LOOKUPS_PER_MINUTE",
)}))
"""


def start(args: list[str], **env: str) -> subprocess.Popen:
    """A process with nothing from this test run's environment but PATH and HOME."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "DJANGO_SETTINGS_MODULE": "config.settings"}
    clean |= {name: value for name, value in env.items() if value is not None}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err


def shown(output: str) -> dict:
    """The settings SHOW_SETTINGS printed (start-up may log after them, on stderr)."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line[:1] == "{"))


def without(name: str) -> dict:
    return {**PRODUCTION, name: None}


# Each case: the variable left out, and what the operator must be told.
REFUSALS = {
    "SECRET_KEY": "SECRET_KEY is not set. Production mode refuses to start without it",
    "DATABASE_URL": "DATABASE_URL is not set",
    "REDIS_URL": "REDIS_URL is not set",
    "ALLOWED_HOSTS": "ALLOWED_HOSTS is not set",
}
DEPLOY_CHECK = ["manage.py", "check", "--deploy", "--fail-level", "WARNING"]


@pytest.fixture(scope="module")
def runs():
    """Every process this file needs, started at once: each is a second or two of start-up."""
    procs = {f"without {name}": start(["manage.py", "check"], **without(name)) for name in REFUSALS}
    procs["empty SECRET_KEY"] = start(["manage.py", "check"], **{**PRODUCTION, "SECRET_KEY": ""})
    procs["deploy"] = start(DEPLOY_CHECK, **PRODUCTION)
    # DEBUG on, a short key and cookies over plain HTTP: the check must fail for each.
    insecure = {**PRODUCTION, "DEBUG": "1", "SECRET_KEY": "short", "SECURE_COOKIES": "0"}
    procs["insecure deploy"] = start(DEPLOY_CHECK, **insecure)
    procs["settings"] = start(["-c", SHOW_SETTINGS], **PRODUCTION)
    procs["bad boolean"] = start(["manage.py", "check"], **{**PRODUCTION, "DEBUG": "maybe"})
    declared = {
        "REPOS_LOCAL_ROOTS": "/srv/git,/home/repos, /opt/more",
        "SIGNUP_REQUIRES_INVITATION": "1",
        "SHARE_FAILED_LOOKUPS_PER_MINUTE": "5",
    }
    procs["declared"] = start(["-c", SHOW_SETTINGS], **PRODUCTION, **declared)
    relative = {**PRODUCTION, "REPOS_LOCAL_ROOTS": "/srv/git,repos"}
    procs["relative root"] = start(["manage.py", "check"], **relative)
    results: dict[str, tuple[int, str]] = {}

    def result(name: str) -> tuple[int, str]:
        if name not in results:
            results[name] = finish(procs[name])
        return results[name]

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_it_refuses_to_start_without_what_production_needs(runs):
    for name, message in REFUSALS.items():
        code, output = runs(f"without {name}")
        assert code != 0, f"started without {name}"
        assert message in output, output[-1500:]
    code, output = runs("empty SECRET_KEY")
    assert code != 0 and REFUSALS["SECRET_KEY"] in output, output[-1500:]


def test_it_passes_the_deploy_check(runs):
    code, output = runs("deploy")
    assert code == 0, output
    assert "System check identified no issues" in output


def test_it_fails_the_deploy_check_when_it_should(runs):
    """Control: the check above can fail."""
    code, output = runs("insecure deploy")
    assert code != 0
    for warning in ("security.W018", "security.W009", "security.W012", "security.W016"):
        assert warning in output, output[-2000:]


def test_it_turns_on_https_only_settings(runs):
    code, output = runs("settings")
    assert code == 0, output
    # The settings are the one JSON line on stdout; start-up may log other lines around it.
    values = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    assert values["SESSION_COOKIE_HTTPONLY"] is True
    assert values["SECURE_HSTS_SECONDS"] >= 31536000
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["ALLOWED_HOSTS"] == ["tandem.example"]
    assert values["RUN_EXECUTOR"] == "celery"
    # Only the HSTS preload warning is silenced (preloading is an opt-in, SECURE_HSTS_PRELOAD).
    assert values["SILENCED_SYSTEM_CHECKS"] == ["security.W021"]


def test_it_refuses_a_boolean_it_cannot_read(runs):
    code, output = runs("bad boolean")
    assert code != 0
    assert "DEBUG must be a boolean (1/0, true/false), got 'maybe'" in output


def test_the_optional_settings_default_and_read_the_environment(runs):
    code, output = runs("settings")
    assert code == 0, output
    values = shown(output)
    assert values["REPOS_LOCAL_ROOTS"] == []
    assert values["SIGNUP_REQUIRES_INVITATION"] is False
    assert values["SHARE_FAILED_LOOKUPS_PER_MINUTE"] == 30
    code, output = runs("declared")
    assert code == 0, output
    values = shown(output)
    assert values["REPOS_LOCAL_ROOTS"] == ["/srv/git", "/home/repos", "/opt/more"]
    assert values["SIGNUP_REQUIRES_INVITATION"] is True
    assert values["SHARE_FAILED_LOOKUPS_PER_MINUTE"] == 5


def test_it_refuses_a_relative_local_root(runs):
    code, output = runs("relative root")
    assert code != 0
    assert "REPOS_LOCAL_ROOTS must list absolute paths, separated by commas." in output
