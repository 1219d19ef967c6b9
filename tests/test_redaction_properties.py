"""Property-based: every known secret format, in every context it can reach a share in, never
comes out — neither whole nor as any 8-character piece. Contexts: a message or reply with any
character glued before and after it, a reply streamed to a live viewer and cut into deltas
anywhere, a tool call's JSON arguments (as written, or with \\u escapes inside the secret),
tool output, a diff's file names (C-quoted by git) and lines. Outputs: the redactor itself, the
live viewer's text at every delta, and the shared page, export.md and export.json of a real
public link (fewer examples there: each makes a conversation)."""

from __future__ import annotations

import html
import json
import string
from dataclasses import dataclass

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sharing.content import Lens, LiveText
from sharing.redact import EMAIL_MARK, MARK, Redactor, deep, json_text
from tests.test_sharing import exchange, share

WINDOW = 8
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"


@dataclass(frozen=True)
class Secret:
    kind: str
    text: str  # as written
    core: str  # what must never come out
    team: tuple[str, ...] = ()  # the team's configured secrets, for that kind


def chars(alphabet: str, size: int, max_size: int | None = None):
    return st.text(alphabet=alphabet, min_size=size, max_size=max_size or size)


@st.composite
def keyish(draw, alphabet: str, size: int, max_size: int | None = None) -> str:
    """Random key material with a capital and a digit in it, as real keys have."""
    body = draw(chars(alphabet, size, max_size))
    return (
        body + draw(st.sampled_from(string.ascii_uppercase)) + draw(st.sampled_from("0123456789"))
    )


@st.composite
def secrets(draw) -> Secret:
    kind = draw(
        st.sampled_from(
            [
                "github", "github_pat", "gitlab", "openai", "anthropic", "aws_key",
                "aws_secret", "aws_secret_ini", "slack", "google", "jwt", "env_password",
                "env_quoted", "url_password", "bearer", "authorization", "private_key", "team",
            ]
        )
    )  # fmt: skip
    if kind == "github":
        token = "gh" + draw(st.sampled_from("pousr")) + "_" + draw(chars(ALNUM, 36))
        return Secret(kind, token, token)
    if kind == "github_pat":
        token = "github_pat_" + draw(chars(ALNUM + "_", 22, 82))
        return Secret(kind, token, token)
    if kind == "gitlab":
        token = "glpat-" + draw(chars(URLSAFE, 20, 30))
        return Secret(kind, token, token)
    if kind == "openai":
        token = draw(st.sampled_from(["sk-", "sk-proj-", "sk-svcacct-"])) + draw(keyish(ALNUM, 30))
        return Secret(kind, token, token)
    if kind == "anthropic":
        token = "sk-ant-api03-" + draw(keyish(URLSAFE, 80))
        return Secret(kind, token, token)
    if kind == "aws_key":
        token = draw(st.sampled_from(["AKIA", "ASIA"])) + draw(
            chars(string.ascii_uppercase + string.digits, 16)
        )
        return Secret(kind, token, token)
    if kind in ("aws_secret", "aws_secret_ini"):
        value = draw(chars(B64, 40))
        label = "AWS_SECRET_ACCESS_KEY=" if kind == "aws_secret" else "aws_secret_access_key = "
        return Secret(kind, label + value, value)
    if kind == "slack":
        token = "xox" + draw(st.sampled_from("abprs")) + "-" + draw(chars(ALNUM + "-", 20, 50))
        return Secret(kind, token, token)
    if kind == "google":
        token = "AIza" + draw(chars(URLSAFE, 35))
        return Secret(kind, token, token)
    if kind == "jwt":
        token = "eyJ" + draw(chars(URLSAFE, 10, 30)) + ".eyJ" + draw(chars(URLSAFE, 10, 30))
        token += "." + draw(chars(URLSAFE, 20, 43))
        return Secret(kind, token, token[3:])
    if kind in ("env_password", "env_quoted"):
        name = draw(
            st.sampled_from(["DATABASE_PASSWORD", "GITHUB_TOKEN", "STRIPE_API_KEY", "APP_SECRET"])
        )
        punct = "!#$%()*+,-./;<>?@[]^_{|}~"  # what a password may hold, but no quote or blank
        value = draw(chars(ALNUM + punct, 10, 30))
        if kind == "env_quoted":
            value = value[:5] + " " + value[5:]
            return Secret(kind, f'{name}="{value}"', value)
        return Secret(kind, f"{name}={value}", value)
    if kind == "url_password":
        password = draw(chars(ALNUM + "!$%*+-.~", 10, 30))
        scheme = draw(st.sampled_from(["postgres", "https", "redis", "mysql+pymysql"]))
        return Secret(kind, f"{scheme}://app:{password}@db.internal:5432/app", password)
    if kind in ("bearer", "authorization"):
        token = draw(chars(ALNUM + "._~+/-", 12, 40))
        label = "Bearer " if kind == "bearer" else "Authorization: token "
        return Secret(kind, label + token, token)
    if kind == "private_key":
        lines = [draw(chars(B64, 64)) for _ in range(draw(st.integers(1, 3)))]
        block = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
        block += "\n-----END OPENSSH PRIVATE KEY-----"
        return Secret(kind, block, "".join(lines))
    value = draw(chars(ALNUM + "-_.:/+=!@#", 12, 40))  # a team's own provider key or token
    return Secret(kind, value, value, team=(value,))


def forbidden(secret: Secret, scaffold: str) -> set[str]:
    """Every WINDOW-long piece of the secret's core (each of its lines, for a key block) that
    the text around it doesn't also contain by chance."""
    pieces = secret.core.split("\n") if "\n" in secret.core else [secret.core]
    if secret.kind == "private_key":
        pieces = secret.text.split("\n")[1:-1]
    ordinary = scaffold + MARK + EMAIL_MARK
    return {
        piece[i : i + WINDOW]
        for piece in pieces
        for i in range(max(1, len(piece) - WINDOW + 1))
        if piece[i : i + WINDOW] not in ordinary
    }


def leaked(secret: Secret, scaffold: str, *outputs: str) -> list[str]:
    windows = forbidden(secret, scaffold)
    return [w for w in windows for out in outputs if w in out]


glue = st.characters(exclude_categories=("Cs",))  # any character, a surrogate aside
stored_glue = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")  # PostgreSQL

CONTEXTS = [
    "{b}{s}{a}",
    "The config says {s} — rotate it.",
    "export X=1\n{s}\nexport Y=2\n",
    "```\n{b}{s}{a}\n```",
    "+{s}\n-{b}old{a}\n",  # a diff line
    'diff --git a/x b/x\n+++ "b/\\303\\251{s}.env"\n',  # a file name git C-quoted
    "<{s}>",
    "({s}),",
    '"{s}"',
    "'{s}'",
    "x{s}y",
]


@given(secret=secrets(), b=glue, a=glue, shape=st.sampled_from(CONTEXTS))
@settings(max_examples=600, deadline=None)
def test_no_secret_survives_the_redactor_in_any_context(secret, b, a, shape):
    text = shape.format(s=secret.text, b=b, a=a)
    scaffold = shape.format(s="", b=b, a=a)
    out = Redactor(secret.team)(text)
    assert not leaked(secret, scaffold, out), (text, out)


def escaped_json(value: str, escape_at: set[int]) -> str:
    """A JSON string literal for ``value`` with the characters at ``escape_at`` written as
    \\u escapes, as a model may send them."""
    out = []
    for index, char in enumerate(value):
        if index in escape_at and ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(json.dumps(char)[1:-1])
    return '"' + "".join(out) + '"'


@given(
    secret=secrets(),
    b=glue,
    a=glue,
    escapes=st.sets(st.integers(0, 200), max_size=3),
    key=st.sampled_from(["content", "command", "path", "pattern"]),
)
@settings(max_examples=400, deadline=None)
def test_no_secret_survives_in_tool_arguments(secret, b, a, escapes, key):
    """write_file of a .env, a command, a path: the arguments as JSON text, where a secret
    after "\\n" or with a \\u escape in it has no word boundary before it."""
    content = f"# settings\n{b}{secret.text}{a}\nDEBUG=0\n"
    arguments = "{" + json.dumps(key) + ": " + escaped_json(content, escapes) + "}"
    redact = Redactor(secret.team)
    shown = json_text(arguments, redact)
    pretty = json_text(json.dumps(json.loads(arguments), indent=2, ensure_ascii=False), redact)
    scaffold = f"# settings\n{b}{a}\nDEBUG=0\n"
    for out in (shown, pretty, deep({"x": shown}, redact)["x"]):
        decoded = json.loads(out)
        assert not leaked(secret, scaffold, out, json.dumps(decoded, ensure_ascii=False)), out


@given(
    secret=secrets(),
    b=glue,
    cuts=st.lists(st.integers(0, 400), max_size=12),
    shape=st.sampled_from(CONTEXTS[:5]),
)
@settings(max_examples=400, deadline=None)
def test_a_live_viewer_never_sees_a_piece_of_a_secret_cut_across_deltas(secret, b, cuts, shape):
    """The share socket's view of a streaming reply (LiveText, as ShareConsumer uses it) at
    every delta, wherever the deltas are cut: the page holds exactly this text (frames append
    to it; a "run.updated" replaces it with the same redaction of the whole)."""
    raw = shape.format(s=secret.text, b=b, a=" ") + "and more words after it "
    scaffold = shape.format(s="", b=b, a=" ") + "and more words after it "
    lens = Lens(until=None, redact=Redactor(secret.team), public=True)
    live = LiveText(lens)
    points = sorted({min(c, len(raw)) for c in cuts} | {len(raw)})
    for end in points:
        shown = live(raw[:end])
        assert not leaked(secret, scaffold, shown), (raw[:end], shown)


# --- The real outputs: the shared page, export.md and export.json --------------------------------


@pytest.mark.django_db
@given(secret=secrets(), b=stored_glue)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_no_secret_reaches_a_public_share_or_its_exports(alice, team, secret, b):
    team.llm_api_key = secret.team[0] if secret.team else ""
    team.save()
    # The oracle's scaffold is the same exchange shared without the secret: every word the page
    # and the exports hold of their own ("duration", "truncated", class names) is ordinary, and
    # only a window of the secret that the baseline lacks counts as a leak.
    baseline = shared_outputs(alice, team, f"{b} ")
    scaffold = "\n".join(text for outputs in baseline.values() for text in outputs)
    for path, outputs in shared_outputs(alice, team, f"{b}{secret.text} ").items():
        assert not leaked(secret, scaffold, *outputs), (path, secret)


def shared_outputs(alice, team, text: str) -> dict[str, list[str]]:
    """The public page, export.md and export.json of a conversation holding ``text`` in a
    message, a reply, a .env written by write_file and a command's output."""
    from assistant.models import ToolCallStatus
    from assistant.services import conversation_create

    conversation = conversation_create(team=team, author=alice, title="Secrets")
    dotenv = f"DEBUG=0\n{text}\nPORT=80\n"
    exchange(
        conversation,
        alice,
        f"Here it is: {text}",
        f"I wrote {text} to .env",
        calls=[
            (
                "write_file",
                {"path": ".env", "content": dotenv},
                "wrote .env",
                ToolCallStatus.SUCCEEDED,
            ),
            (
                "run_command",
                {"command": f"cat .env\necho {text}"},
                dotenv,
                ToolCallStatus.SUCCEEDED,
            ),
        ],
    )
    token = share(conversation, alice, audience="public")
    client = Client()
    found = {}
    for path in ("", "export.md", "export.json"):
        response = client.get(f"/s/{token}/{path}")
        assert response.status_code == 200
        page = response.content.decode()
        outputs = [page, html.unescape(page)]
        if path == "export.json":
            outputs.append(json.dumps(json.loads(page), ensure_ascii=False))
        found[path] = outputs
    return found


@pytest.mark.django_db
def test_the_reported_dotenv_write_is_redacted_everywhere(alice, team):
    """The case that was reported: write_file of a .env showed all three on the public page,
    export.md and export.json."""
    from assistant.models import ToolCallStatus
    from assistant.services import conversation_create

    password, aws, github = (
        "Tr0ub4dor&3xyz",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "ghp_" + "x1Y2" * 9,
    )
    dotenv = (
        "# Deploy settings\nDEBUG=false\n"
        f"AWS_SECRET_ACCESS_KEY={aws}\nDATABASE_PASSWORD={password}\n"
        f"# GitHub token for the release script:\n{github}\n"
    )
    conversation = conversation_create(team=team, author=alice, title="Deploy")
    exchange(
        conversation,
        alice,
        "Write the .env",
        "Done.",
        calls=[("write_file", {"path": ".env", "content": dotenv}, "ok", ToolCallStatus.SUCCEEDED)],
    )
    token = share(conversation, alice, audience="public")
    for path in ("", "export.md", "export.json"):
        page = html.unescape(Client().get(f"/s/{token}/{path}").content.decode())
        for secret in (password, aws, github, json.dumps(password)[1:-1]):
            assert secret not in page, (path, secret)
        assert "DATABASE_PASSWORD=" in page  # the rest of the file stays readable
