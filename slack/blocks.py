"""Block Kit messages. What goes to Slack never carries secrets: texts pass through the team's
redactor (its provider key, repository credentials, common token formats) and tool output is
never included, only the command an approval is about."""

from __future__ import annotations

import re

from django.conf import settings
from django.urls import reverse

SECTION_CHARS = 2900  # Slack refuses section texts over 3000 characters
SUMMARY_CHARS = 600
FALLBACK_CHARS = 300
ACTION_APPROVE = "tandem_approve"
ACTION_DENY = "tandem_deny"


def redactor(team):
    from sharing.redact import for_team

    return for_team(team)


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    return f"<{url}|{escape(label).replace('|', '¦')}>"


def site(path: str) -> str:
    return settings.SITE_URL.rstrip("/") + path


def conversation_url(conversation) -> str:
    return site(reverse("conversation_detail", args=[conversation.team.slug, conversation.uuid]))


def trim(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_ITALIC = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)
_STRIKE = re.compile(r"~~(.+?)~~")


def mrkdwn(markdown: str) -> str:
    """Markdown, roughly, as Slack's mrkdwn: bold, italics, headings, links, bullets; code
    blocks kept as they are (minus the language after the fence)."""
    parts = re.split(r"(```[^\n]*\n.*?```)", markdown, flags=re.DOTALL)
    out = []
    for index, part in enumerate(parts):
        if index % 2:
            body = part.split("\n", 1)[1] if "\n" in part else part[3:]
            out.append("```" + escape(body if body.endswith("```") else body + "```"))
            continue
        text = escape(part)
        text = _LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", text)
        text = _ITALIC.sub(lambda m: f"_{m.group(1)}_", text)
        text = _BOLD.sub(lambda m: f"*{m.group(2)}*", text)
        text = _HEADING.sub(lambda m: f"*{m.group(1)}*", text)
        text = _BULLET.sub(lambda m: f"{m.group(1)}• ", text)
        text = _STRIKE.sub(lambda m: f"~{m.group(1)}~", text)
        out.append(text)
    return "".join(out)


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": trim(text, SECTION_CHARS)}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": trim(text, 2000)}]}


def _message(fallback: str, blocks: list[dict]) -> dict:
    """``fallback`` is plain text (titles, names, replies as written): escaped here, as the
    blocks' texts are, since Slack reads it as mrkdwn too (``<!channel>`` would ping everyone,
    ``<https://evil|Tandem login>`` would be a link)."""
    return {"text": escape(trim(fallback, FALLBACK_CHARS)), "blocks": blocks}


def _title(conversation) -> str:
    return link(conversation_url(conversation), conversation.display_title)


def _reply_text(run) -> str:
    from assistant.models import Message

    try:
        return run.assistant_message.content
    except Message.DoesNotExist:
        return ""


def run_finished(run) -> dict:
    conversation = run.conversation
    redact = redactor(conversation.team)
    summary = trim(redact(_reply_text(run)), SUMMARY_CHARS) or "_(no text)_"
    who = run.requested_by.name if run.requested_by else "someone"
    return _message(
        f"Reply finished in {conversation.display_title}",
        [
            _section(f":white_check_mark: *Reply finished* in {_title(conversation)}"),
            _section(mrkdwn(summary)),
            _context(f"Asked by {escape(who)} · {link(conversation_url(conversation), 'Open')}"),
        ],
    )


def run_failed(run) -> dict:
    conversation = run.conversation
    reason = trim(redactor(conversation.team)(run.error or "No reason was recorded."), 500)
    return _message(
        f"Reply failed in {conversation.display_title}: {reason}",
        [
            _section(f":x: *Reply failed* in {_title(conversation)}"),
            _section(f"> {escape(reason)}"),
            _context(link(conversation_url(conversation), "Open the conversation to retry")),
        ],
    )


def command_of(call) -> str:
    import json

    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        args = {}
    command = args.get("command") if isinstance(args, dict) else None
    return str(command) if command else call.arguments or call.name


def approval(call, *, buttons: bool) -> dict:
    conversation = call.run.conversation
    command = trim(redactor(conversation.team)(command_of(call)), 500)
    blocks = [
        _section(
            f":raised_hand: *Approval needed* in {_title(conversation)}: the assistant wants to run"
        ),
        _section(f"```{escape(command)}```"),
    ]
    if buttons:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"approval:{call.uuid}",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ACTION_APPROVE,
                        "text": {"type": "plain_text", "text": "Approve"},
                        "style": "primary",
                        "value": str(call.uuid),
                    },
                    {
                        "type": "button",
                        "action_id": ACTION_DENY,
                        "text": {"type": "plain_text", "text": "Deny"},
                        "style": "danger",
                        "value": str(call.uuid),
                    },
                ],
            }
        )
    else:
        blocks.append(_context(link(conversation_url(conversation), "Approve or deny in Tandem")))
    return _message(f"Approval needed in {conversation.display_title}: {command}", blocks)


def decided(call) -> dict:
    """The approval message once decided: the buttons give way to who decided what."""
    conversation = call.run.conversation
    command = trim(redactor(conversation.team)(command_of(call)), 500)
    who = call.decided_by.name if call.decided_by else "someone"
    verdict = {
        "approved": f":white_check_mark: Approved by {who}",
        "denied": f":no_entry_sign: Denied by {who}",
    }.get(call.status, f"Decided ({call.status}) by {who}")
    if call.status in ("running", "succeeded", "failed") and call.decided_by:
        verdict = f":white_check_mark: Approved by {who}"
    return _message(
        f"{verdict} in {conversation.display_title}",
        [
            _section(f"*Command* in {_title(conversation)}"),
            _section(f"```{escape(command)}```"),
            _context(escape(verdict)),
        ],
    )


def shared(link_obj, by) -> dict:
    conversation = link_obj.conversation
    who = by.name if by else "Someone"
    audience = link_obj.get_audience_display().lower()
    mode = link_obj.get_mode_display().lower()
    # The share link itself is a secret shown once to whoever made it: never posted here.
    return _message(
        f"{who} shared {conversation.display_title}",
        [
            _section(f":link: *{escape(who)} shared* {_title(conversation)}"),
            _context(f"Visible to {escape(audience)}, {escape(mode)}"),
        ],
    )


def budget(team, percent: int, kind: str) -> dict:
    what = "monthly budget" if kind in ("", "budget", "team", "monthly") else kind.replace("_", " ")
    url = site(f"/t/{team.slug}/usage/")
    return _message(
        f"{team.name} has used {percent}% of its {what}",
        [
            _section(
                f":money_with_wings: *Budget*: {escape(team.name)} has used *{percent}%* "
                f"of its {escape(what)}."
            ),
            _context(link(url, "See usage in Tandem")),
        ],
    )


def answer(run) -> dict:
    """The reply posted in the Slack thread a conversation was started from."""
    conversation = run.conversation
    redact = redactor(conversation.team)
    url = conversation_url(conversation)
    text = redact(_reply_text(run))
    if run.status == "succeeded":
        body = mrkdwn(text) or "_(no text)_"
        if len(body) > SECTION_CHARS:
            body = trim(body, SECTION_CHARS - 60) + "\n_(continued in Tandem)_"
        blocks = [_section(body)]
        fallback = text or "Reply finished"
    elif run.status == "failed":
        reason = trim(redact(run.error or "No reason was recorded."), 500)
        blocks = [_section(f":x: The reply failed: {escape(reason)}")]
        fallback = f"The reply failed: {reason}"
    else:
        blocks = [_section(":black_square_for_stop: The reply was stopped.")]
        if text:
            blocks.append(_section(trim(mrkdwn(text), SECTION_CHARS)))
        fallback = "The reply was stopped."
    blocks.append(_context(link(url, "Open the conversation in Tandem")))
    return _message(fallback, blocks)


def asked(slack_user_id: str, prompt: str, team) -> dict:
    """The root message of a thread started with the slash command."""
    text = trim(redactor(team)(prompt), 1500)
    return _message(
        f"Asked Tandem: {text}",
        [
            _section(
                f"<@{slack_user_id}> asked Tandem:\n>{escape(text).replace(chr(10), chr(10) + '>')}"
            )
        ],
    )


def plain(text: str) -> dict:
    return _message(text, [_section(text)])
