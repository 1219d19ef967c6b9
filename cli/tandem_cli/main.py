"""tandem: the command line. Each subcommand is a function of (args) -> exit code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from getpass import getpass
from pathlib import Path

from . import __version__, config
from .api import Api
from .errors import (
    EXIT_AUTH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ApiFailure,
    CliError,
)
from .follow import send
from .output import choose

EXIT_CODES = """exit codes:
  0 done · 1 the reply failed or another error · 2 bad command line · 3 not logged in, key
  refused or read-only · 4 no such conversation (or another team's) · 5 budget, daily tokens
  or rate limit used up · 6 server unreachable · 10 waiting for an approval (not interactive)
  · 130 stopped with Ctrl-C"""


# --- Plumbing --------------------------------------------------------------------------------


def connect(args) -> Api:
    profile = config.resolve(getattr(args, "profile", None))
    return Api(profile.url, profile.key)


def team_params(args) -> dict:
    team = getattr(args, "team", None)
    return {"team": team} if team else {}


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=not sys.stdout.isatty())


def rich_ok(args) -> bool:
    return sys.stdout.isatty() and not getattr(args, "plain", False)


def interactive(args) -> bool:
    return (
        sys.stdin.isatty() and not getattr(args, "json", False) and not getattr(args, "no_input", 0)
    )


# --- login / logout / profiles --------------------------------------------------------------------


def cmd_login(args) -> int:
    name = config.chosen_name(args.profile) or "default"
    data = config.load()
    known = data["profiles"].get(name, {})
    url = args.url or os.environ.get("TANDEM_URL") or known.get("url")
    if not url:
        if not sys.stdin.isatty():
            raise CliError("Give the server's address: tandem login --url https://tandem.example")
        url = input("Tandem server URL (e.g. https://tandem.example.com): ").strip()
    if not url.startswith(("http://", "https://")):
        raise CliError(f"The URL must start with http:// or https:// (got “{url}”).", EXIT_USAGE)
    key = os.environ.get("TANDEM_API_KEY", "").strip()
    if not key:
        key = getpass("API key (make one under your team's API keys page): ").strip()
    if not key:
        raise CliError("No API key given.", EXIT_AUTH)
    api = Api(url, key)
    try:
        me = api.get("me")
    finally:
        api.close()
    team = (me.get("team") or {}).get("slug", "")
    path = config.store(
        config.Profile(name, url.rstrip("/"), key, team, me["user"]["email"]),
        make_default=args.default,
    )
    scope = (me.get("key") or {}).get("scope", "?")
    print(
        f"Logged in to {url} as {me['user']['email']}, team {team or '?'} ({scope} key); "
        f"profile “{name}” saved in {path}."
    )
    return EXIT_OK


def cmd_logout(args) -> int:
    name = config.chosen_name(args.profile) or config.load().get("default")
    if not name or not config.remove(name):
        raise CliError(f"There is no profile “{name}”.")
    print(f"Profile “{name}” removed (the key itself still works: revoke it on the web).")
    return EXIT_OK


def cmd_profiles(args) -> int:
    data = config.load()
    if not data["profiles"]:
        print("No profiles yet: run `tandem login`.")
    for name, profile in sorted(data["profiles"].items()):
        mark = "*" if name == data.get("default") else " "
        print(f"{mark} {name}\t{profile.get('url')}\t{profile.get('team')}\t{profile.get('user')}")
    return EXIT_OK


# --- ask / chat --------------------------------------------------------------------------------


def new_conversation(api: Api, args, title: str = "") -> dict:
    body = {"title": title[:200]} if title else {}
    if getattr(args, "repo", None):
        body["repository"] = args.repo
        if args.branch:
            body["branch"] = args.branch
    elif getattr(args, "branch", None):
        raise CliError("--branch needs --repo.", EXIT_USAGE)
    return api.post("conversations", body, **team_params(args))


def cmd_ask(args) -> int:
    prompt = " ".join(args.prompt)
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise CliError("Nothing to ask: give the question as an argument (or - for stdin).")
    renderer = choose(json_lines=args.json, plain=args.plain)
    api = connect(args)
    try:
        if args.conversation:
            if args.repo:
                raise CliError("--repo is for a new conversation, not with --conversation.")
            conversation = api.get(f"conversations/{args.conversation}", **team_params(args))
        else:
            conversation = new_conversation(api, args)
            if not args.json:
                renderer.note(f"Conversation {conversation['id']}")
        if args.json:
            renderer.emit("conversation", conversation)  # type: ignore[attr-defined]
        result = send(
            api,
            conversation["id"],
            prompt,
            renderer,
            interactive=interactive(args),
            wait=args.wait,
        )
    finally:
        api.close()
    if args.json:
        renderer.emit(  # type: ignore[attr-defined]
            "result",
            {
                "conversation": conversation["id"],
                "run": result.run_id,
                "status": result.status,
                "error": result.error,
                "text": result.text,
                "reconnects": result.reconnects,
                "duplicates_dropped": result.duplicates,
                "gaps": result.gaps,
            },
        )
    return result.exit_code


def cmd_chat(args) -> int:
    from .chat import Chat

    api = connect(args)
    try:
        return Chat(api, args).run()
    finally:
        api.close()


# --- Conversations ------------------------------------------------------------------------------


def cmd_conversations(args) -> int:
    api = connect(args)
    try:
        page = api.get("conversations", q=args.search, limit=args.limit, **team_params(args))
    finally:
        api.close()
    if args.json:
        print_json(page)
        return EXIT_OK
    rows = page["data"]
    if not rows:
        print("No conversations" + (f" with “{args.search}” in the title." if args.search else "."))
        return EXIT_OK
    if rich_ok(args):
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for column in ("ID", "Title", "Updated", "By", "Repository"):
            table.add_column(column, overflow="fold" if column == "Title" else "ellipsis")
        for c in rows:
            repo = c["repository"]["name"] if c["repository"] else ""
            table.add_row(c["id"], c["title"], c["updated"][:16].replace("T", " "),
                          c["created_by"] or "", repo)  # fmt: skip
        console().print(table)
    else:
        for c in rows:
            print(f"{c['id']}\t{c['updated'][:16].replace('T', ' ')}\t{c['title']}")
    return EXIT_OK


def cmd_show(args) -> int:
    api = connect(args)
    try:
        found = api.get(f"conversations/{args.id}", **team_params(args))
    finally:
        api.close()
    if args.json:
        print_json(found)
        return EXIT_OK
    repo = found["repository"]
    where = f" · {repo['name']}@{repo['branch']}" if repo else ""
    failed = {r["message"]: r for r in found["runs"] if r["error"]}
    if rich_ok(args):
        from rich.markdown import Markdown
        from rich.rule import Rule
        from rich.text import Text

        out = console()
        out.print(Text(found["title"], style="bold"), Text(f"{found['id']}{where}", style="dim"))
        for m in found["messages"]:
            who = m["author"] or "someone" if m["role"] == "user" else "assistant"
            out.print(Rule(Text(f"{who} · {m['created'][:16].replace('T', ' ')}"), align="left"))
            out.print(Markdown(m["content"], code_theme="monokai"))
    else:
        print(f"# {found['title']}\n{found['id']}{where}")
        for m in found["messages"]:
            who = m["author"] or "someone" if m["role"] == "user" else "assistant"
            print(f"\n## {who} · {m['created'][:16].replace('T', ' ')}\n\n{m['content']}")
            if m["id"] in failed:
                print(f"\n(failed: {failed[m['id']]['error']})")
    return EXIT_OK


def cmd_export(args) -> int:
    api = connect(args)
    fmt = {"md": "markdown", "markdown": "markdown", "json": "json"}[args.format]
    try:
        response = api.request(
            "GET", f"conversations/{args.id}/export", params={"format": fmt, **team_params(args)}
        )
    finally:
        api.close()
    body = response.content
    if args.output and args.output != "-":
        Path(args.output).write_bytes(body)
        print(f"Wrote {args.output} ({len(body):,} bytes).", file=sys.stderr)
    else:
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    return EXIT_OK


def share(api: Api, conversation_id: str, *, public: bool, live: bool, expires: str, team=None):
    body = {
        "audience": "public" if public else "team",
        "mode": "live" if live else "snapshot",
        "expiry": expires,
    }
    params = {"team": team} if team else {}
    return api.post(f"conversations/{conversation_id}/shares", body, **params)


def describe_share(link: dict) -> str:
    who = "anyone with the link" if link["audience"] == "public" else "members of the team"
    what = "live" if link["mode"] == "live" else "a snapshot"
    until = f"until {link['expires'][:16].replace('T', ' ')} UTC" if link["expires"] else "forever"
    return f"{link['url']}\n  for {who}, {what}, {until}. Shown once: copy it now."


def cmd_share(args) -> int:
    api = connect(args)
    try:
        link = share(
            api, args.id, public=args.public, live=args.live, expires=args.expires, team=args.team
        )
    finally:
        api.close()
    if args.json:
        print_json(link)
    else:
        print(describe_share(link))
    return EXIT_OK


# --- Approvals -----------------------------------------------------------------------------------


def cmd_approvals(args) -> int:
    from .output import tool_detail

    api = connect(args)
    try:
        waiting = api.get("approvals", **team_params(args))["data"]
    finally:
        api.close()
    if args.json:
        print_json(waiting)
        return EXIT_OK
    if not waiting:
        print("Nothing waits for approval.")
    for call in waiting:
        print(f"{call['id']}\t{call['name']} {tool_detail(call)}\t“{call['conversation_title']}”")
    if waiting:
        print("\nApprove with `tandem approve ID` (or deny with `tandem deny ID`).")
    return EXIT_OK


def cmd_decide(args) -> int:
    decision = "deny" if args.command == "deny" else ("always" if args.always else "approve")
    api = connect(args)
    try:
        call = api.post(
            f"tool-calls/{args.call}/decision", {"decision": decision}, **team_params(args)
        )
    finally:
        api.close()
    if args.json:
        print_json(call)
    else:
        verdict = "Denied" if call["status"] == "denied" else "Approved"
        extra = " and allowed for good in the team" if decision == "always" else ""
        print(f"{verdict}{extra}: {call['name']} {json.loads(call['arguments'] or '{}')}")
    return EXIT_OK


# --- Usage ---------------------------------------------------------------------------------------


def cmd_usage(args) -> int:
    api = connect(args)
    try:
        usage = api.get("usage", **team_params(args))
    finally:
        api.close()
    if args.json:
        print_json(usage)
        return EXIT_OK
    lines = [f"Team {usage['team']}, {usage['month']}:"]
    if usage["budget_usd"] is None:
        lines.append(f"  spent ${usage['spent_usd']:,.2f} this month (no budget set)")
    else:
        lines.append(
            f"  spent ${usage['spent_usd']:,.2f} of ${usage['budget_usd']:,.2f} "
            f"({usage['budget_percent'] or 0:.0f}%) this month"
        )
    if usage["daily_tokens"] is None:
        lines.append(f"  your tokens today: {usage['tokens_today']:,} (no daily limit)")
    else:
        lines.append(f"  your tokens today: {usage['tokens_today']:,} of {usage['daily_tokens']:,}")
    if usage["refusal"]:
        lines.append(f"  {usage['refusal']}")
    print("\n".join(lines))
    return EXIT_OK


# --- The parser ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile", default=argparse.SUPPRESS, help="the saved login to use (or TANDEM_PROFILE)"
    )
    common.add_argument(
        "--team", default=argparse.SUPPRESS, help="the team's slug (a key acts in its own team)"
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="JSON output, for programs")
    output.add_argument("--plain", action="store_true", help="plain text even on a terminal")

    main = argparse.ArgumentParser(
        prog="tandem",
        description="Tandem from the terminal: ask the team's assistant, follow replies live, "
        "approve commands, share and export conversations.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    main.add_argument("--version", action="version", version=f"tandem {__version__}")
    sub = main.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func, help: str, *parents, **kwargs):
        p = sub.add_parser(name, help=help, description=help, parents=[common, *parents], **kwargs)
        p.set_defaults(func=func)
        return p

    p = add("login", cmd_login, "save a server URL and API key (checked with the server)")
    p.add_argument("--url", help="the server, e.g. https://tandem.example.com")
    p.add_argument("--default", action="store_true", help="make this profile the default")
    add("logout", cmd_logout, "forget a profile's key (on this machine)")
    add("profiles", cmd_profiles, "list the saved profiles (* is the default)")

    p = add(
        "ask",
        cmd_ask,
        "ask the assistant; the reply streams as it is written",
        output,
        epilog="Ctrl-C stops the reply. A command that needs approval is asked inline "
        "(Approve? [y/N/always]); without a terminal, the approve command is printed and "
        "tandem exits with 10.",
    )
    p.add_argument("prompt", nargs="+", help="the message (- reads it from stdin)")
    p.add_argument("--conversation", "-c", metavar="ID", help="continue this conversation")
    p.add_argument("--repo", metavar="NAME", help="a new conversation on this repository")
    p.add_argument("--branch", metavar="B", help="with --repo: the branch to start from")
    p.add_argument("--no-input", action="store_true", help="never prompt (approvals too)")
    p.add_argument(
        "--wait", action="store_true", help="without a terminal, wait for approvals made elsewhere"
    )

    p = add(
        "chat",
        cmd_chat,
        "an interactive session (↑ for history; /help for its commands)",
        output,
    )
    p.add_argument("id", nargs="?", metavar="ID", help="a conversation to continue")
    p.add_argument("--repo", metavar="NAME", help="a new conversation on this repository")
    p.add_argument("--branch", metavar="B", help="with --repo: the branch to start from")

    p = add("conversations", cmd_conversations, "list the team's conversations", output)
    p.add_argument("--search", "-s", metavar="Q", help="only titles containing Q")
    p.add_argument("--limit", type=int, default=50, help="how many (1-100, default 50)")

    p = add("show", cmd_show, "a conversation's messages", output)
    p.add_argument("id", metavar="ID")

    p = add("export", cmd_export, "a conversation as Markdown or JSON (secrets redacted)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--format", "-f", choices=["md", "markdown", "json"], default="md")
    p.add_argument("--output", "-o", metavar="FILE", help="write to FILE (default: stdout)")

    p = add("share", cmd_share, "make a share link for a conversation", output)
    p.add_argument("id", metavar="ID")
    p.add_argument("--public", action="store_true", help="anyone with the link (if allowed)")
    p.add_argument("--live", action="store_true", help="viewers see new messages too")
    p.add_argument(
        "--expires", choices=["1h", "1d", "7d", "30d", "never"], default="7d", help="default 7d"
    )

    add("approvals", cmd_approvals, "commands waiting for approval", output)
    for name, verb in (("approve", "approve"), ("deny", "deny")):
        p = add(name, cmd_decide, f"{verb} a command that waits for approval", output)
        p.add_argument("call", metavar="TOOLCALL", help="the tool call's id (tandem approvals)")
        if name == "approve":
            p.add_argument(
                "--always", action="store_true", help="and allow it for good (team admins)"
            )

    add("usage", cmd_usage, "the team's spending and your tokens today", output)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name in ("profile", "team", "json", "plain"):
        if not hasattr(args, name):
            setattr(args, name, None if name in ("profile", "team") else False)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"tandem: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\ntandem: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


__all__ = ["ApiFailure", "main"]
