"""A turn's diff as HTML: one foldable section per file, each line with its old and new number.

Rendered once, in the worker, when the diff is stored (diffs.compute), from text that is
already bounded (DIFF_MAX_TOTAL_BYTES): a page only sends what is stored. The markup is the
unified view; the split view (old beside new) is built in the browser from these rows, for the
files a person opens (static/js/diff.js), so a page never carries the diff twice.

Nothing of the diff is ever HTML: every line is escaped. Line numbers are data attributes shown
by CSS, so copying a diff's lines copies the code only.
"""

from __future__ import annotations

import re
from html import escape

# Stored HTML starts with this; older rows (Pygments' whole-diff highlighting) are rendered
# again from their text when shown.
MARK = '<div class="diff-files">'
# A file whose shown diff has more lines than this starts folded.
FOLD_LINES = 120
_CUT = ' <span class="muted">(cut short)</span>'
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def render(text: str, files: list[dict]) -> str:
    """The diff ``text`` (git's patch output, whole files' pieces in order) as HTML; ``files``
    are the turn's stored file entries, whose shown ones match the pieces in order."""
    shown = [f for f in files if f.get("shown")]
    out = [MARK]
    for index, piece in enumerate(_pieces(text)):
        entry = shown[index] if index < len(shown) else {}
        out.append(_file(piece, entry, index))
    out.append("</div>")
    return "".join(out)


def _pieces(text: str) -> list[list[str]]:
    pieces: list[list[str]] = []
    for line in text.split("\n"):
        if line.startswith("diff --git "):
            pieces.append([])
        if pieces:
            pieces[-1].append(line)
    if pieces and pieces[-1] and pieces[-1][-1] == "":
        pieces[-1].pop()  # the text's final newline
    return pieces


def _file(lines: list[str], entry: dict, index: int) -> str:
    rows: list[str] = []
    old = new = 0
    in_hunk = False
    added = deleted = 0
    notes: list[str] = []
    for line in lines[1:]:
        hunk = _HUNK.match(line)
        if hunk:
            old, new = int(hunk.group(1)), int(hunk.group(2))
            in_hunk = True
            rows.append(_note_row("dh", line))
        elif not in_hunk:
            if line.startswith("Binary files"):
                notes.append("Binary file; its contents are not shown.")
            # The rest of git's header (index, modes, ---/+++) is said by the file's summary.
        elif line.startswith("+"):
            rows.append(_row("da", "", new, line[1:]))
            new += 1
            added += 1
        elif line.startswith("-"):
            rows.append(_row("dd", old, "", line[1:]))
            old += 1
            deleted += 1
        elif line.startswith("\\"):
            rows.append(_note_row("dn", line))
        else:
            rows.append(_row("dc", old, new, line[1:]))
            old += 1
            new += 1
    if entry.get("added") is not None:
        added, deleted = entry["added"], entry.get("deleted") or 0
    path = entry.get("path") or _path_of(lines[0])
    name = escape(path)
    if entry.get("old_path"):
        name = f"{escape(entry['old_path'])} → {name}"
    status = escape(entry.get("status", ""))
    folded = len(rows) > FOLD_LINES
    counts = f'<span class="added">+{added}</span> <span class="deleted">−{deleted}</span>'
    if entry.get("binary") or (notes and not rows):
        counts = '<span class="muted">binary</span>'
    head = (
        f'<summary><code class="diff-status">{status}</code> <span class="diff-path">{name}</span> '
        f"{counts}{_CUT if entry.get('clipped') else ''}</summary>"
    )
    body = "".join(f'<p class="muted">{escape(note)}</p>' for note in notes)
    if rows:
        body += (
            # Focusable: a box that scrolls must scroll from the keyboard too.
            f'<div class="diff-scroll" tabindex="0" role="region" aria-label="Changes to {name}">'
            '<table class="diff-table" role="presentation"><tbody>'
            + "".join(rows)
            + "</tbody></table></div>"
        )
    return (
        f'<details class="diff-file" data-testid="diff-file" data-lines="{len(rows)}"'
        f"{'' if folded else ' open'}>{head}{body}</details>"
    )


# Rows are most of a page's bytes on a large diff: cells and rows leave their end tags to the
# parser (valid HTML) and an empty number is no attribute at all.
def _note_row(kind: str, line: str) -> str:
    return f'<tr class="{kind}"><td><td><td>{escape(line)}'


def _row(kind: str, old: int | str, new: int | str, code: str) -> str:
    old_ln = f' data-ln="{old}"' if old != "" else ""
    new_ln = f' data-ln="{new}"' if new != "" else ""
    return f'<tr class="{kind}"><td{old_ln}><td{new_ln}><td>{escape(code)}'


def _path_of(header: str) -> str:
    # "diff --git a/x b/x": used only when the stored entry is missing (it never should be).
    rest = header[len("diff --git ") :]
    half = rest[2 : (len(rest) - 1) // 2] if rest.startswith("a/") else rest
    return half
