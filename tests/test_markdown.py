"""Messages are Markdown rendered to safe HTML: whatever the model or a teammate writes, no
script runs in a reader's browser; code is highlighted and tables work."""

from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from assistant import rendering
from assistant.rendering import render_markdown

ATTACKS = [
    "<script>alert(1)</script>",
    "Hello <script src=https://evil.example/x.js></script> there",
    "<img src=x onerror=alert(1)>",
    '<a href="#" onclick="alert(1)">click</a>',
    '<div onmouseover="alert(1)">hover</div>',
    '<svg onload="alert(1)"></svg>',
    '<iframe src="https://evil.example"></iframe>',
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](vbscript:msgbox(1))",
    "![img](javascript:alert(1))",
    '[click](https://ok.example "title" onmouseover="alert(1)")',
    "<javascript:alert(1)>",
    '<a href="javascript:alert(1)">raw link</a>',
    "<style>body{display:none}</style>",
    '<form action="https://evil.example"><input name=x></form>',
    "```html\n<script>alert(1)</script>\n```",
    "`<script>alert(1)</script>`",
]


def dangerous(html: str) -> list[str]:
    """What in ``html`` could run or load something: real tags and attributes only (escaped
    text such as ``&lt;script&gt;`` is harmless and is what a reader should see)."""
    found = []
    for name, attributes in re.findall(r"<\s*([a-zA-Z][a-zA-Z0-9]*)([^>]*)>", html):
        if name.lower() in {"script", "img", "iframe", "svg", "style", "form", "input", "object"}:
            found.append(f"<{name}>")
        for attr in re.findall(r"\b(on[a-z]+)\s*=", attributes, flags=re.IGNORECASE):
            found.append(attr)
        for url in re.findall(r"\b(?:href|src)\s*=\s*\"([^\"]*)\"", attributes, flags=re.I):
            if not re.match(r"^(https?:|mailto:|#|/)", url.strip(), flags=re.IGNORECASE):
                found.append(f"url {url}")
    return found


@pytest.mark.parametrize("source", ATTACKS)
def test_it_neutralises(source):
    html = render_markdown(source)
    assert not dangerous(html), html


def test_it_shows_raw_html_as_text():
    html = render_markdown("Use <b>bold</b> and <script>x()</script>")
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "<b>" not in html


@pytest.mark.parametrize("source", ATTACKS)
def test_it_sanitises_even_if_the_markdown_layer_let_html_through(monkeypatch, source):
    """nh3 is the second line of defence: with raw HTML switched on in markdown-it, still
    nothing dangerous comes out."""
    permissive = MarkdownIt("commonmark", {"html": True}).enable("table")
    monkeypatch.setattr(rendering, "_md", permissive)
    html = render_markdown.__wrapped__(source)
    assert not dangerous(html), html


def test_the_danger_detector_detects():
    """Control for the tests above."""
    assert dangerous('<p><script>x</script><a href="javascript:x" onclick="y">a</a></p>') == [
        "<script>",
        "onclick",
        "url javascript:x",
    ]
    assert dangerous("<p>&lt;script&gt;</p>") == []


def test_it_keeps_safe_links():
    html = render_markdown("[docs](https://docs.example/a?b=1) and <https://x.example>")
    assert (
        '<a href="https://docs.example/a?b=1" rel="noopener noreferrer nofollow">docs</a>' in html
    )
    assert '<a href="https://x.example" rel="noopener noreferrer nofollow">' in html


def test_it_highlights_code_blocks():
    html = render_markdown("```python\ndef answer():\n    return 42\n```")
    assert '<pre><code class="language-python">' in html
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">answer</span>' in html
    assert '<span class="mi">42</span>' in html


def test_it_escapes_code_in_an_unknown_language():
    html = render_markdown("```nosuchlang\nif a < b && c > d: <tag>\n```")
    assert "<pre><code" in html
    assert "if a &lt; b &amp;&amp; c &gt; d: &lt;tag&gt;" in html


def test_it_renders_tables():
    html = render_markdown("| Name | Count |\n|:-----|------:|\n| apples | 3 |\n| pears | 12 |")
    assert "<table>" in html and "<thead>" in html and "<tbody>" in html
    assert re.search(r"<th[^>]*>Name</th>", html)
    assert re.search(r"<td[^>]*>pears</td>\s*<td[^>]*>12</td>", html)


def test_it_renders_everyday_markdown():
    html = render_markdown("# Title\n\n**bold** *em* ~~gone~~ `code`\n\n- one\n- two\n\n> quote")
    for fragment in (
        "<h1>Title</h1>",
        "<strong>bold</strong>",
        "<em>em</em>",
        "<s>gone</s>",
        "<code>code</code>",
        "<li>one</li>",
        "<blockquote>",
    ):
        assert fragment in html, html
