"""tandem chat: an interactive session in one conversation.

Input is read with the standard library's readline (↑/↓ history, kept between sessions in
$XDG_STATE_HOME/tandem/history). Enter sends; a line ending in a backslash goes on on the next
line, and a line of three double quotes starts a block that the next such line ends.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from pathlib import Path

from . import config
from .api import Api
from .errors import EXIT_OK, ApiFailure, CliError
from .follow import send
from .output import choose

HELP = """Commands:
  /share [--public] [--live] [--expires 1h|1d|7d|30d|never]   a link to this conversation
  /diff                 what each reply changed in the repository
  /undo                 revert the files the last change touched
  /patch > FILE         save the conversation's changes as a patch (git apply)
  /id                   this conversation's id
  /help                 this list
  /quit                 leave (Ctrl-D too)
Enter sends. End a line with \\ to go on on the next line, or put \"\"\" on a line of its own
to start and end a block. Ctrl-C stops a reply; at the prompt it clears the line."""

PROMPT = "you> "
MORE = "...> "


class Chat:
    def __init__(self, api: Api, args) -> None:
        self.api = api
        self.args = args
        self.conversation_id: str | None = args.id
        self.renderer = choose(json_lines=args.json, plain=args.plain)
        self.interactive = sys.stdin.isatty() and not args.json
        self.history = config.state_dir() / "history"

    # --- Input ---------------------------------------------------------------------------------

    def setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input()
            return
        readline.set_history_length(1000)
        with contextlib.suppress(OSError):
            readline.read_history_file(self.history)

    def save_history(self) -> None:
        try:
            import readline

            self.history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.history)
        except (ImportError, OSError):
            pass

    def read(self) -> str | None:
        """The next message or command; None at end of input."""
        try:
            line = input(PROMPT)
        except EOFError:
            return None
        if line.strip() == '"""':
            lines = []
            while True:
                try:
                    more = input(MORE)
                except EOFError:
                    break
                if more.strip() == '"""':
                    break
                lines.append(more)
            return "\n".join(lines)
        lines = [line]
        while lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1]
            try:
                lines.append(input(MORE))
            except EOFError:
                break
        return "\n".join(lines)

    # --- The session ---------------------------------------------------------------------------

    def run(self) -> int:
        self.setup_readline()
        if self.conversation_id:
            found = self.api.get(f"conversations/{self.conversation_id}")
            self.renderer.note(f"Conversation “{found['title']}” ({found['id']}). /help for help.")
        else:
            self.renderer.note("New conversation (made with your first message). /help for help.")
        try:
            while True:
                try:
                    text = self.read()
                except KeyboardInterrupt:
                    print()
                    continue
                if text is None:
                    print()
                    return EXIT_OK
                if not text.strip():
                    continue
                try:
                    if text.startswith("/"):
                        if self.command(text.strip()) == "quit":
                            return EXIT_OK
                    else:
                        self.say(text)
                except CliError as exc:
                    # In a session, an error is said and the session goes on (a bad key or an
                    # unreachable server too: fixing it elsewhere and retrying is fine).
                    self.renderer.finish()
                    self.renderer.note(f"tandem: {exc.message}")
                except KeyboardInterrupt:
                    self.renderer.finish()
                    print()
        finally:
            self.save_history()

    def ensure_conversation(self, first: str) -> str:
        if self.conversation_id is None:
            from .main import new_conversation

            made = new_conversation(self.api, self.args)
            self.conversation_id = made["id"]
            self.renderer.note(f"Conversation {made['id']}")
        return self.conversation_id

    def say(self, text: str) -> None:
        conversation_id = self.ensure_conversation(text)
        send(self.api, conversation_id, text, self.renderer, interactive=self.interactive)

    def need_conversation(self) -> str:
        if self.conversation_id is None:
            raise CliError("There is no conversation yet: send a message first.")
        return self.conversation_id

    def command(self, line: str) -> str | None:
        name, _, rest = line.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            print(HELP)
        elif name == "/id":
            print(self.conversation_id or "(none yet)")
        elif name == "/share":
            self.share(rest)
        elif name == "/diff":
            self.diff()
        elif name == "/undo":
            self.undo()
        elif name == "/patch":
            self.patch(rest)
        else:
            print(f"Unknown command {name}. /help lists them.")
        return None

    def share(self, rest: str) -> None:
        from .main import describe_share, share

        words = shlex.split(rest)
        expires = "7d"
        if "--expires" in words:
            index = words.index("--expires")
            if index + 1 >= len(words):
                raise CliError("--expires needs 1h, 1d, 7d, 30d or never.")
            expires = words[index + 1]
        link = share(
            self.api,
            self.need_conversation(),
            public="--public" in words,
            live="--live" in words,
            expires=expires,
        )
        print(describe_share(link))

    def diff(self) -> None:
        """Each turn's changes, as the conversation page shows them."""
        turns = self.api.get(f"conversations/{self.need_conversation()}/diff")["data"]
        if not turns:
            print("No changes yet.")
            return
        rich = sys.stdout.isatty() and not self.args.plain
        for number, turn in enumerate(turns, 1):
            facts = [f"+{turn['added']} −{turn['deleted']}", f"{turn['files_total']} files"]
            if turn["undone"]:
                facts.append("undone")
            if turn["clipped"]:
                facts.append("clipped: the page or the patch has the rest")
            print(f"── change {number} of {len(turns)} (reply {turn['run']}) · {', '.join(facts)}")
            if turn["pending"]:
                print("   (still being read; try /diff again in a moment)")
            elif turn["error"]:
                print(f"   (could not be read: {turn['error']})")
            elif rich:
                from rich.console import Console
                from rich.syntax import Syntax

                Console().print(
                    Syntax(turn["text"], "diff", theme="monokai", background_color="default")
                )
            else:
                text = turn["text"]
                sys.stdout.write(text if text.endswith("\n") else text + "\n")

    def undo(self) -> None:
        """Revert the changes of the last turn that changed files (and isn't undone)."""
        turns = self.api.get(f"conversations/{self.need_conversation()}/diff")["data"]
        left = [turn for turn in turns if not turn["undone"]]
        if not left:
            raise CliError("No reply has changed files (that aren't undone): nothing to undo.")
        try:
            self.api.post(f"runs/{left[-1]['run']}/undo")
        except ApiFailure as exc:
            raise CliError(f"Not undone: {exc.message}")
        print("Undoing the last change's files (the server does it in a moment; /diff shows it).")

    def patch(self, rest: str) -> None:
        target = rest.strip()
        if target.startswith(">"):
            target = target[1:].strip()
        path = f"conversations/{self.need_conversation()}/patch"
        response = self.api.request("GET", path)
        # 202: a worker is writing the patch; ask again as the server says, for ten minutes.
        for _ in range(600):
            if response.status_code != 202:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
            response = self.api.request("GET", path)
        else:
            raise CliError("The server is still preparing the patch; try again later.")
        body = response.content
        if not target or target == "-":
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
            return
        path = Path(target).expanduser()
        path.write_bytes(body)
        print(f"Wrote {path} ({len(body):,} bytes): apply with `git apply {path}`.")
