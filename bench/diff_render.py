#!/usr/bin/env python
"""What the diff's new markup and the file links cost: CPU and bytes, without servers.

    .venv/bin/python bench/diff_render.py [--repeat 20]

See docs/benchmarks.md ("Diff markup and file links") for what it measured.

1. A turn's diff at the stored cap (DIFF_MAX_TOTAL_BYTES of git's patch text: one file at half
   the cap, 40 small ones) rendered by ``diff_html.render`` (once per turn, in the worker),
   against Pygments' whole-diff highlighting it replaces; the HTML's size, which every page
   showing the turn sends.
2. ``file_links.link_paths`` on a long reply (about 8,000 characters, 120 path-like words) with
   MAX_PATHS (20,000) known files, and building that set (``links_for``), per page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), max(runs)


def a_diff(cap: int) -> tuple[str, list[dict]]:
    def piece(path: str, lines: int) -> str:
        body = "".join(
            f"-    old_value_{i} = compute({i}, 'x')\n+    new_value_{i} = compute({i}, 'y')\n"
            for i in range(lines)
        )
        head = f"diff --git a/{path} b/{path}\nindex 1..2 100644\n--- a/{path}\n+++ b/{path}\n"
        return head + f"@@ -1,{lines} +1,{lines} @@\n" + body

    big = piece("src/big.py", 1)
    per_line = len(piece("x", 2)) - len(piece("x", 1))
    big = piece("src/big.py", (cap // 2 - len(big)) // per_line)
    pieces, files = [big], [{"path": "src/big.py", "status": "M", "shown": True}]
    i = 0
    while sum(map(len, pieces)) < cap:
        pieces.append(piece(f"pkg/module_{i}.py", 30))
        files.append({"path": f"pkg/module_{i}.py", "status": "M", "shown": True})
        i += 1
    return "".join(pieces)[:cap], files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name

    from assistant import diff_html, file_links
    from assistant.rendering import render_markdown

    print(f"load average: {os.getloadavg()}")
    text, files = a_diff(settings.DIFF_MAX_TOTAL_BYTES)
    old = highlight(text, get_lexer_by_name("diff"), HtmlFormatter(nowrap=True))
    new = diff_html.render(text, files)
    print(f"diff: {len(text):,} bytes of patch, {len(files)} files, {text.count(chr(10)):,} lines")
    for name, fn, html in (
        (
            "Pygments, whole diff (before)",
            lambda: highlight(text, get_lexer_by_name("diff"), HtmlFormatter(nowrap=True)),
            old,
        ),
        ("diff_html.render (now)", lambda: diff_html.render(text, files), new),
    ):
        median, worst = timed(fn, args.repeat)
        print(f"  {name}: median {median:.1f} ms, max {worst:.1f} ms; HTML {len(html):,} bytes")

    paths = [f"pkg/sub_{i // 100}/module_{i}.py" for i in range(file_links.MAX_PATHS)]
    words = " ".join(
        f"see `pkg/sub_{i}/module_{i * 100}.py:{i}` and pkg/other_{i}.py, e.g. the x.y case;"
        for i in range(60)
    )
    reply = render_markdown(words * 2)
    links = file_links.Links(frozenset(paths), "/t/acme/c/x/file/")
    linked = file_links.link_paths(reply, links)
    print(f"reply: {len(reply):,} bytes of HTML, {linked.count('file-link'):,} links made")
    median, worst = timed(lambda: file_links.link_paths(reply, links), args.repeat)
    print(f"  link_paths: median {median:.2f} ms, max {worst:.2f} ms")
    median, worst = timed(lambda: frozenset(paths), args.repeat)
    print(f"  the set of {len(paths):,} known paths: median {median:.2f} ms, max {worst:.2f} ms")


if __name__ == "__main__":
    main()
