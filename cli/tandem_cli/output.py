"""How a reply shows: rich (Markdown with highlighted code, live, on a terminal), plain (the
text as it comes, for pipes and --plain) or JSON lines (--json, one event a line)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

OUTPUT_LINES = 8  # of a tool's output, under its line
SETTLE_LINES = 6  # a live segment of more lines prints its finished blocks for good


def tool_detail(call: dict) -> str:
    """What a tool call is about, in one short line: the command, the path, the pattern."""
    try:
        args = json.loads(call.get("arguments") or "{}")
    except ValueError:
        args = call.get("arguments") or ""
    if isinstance(args, dict):
        for name in ("command", "path", "pattern"):
            if isinstance(args.get(name), str):
                detail = args[name]
                if name == "pattern" and isinstance(args.get("path"), str):
                    detail = f"{detail} in {args['path']}"
                break
        else:
            detail = json.dumps(args, ensure_ascii=False) if args else ""
    else:
        detail = str(args)
    detail = " ".join(detail.split())
    return detail if len(detail) <= 100 else detail[:99] + "…"


def tool_line(kind: str, call: dict) -> str:
    name, detail = call.get("name", "tool"), tool_detail(call)
    what = f"{name} {detail}".strip()
    if kind == "started":
        return f"⚙ {what} …"
    if kind == "awaiting":
        return f"? {what} — waits for approval"
    if kind == "decided":
        who = call.get("decided_by") or "someone"
        verdict = "denied" if call.get("status") == "denied" else "approved"
        return f"  {verdict} by {who}"
    status = call.get("status", "")
    facts = []
    if call.get("exit_code") is not None:
        facts.append(f"exit {call['exit_code']}")
    if call.get("duration_ms") is not None:
        facts.append(f"{call['duration_ms']} ms")
    mark = "✓" if status == "succeeded" else "✗"
    tail = f" ({', '.join(facts)})" if facts else ""
    return f"{mark} {what} — {status}{tail}"


def output_excerpt(call: dict) -> str:
    lines = (call.get("output") or "").rstrip("\n").splitlines()
    if not lines:
        return ""
    shown = lines[:OUTPUT_LINES]
    if len(lines) > OUTPUT_LINES:
        shown.append(f"… {len(lines) - OUTPUT_LINES} more lines")
    return "\n".join("    " + line for line in shown)


class Renderer:
    interactive = False

    def event(self, event) -> None:  # every event of the run (JSON lines use it)
        pass

    def text(self, chunk: str) -> None:
        raise NotImplementedError

    def tool(self, kind: str, call: dict) -> None:
        raise NotImplementedError

    def note(self, message: str) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        """Before something else writes to the terminal (a prompt)."""

    def finish(self) -> None:
        pass

    def ask(self, question: str) -> str:
        self.pause()
        try:
            return input(question)
        except EOFError:
            return ""


class PlainRenderer(Renderer):
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.at_line_start = True

    def text(self, chunk: str) -> None:
        if chunk:
            self.out.write(chunk)
            self.out.flush()
            self.at_line_start = chunk.endswith("\n")

    def _line(self, line: str) -> None:
        if not self.at_line_start:
            self.out.write("\n")
        self.out.write(line + "\n")
        self.out.flush()
        self.at_line_start = True

    def tool(self, kind: str, call: dict) -> None:
        self._line(tool_line(kind, call))
        if kind == "finished" and (excerpt := output_excerpt(call)):
            self._line(excerpt)

    def note(self, message: str) -> None:
        self.pause()
        self.err.write(message + "\n")
        self.err.flush()

    def pause(self) -> None:
        if not self.at_line_start:
            self.out.write("\n")
            self.out.flush()
            self.at_line_start = True

    def finish(self) -> None:
        self.pause()


class _LazyMarkdown:
    """Markdown parsed when the live display draws it (a few times a second), not at every
    delta: a delta costs a string append."""

    def __init__(self) -> None:
        self.text = ""

    def __rich_console__(self, console, options):
        from rich.markdown import Markdown

        yield Markdown(self.text, code_theme="monokai")


def _open_fence(text: str) -> bool:
    """Whether ``text`` ends inside a fenced code block."""
    fences = sum(1 for line in text.split("\n") if line.lstrip().startswith(("```", "~~~")))
    return fences % 2 == 1


def _warm_up() -> None:
    """Import and exercise the Markdown and highlighting code now, while the reply is still
    on its way: the first draw would otherwise stall the stream for 100 ms and more."""
    import io

    from rich.console import Console
    from rich.markdown import Markdown

    sink = Console(file=io.StringIO(), force_terminal=True, width=80)
    sink.print(Markdown("*a* `b`\n\n- c\n\n```python\nd = 1\n```\n", code_theme="monokai"))


class RichRenderer(Renderer):
    def __init__(self, console=None) -> None:
        from rich.console import Console

        self.console = console or Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        self.live = None
        self.segment: _LazyMarkdown | None = None
        _warm_up()

    def text(self, chunk: str) -> None:
        if not chunk:
            return
        if self.live is None:
            from rich.live import Live

            self.segment = _LazyMarkdown()
            self.live = Live(
                self.segment,
                console=self.console,
                refresh_per_second=10,
                vertical_overflow="ellipsis",
            )
            self.live.start()
        assert self.segment is not None
        self.segment.text += chunk
        if "\n" in chunk:
            self._settle()

    def _settle(self) -> None:
        """Print the finished blocks of a long segment for good, above the live part: the
        live part stays within the screen (the newest text is always visible) and drawing it
        costs the same however long the reply gets."""
        assert self.segment is not None and self.live is not None
        text = self.segment.text
        if text.count("\n") < SETTLE_LINES:
            return
        cut = text.rfind("\n\n")
        while cut > 0 and _open_fence(text[:cut]):
            cut = text.rfind("\n\n", 0, cut)
        if cut <= 0:
            return
        from rich.markdown import Markdown

        self.live.console.print(Markdown(text[:cut], code_theme="monokai"))
        self.segment.text = text[cut + 2 :]
        self.live.refresh()

    def pause(self) -> None:
        if self.live is not None:
            self.live.stop()  # the final draw shows the whole segment
            self.live = None
            self.segment = None

    def tool(self, kind: str, call: dict) -> None:
        from rich.text import Text

        self.pause()
        style = {"started": "cyan", "awaiting": "bold yellow", "decided": "yellow"}.get(kind)
        if kind == "finished":
            style = "green" if call.get("status") == "succeeded" else "red"
        self.console.print(Text(tool_line(kind, call), style=style or ""))
        if kind == "finished" and (excerpt := output_excerpt(call)):
            self.console.print(Text(excerpt, style="dim"))

    def note(self, message: str) -> None:
        from rich.text import Text

        self.pause()
        self.err.print(Text(message, style="dim"))

    def finish(self) -> None:
        self.pause()

    def ask(self, question: str) -> str:
        from rich.markup import escape

        self.pause()
        try:
            return self.console.input(escape(question))
        except EOFError:
            return ""


class JsonRenderer(Renderer):
    """One JSON object a line: every event of the run, as the server sent it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def emit(self, kind: str, data: Any, event_id: str | None = None) -> None:
        line = {"event": kind, "data": data}
        if event_id:
            line["id"] = event_id
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()

    def event(self, event) -> None:
        self.emit(event.event, event.data, event.id)

    def text(self, chunk: str) -> None:
        pass

    def tool(self, kind: str, call: dict) -> None:
        pass

    def note(self, message: str) -> None:
        sys.stderr.write(message + "\n")


def choose(*, json_lines: bool = False, plain: bool = False) -> Renderer:
    if json_lines:
        return JsonRenderer()
    if plain or not sys.stdout.isatty():
        return PlainRenderer()
    return RichRenderer()
