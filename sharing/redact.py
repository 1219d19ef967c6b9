"""Redaction of secrets from what a share shows: message text, replies, tool arguments and
output, diffs and exports.

Two sources: the team's configured secrets (its LLM API key, its repositories' credentials,
the site's provider key), matched exactly, and patterns of common tokens (GitHub, GitLab,
OpenAI/Anthropic, AWS, Slack, Google, JWTs, private key blocks, Authorization headers,
passwords in URLs and in ``NAME_PASSWORD=…`` assignments). A team secret that spans lines (an
SSH key) is also matched line by line, so a partial print of it goes too.

Text streamed live is redacted whole each time and only its *stable* part is sent (see
``stable``): a token split across two deltas must not leak its first half before the second
half makes it recognisable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

MARK = "[REDACTED]"
EMAIL_MARK = "[email]"
MIN_SECRET_CHARS = 6  # shorter configured values would blank out ordinary words

_KEY_BLOCK = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?"
    r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.DOTALL,
)

# (pattern, replacement, hints). Replacements keep a label where it helps a reader
# ("Bearer …"). A pattern only runs when one of its hints occurs in the lower-cased text: a
# substring search is far cheaper than a regex scan, and streamed text is redacted again and
# again as it grows.
#
# No pattern asks for a word boundary before a secret: text arrives in every shape (JSON with
# "\ndb_password=…", C-quoted file names with "\303\251ghp_…", a token glued to a word), and a
# boundary there is exactly where a secret slipped through. Prefixes distinctive enough stand
# alone; "sk-" is common inside words ("flask-sqlalchemy-utils"), so glued to one it counts
# only with a capital and a digit in it, as real keys have.
_SK_BODY = r"[A-Za-z0-9_-]{16,}"
_ASSIGNED_VALUE = r"(?:\"[^\"\n]*\"?|'[^'\n]*'?|[^\s\"']+)"
_PATTERNS: list[tuple[re.Pattern[str], str, tuple[str, ...]]] = [
    (_KEY_BLOCK, MARK, ("-----begin",)),
    # Credentials in URLs: https://user:password@host keeps the user, loses the password.
    (
        re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@\"'<>]*:)[^\s/@\"'<>]+@"),
        rf"\1{MARK}@",
        ("://",),
    ),
    # Authorization headers and bare bearer tokens.
    (
        re.compile(r"(?i)(authorization\s*[:=]\s*[\"']?(?:bearer|basic|token|bot)\s+)[^\s\"',]+"),
        rf"\1{MARK}",
        ("authorization",),
    ),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{MARK}", ("bearer",)),
    # GitHub: personal, OAuth, user-to-server, server-to-server, refresh; fine-grained PATs.
    (
        re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),
        MARK,
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    (re.compile(r"github_pat_[A-Za-z0-9_]{20,}"), MARK, ("github_pat_",)),
    (re.compile(r"glpat-[A-Za-z0-9_-]{20,}"), MARK, ("glpat-",)),
    # OpenAI (sk-…, sk-proj-…) and Anthropic (sk-ant-…): standing alone, or glued to a word
    # but with a capital and a digit.
    (re.compile(r"(?<![A-Za-z0-9])sk-" + _SK_BODY), MARK, ("sk-",)),
    (
        re.compile(r"sk-(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[0-9])" + _SK_BODY),
        MARK,
        ("sk-",),
    ),
    (re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}"), MARK, ("akia", "asia")),
    (
        re.compile(r"(?i)(aws_secret_access_key[\"']?\s*[=:]\s*[\"']?)[A-Za-z0-9/+=]{30,}"),
        rf"\1{MARK}",
        ("aws_secret_access_key",),
    ),
    (re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"), MARK, ("xox",)),
    (re.compile(r"AIza[0-9A-Za-z_-]{35}"), MARK, ("aiza",)),
    # JWTs: base64url JSON header and payload ("eyJ" is '{"'), then the signature.
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MARK, ("eyj",)),
    # Secrets in query strings and environment-style assignments (DB_PASSWORD=…, as `env`
    # prints them and .env files hold them, quoted values whole). Upper-case names written
    # as `env` does only: `token = get_token()` and `SECRET_KEY = env(…)` in code stay readable.
    (
        re.compile(
            r"(?i)([?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret)=)[^&\s#\"']+"
        ),
        rf"\1{MARK}",
        ("pass", "pwd", "token", "api_key", "apikey", "secret"),
    ),
    (
        re.compile(
            r"([A-Z][A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|APIKEY|PRIVATE_KEY)"
            r"[A-Z0-9_]*=)(?!\[REDACTED\])" + _ASSIGNED_VALUE
        ),
        rf"\1{MARK}",
        ("pass", "secret", "token", "api_key", "apikey", "private_key"),
    ),
]


class Redactor:
    """Callable str -> str. ``secrets`` are replaced wherever they occur; ``emails`` (the
    team's members', for public links) become ``[email]``."""

    def __init__(self, secrets: Iterable[str] = (), emails: Iterable[str] = ()) -> None:
        needles: set[str] = set()
        for secret in secrets:
            secret = (secret or "").strip()
            if len(secret) < MIN_SECRET_CHARS:
                continue
            needles.add(secret)
            # Multi-line keys and "user:token" credentials: each long enough piece alone too.
            for piece in re.split(r"[\s:]+", secret):
                if len(piece) >= 8:
                    needles.add(piece)
        # Longest first, so a whole secret wins over its pieces.
        ordered = sorted(needles, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        addresses = sorted({e for e in emails if e}, key=len, reverse=True)
        self._emails = (
            re.compile("|".join(map(re.escape, addresses)), re.IGNORECASE) if addresses else None
        )

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._secrets is not None:
            text = self._secrets.sub(MARK, text)
        lowered = text.lower()
        for pattern, replacement, hints in _PATTERNS:
            if any(hint in lowered for hint in hints):
                text = pattern.sub(replacement, text)
        if self._emails is not None:
            text = self._emails.sub(EMAIL_MARK, text)
        return text


def no_redaction(text: str) -> str:
    return text


def for_team(team, *, hide_member_emails: bool = False) -> Redactor:
    """The redactor for a team's conversations: its secrets, decrypted here and never kept."""
    from django.conf import settings

    from assistant.models import Repository

    secrets = [team.llm_api_key, settings.LLM_API_KEY]
    for repo in Repository.objects.filter(team=team).exclude(credential_encrypted=""):
        secrets.append(repo.credential)
    emails: list[str] = []
    if hide_member_emails:
        emails = list(team.memberships.values_list("user__email", flat=True))
    return Redactor(secrets, emails)


def deep(value: Any, redact: Callable[[str], str], *, skip: frozenset[str] = frozenset()) -> Any:
    """Every string in a template context (dicts, lists), redacted; keys in ``skip`` kept."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k in skip else deep(v, redact, skip=skip) for k, v in value.items()}
    if isinstance(value, list):
        return [deep(v, redact, skip=skip) for v in value]
    return value


def json_text(text: str, redact: Callable[[str], str], *, indent: int | None = None) -> str:
    """JSON text (a tool call's arguments) with every string in it, keys too, redacted as the
    value it decodes to: in the JSON text escapes hide secrets ("\\nDB_PASSWORD=…",
    "\\u0067hp_…"). Text that is not JSON is redacted as it is."""
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return redact(text)
    cleaned = _decoded(value, redact)
    if cleaned == value:
        return redact(text)
    return json.dumps(cleaned, ensure_ascii=False, indent=indent)


def _decoded(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k): _decoded(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v, redact) for v in value]
    return value


_BLOCK_EDGE = re.compile(r"-----(BEGIN|END)[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----")


def opens_key_block(text: str) -> bool:
    """Whether the text ends inside a private key block (a BEGIN line with no END yet)."""
    edges = _BLOCK_EDGE.findall(text)
    return bool(edges) and edges[-1] == "BEGIN"


# The end of a text that may be the beginning of a private key block's header.
_HEADER_TAIL = re.compile(r"(?:-----BEGIN[ A-Z0-9]*-{0,4}|-{1,5}(?:B|BE|BEG|BEGI)?)\Z")


def stable(redacted: str) -> str:
    """The part of a still-growing, already redacted text that can be shown now.

    The last word is held back: a token may still be arriving ("ghp_ab" becomes recognisable
    only once it is whole). So is what may be the start of a private key block's header, whose
    body is redacted from the header on. What is shown therefore stays a prefix of what the
    finished text shows.
    """
    header = _HEADER_TAIL.search(redacted)
    text = redacted[: header.start()] if header else redacted
    last_space = max(text.rfind(c) for c in " \n\t\r")
    return text[: last_space + 1]
