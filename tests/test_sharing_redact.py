"""Redaction of secrets from shared content: the team's configured secrets, common token
formats, and the held-back end of text that is still streaming."""

from __future__ import annotations

import pytest

from sharing.content import Lens, LiveText, live_text
from sharing.redact import MARK, Redactor, deep, stable

# Fake credentials in the shapes the real ones have.
GITHUB = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
FINE_GRAINED = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ"
GITLAB = "glpat-" + "Ab3dEf6hIj9kLm2nOp5q"
OPENAI = "sk-proj-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe"
ANTHROPIC = "sk-ant-api03-" + "abcdefghijklmnopqrstuvwxyz0123456789ABCD"
AWS = "AKIA" + "IOSFODNN7EXAMPLE"
SLACK = "xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
KEY_BODY = "MIIEowIBAAKCAQEAx4Uq3Bn0cFzUfL9dHq1Jk2lT5yR8vW3ZxPq7Nn0Rr"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n" + KEY_BODY + "\n" + KEY_BODY[::-1] + "\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(
    "secret",
    [GITHUB, FINE_GRAINED, GITLAB, OPENAI, ANTHROPIC, AWS, SLACK, GOOGLE, JWT, PRIVATE_KEY],
    ids=[
        "github",
        "github-fine-grained",
        "gitlab",
        "openai",
        "anthropic",
        "aws",
        "slack",
        "google",
        "jwt",
        "private-key",
    ],
)
def test_it_redacts_common_token_formats(secret):
    text = f"before {secret} after"
    out = Redactor()(text)
    assert out == f"before {MARK} after"


def test_it_redacts_a_private_key_block_that_was_cut_off():
    out = Redactor()("key:\n-----BEGIN OPENSSH PRIVATE KEY-----\n" + KEY_BODY)
    assert out == f"key:\n{MARK}"
    assert KEY_BODY not in out


def test_it_redacts_authorization_headers_and_bearer_tokens():
    out = Redactor()(
        'curl -H "Authorization: Bearer abc.def-123456" https://x\n'
        "authorization=token 0123456789abcdef\n"
        "Bearer q1w2e3r4t5y6"
    )
    assert "abc.def-123456" not in out
    assert "0123456789abcdef" not in out
    assert "q1w2e3r4t5y6" not in out
    assert f"Authorization: Bearer {MARK}" in out


def test_it_redacts_passwords_in_urls_and_assignments():
    out = Redactor()(
        "git clone https://deploy:hunter2hunter2@git.example.com/repo.git\n"
        "postgres://app:s3cr3t@db:5432/app\n"
        "GET /login?user=a&password=letmein&x=1\n"
        "DB_PASSWORD=correcthorse\nGITHUB_TOKEN='abc123abc123'\n"
    )
    for secret in ("hunter2hunter2", "s3cr3t", "letmein", "correcthorse", "abc123abc123"):
        assert secret not in out, secret
    assert f"https://deploy:{MARK}@git.example.com/repo.git" in out
    assert f"DB_PASSWORD={MARK}" in out


def test_it_leaves_ordinary_text_and_code_alone():
    text = (
        "def get_token(self):\n    token = self.session.token\n    return token\n"
        "See https://example.com/docs?page=2 and skip-list, AKIA is a prefix.\n"
        "```python\nprint('hello')\n```"
    )
    assert Redactor()(text) == text


def test_it_redacts_the_teams_configured_secrets_and_their_pieces():
    llm_key = "my-provider-key-7c1f"
    ssh_key = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "QyNTUxOQAAACBxZmFrZWtleWZha2VrZXlmYWtla2V5\n-----END OPENSSH PRIVATE KEY-----"
    )
    redact = Redactor([llm_key, "deploy-user:tok3n-value-99", ssh_key, "", "short"])
    out = redact(
        f"key {llm_key}; cred tok3n-value-99; "
        "one line of the key: QyNTUxOQAAACBxZmFrZWtleWZha2VrZXlmYWtla2V5 printed; short stays"
    )
    assert llm_key not in out
    assert "tok3n-value-99" not in out
    assert "QyNTUxOQAAACBxZmFrZWtleWZha2VrZXlmYWtla2V5" not in out
    assert "short stays" in out  # values too short to be a secret are not hunted for


def test_it_hides_member_emails_when_asked():
    redact = Redactor(emails=["alice@example.com"])
    assert redact("Author: Alice <ALICE@example.com>") == "Author: Alice <[email]>"


def test_it_redacts_every_string_of_a_context_but_the_kept_keys():
    context = {"id": GITHUB, "text": GITHUB, "parts": [{"output": GITHUB}], "n": 3}
    out = deep(context, Redactor(), skip=frozenset({"id"}))
    assert out == {"id": GITHUB, "text": MARK, "parts": [{"output": MARK}], "n": 3}


def test_stable_holds_back_the_last_word_and_a_key_header():
    assert stable("hello wor") == "hello "
    assert stable("hello world\n") == "hello world\n"
    assert stable("no-space-yet") == ""
    assert stable("see -----BEGIN RSA PRIV") == "see "
    assert stable("a ---") == "a "


def test_streamed_text_never_shows_a_piece_of_a_secret():
    """Every prefix of a reply, as a live viewer would get it one character at a time: what is
    shown only grows, and never holds a fragment of a secret."""
    team_secret = "team-llm-key-0123456789"
    raw = (
        f"Found {GITHUB} in config, and Authorization: Bearer {OPENAI}\n"
        f"{PRIVATE_KEY}\nthe team key {team_secret} and done.\n"
    )
    lens = Lens(until=None, redact=Redactor([team_secret]), public=True)
    shown_before = ""
    fragments = [GITHUB[4:12], OPENAI[8:16], KEY_BODY[:8], team_secret[5:13]]
    for end in range(len(raw) + 1):
        shown = live_text(raw[:end], lens)
        assert shown.startswith(shown_before), (end, shown_before, shown)
        for fragment in fragments:
            assert fragment not in shown, (end, fragment)
        shown_before = shown
    assert shown_before == Redactor([team_secret])(raw)


def test_live_text_of_a_long_reply_is_redacted_incrementally_with_the_same_result():
    """The live socket keeps lines far behind the end as already redacted; what it shows must
    be what redacting the whole text shows, a key block spanning the cut point included."""
    line = f"step output with {GITHUB} and https://u:pw@example.com/x\n"
    raw = line * 60 + PRIVATE_KEY + "\n" + "x" * 2500 + "\n" + line * 60 + "the end"
    lens = Lens(until=None, redact=Redactor(), public=True)
    growing = LiveText(lens)
    for end in range(0, len(raw) + 1, 37):
        assert growing(raw[:end]) == live_text(raw[:end], lens), end
    assert growing.cut > len(raw) // 2  # most of it was redacted once, not every time
    assert KEY_BODY not in growing(raw)
