"""A turn's changes, read bounded in the worker and stored; the patch download, streamed.

Pages never run git on a workspace: the worker computes a turn's diff once, when the turn
ends (and again if a page finds a turn without one), and stores it as a RunDiff row that the
conversation page, its live updates and shared pages read.

Reading is bounded in time and memory, whatever the turn wrote:

1. ``diff-tree --raw --numstat`` lists the changed files with their blob ids and line counts.
   ``core.bigFileThreshold`` is set to DIFF_MAX_FILE_BYTES, so git counts (and later diffs)
   no file above it: it takes such a file as binary from its size alone, never loading it.
   The listing is read up to a byte cap; at most DIFF_MAX_FILES files are kept.
2. ``cat-file --batch-check`` gives every listed blob's size: files above the cap are named
   with their size ("too large to show"), never read.
3. ``diff-tree -p`` (same threshold) is read incrementally, line by line: each file's diff
   keeps at most half of DIFF_MAX_TOTAL_BYTES, the turn's at most DIFF_MAX_TOTAL_BYTES, and
   git is stopped as soon as the total is reached. Binary files say so in one line.

Every git call goes through ``repos.ws_git_stream``, which takes an argv list: the one place
where the way git is run (hardened, sandboxed) is decided.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from django.conf import settings

from . import diff_html, repos
from .models import Run, RunDiff, Workspace

log = logging.getLogger(__name__)

LISTING_LIMIT = 16 * 1024 * 1024  # bytes of --raw --numstat output read at most
NULL_ID = "0" * 40


@dataclass
class FileChange:
    path: str
    status: str  # "A", "M", "D" or "R"
    old_path: str = ""
    added: int | None = None  # lines; None when binary, too large or not counted
    deleted: int | None = None
    size: int | None = None  # bytes of the larger side
    binary: bool = False
    too_large: bool = False  # above DIFF_MAX_FILE_BYTES: named, never read
    shown: bool = False  # its diff is in the stored text
    clipped: bool = False  # ...but cut short


def _diff_options() -> tuple[str, ...]:
    return (
        "-c", f"core.bigFileThreshold={max(1, settings.DIFF_MAX_FILE_BYTES)}",
        "diff-tree", "-r", "-M", "--no-ext-diff", "--no-textconv", "--ignore-submodules=all",
    )  # fmt: skip


def _name(raw: bytes) -> str:
    # Stored as JSON: names that are not UTF-8 are shown with U+FFFD, like the diff text.
    return raw.decode("utf-8", "replace")


def _listing(workspace: Workspace, old: str, new: str) -> tuple[list[FileChange], dict, int]:
    """The changed files (at most DIFF_MAX_FILES), their blob ids, and how many there are."""
    stream = repos.ws_git_stream(
        workspace, *_diff_options(), "-z", "--raw", "--numstat", "--no-abbrev", old, new,
        doing="Counting the changes", limit=LISTING_LIMIT,
    )  # fmt: skip
    fields = stream.collect().split(b"\0")
    if stream.cut:
        fields = fields[:-1]  # the last field may be cut short
    # --raw first: ":<old mode> <new mode> <old id> <new id> <status>", then one name (two for
    # a rename or copy) per file; then --numstat in the same order: "<added>\t<deleted>\t<name>"
    # or, for a rename, "<added>\t<deleted>\t", old name, new name.
    at, ids = 0, {}
    changes: list[FileChange] = []
    while at < len(fields) and fields[at].startswith(b":"):
        meta = fields[at].split(b" ")
        letter = meta[-1][:1].decode()
        two = letter in ("R", "C")
        if at + (2 if two else 1) >= len(fields):
            break
        old_name, name = (fields[at + 1], fields[at + 2]) if two else (b"", fields[at + 1])
        at += 3 if two else 2
        change = FileChange(
            path=_name(name),
            status={"T": "M", "C": "A"}.get(letter, letter),
            old_path=_name(old_name),
        )
        ids[len(changes)] = (meta[2].decode(), meta[3].decode(), meta[0][1:], meta[1])
        changes.append(change)
    total = len(changes)
    for change in changes:
        if at >= len(fields) or b"\t" not in fields[at]:
            break  # the counts were cut off: those files stay uncounted
        added, deleted, rest = fields[at].split(b"\t", 2)
        at += 3 if rest == b"" else 1
        if added != b"-":
            change.added, change.deleted = int(added), int(deleted)
    limit = max(0, settings.DIFF_MAX_FILES)
    return changes[:limit], {i: v for i, v in ids.items() if i < limit}, total


def _sizes(workspace: Workspace, ids: list[str]) -> dict[str, int]:
    """Blob sizes by id, from the object headers only."""
    ids = [value for value in dict.fromkeys(ids) if value != NULL_ID]
    if not ids:
        return {}
    stream = repos.ws_git_stream(
        workspace, "cat-file", "--batch-check",
        doing="Reading the sizes", limit=LISTING_LIMIT,
        input="".join(f"{value}\n" for value in ids).encode(),
    )  # fmt: skip
    sizes = {}
    for line in stream.collect().decode("ascii", "replace").splitlines():
        parts = line.split()  # "<id> blob <size>", or "<id> missing"
        if len(parts) == 3 and parts[1] == "blob" and parts[2].isdigit():
            sizes[parts[0]] = int(parts[2])
    return sizes


def _patch_pieces(workspace: Workspace, old: str, new: str, count: int) -> tuple[list, bool]:
    """Each file's diff text, in git's order, bounded as the module says; and whether git was
    stopped before the end."""
    total_cap = max(0, settings.DIFF_MAX_TOTAL_BYTES)
    file_cap = total_cap // 2
    # What git may send before we stop it: files are cut at file_cap but read to their end
    # (one file's diff is at most about twice DIFF_MAX_FILE_BYTES).
    budget = 4 * total_cap + 2 * max(0, settings.DIFF_MAX_FILE_BYTES) + 65536
    stream = repos.ws_git_stream(
        workspace, *_diff_options(), "-p", old, new, doing="Computing the diff", limit=budget
    )
    chunks = iter(stream)
    try:
        pieces, stopped = _split(chunks, count, file_cap, total_cap)
    finally:
        chunks.close()  # stops git at once when we stopped reading early
    if stream.cut and pieces:
        pieces[-1][1] = True
    return pieces, stopped or stream.cut


def _split(chunks, count: int, file_cap: int, total_cap: int) -> tuple[list, bool]:
    """git's patch output cut into one piece per file, each at most ``file_cap`` bytes, all
    together at most ``total_cap``; reading stops at the first file past ``count`` or the
    total. The pieces ([text, clipped]) and whether reading stopped early."""
    pieces: list[list] = []  # [bytearray, clipped]
    kept = 0
    stopped = False
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"diff --git "):
                if len(pieces) >= count or kept >= total_cap:
                    stopped = True
                    break
                pieces.append([bytearray(), False])
            if not pieces:
                continue
            piece = pieces[-1]
            room = min(file_cap - len(piece[0]), total_cap - kept)
            if len(line) + 1 <= room:
                piece[0] += line + b"\n"
                kept += len(line) + 1
            else:
                piece[1] = True
        if stopped:
            break
    if pending and pieces and not stopped:
        piece = pieces[-1]  # git's output always ends in a newline; belt and braces
        if len(pending) <= min(file_cap - len(piece[0]), total_cap - kept):
            piece[0] += pending
        else:
            piece[1] = True
    return pieces, stopped


def compute(*, workspace: Workspace, old: str, new: str) -> dict:
    """The fields of a RunDiff for the change from tree ``old`` to tree ``new``."""
    old, new = repos._checked_trees(workspace, old, new)
    changes, ids, total = _listing(workspace, old, new)
    sizes = _sizes(workspace, [i for pair in ids.values() for i in pair[:2]])
    max_file = settings.DIFF_MAX_FILE_BYTES
    for index, change in enumerate(changes):
        old_id, new_id, old_mode, new_mode = ids[index]
        known = [sizes[i] for i in (old_id, new_id) if i in sizes]
        change.size = max(known) if known else None
        if b"160000" in (old_mode, new_mode):
            continue  # a submodule: no blob
        if change.size is not None and change.size > max_file:
            change.too_large = True
            change.added = change.deleted = None
        elif change.added is None and change.size is not None:
            change.binary = True
    pieces, stopped = _patch_pieces(workspace, old, new, len(changes))
    texts = []
    for change, (text, clipped) in zip(changes, pieces, strict=False):
        if change.too_large:
            continue  # named in the list with its size; git only said "Binary files differ"
        change.shown, change.clipped = True, clipped
        texts.append(bytes(text).decode("utf-8", "replace"))
    text = "".join(texts)
    clipped = stopped or total > len(changes) or any(c.clipped for c in changes)
    clipped = clipped or any(not c.shown and not c.too_large for c in changes)
    files = [asdict(c) for c in changes]
    return {
        "files": files,
        "files_total": total,
        "added": sum(c.added or 0 for c in changes),
        "deleted": sum(c.deleted or 0 for c in changes),
        "text": text,
        "html": diff_html.render(text, files) if text else "",
        "clipped": clipped,
        "error": "",
    }


def record(run: Run) -> RunDiff | None:
    """Compute and store a finished turn's diff (again, if it was stored before). In the worker
    only. A failure is stored in words, for the page to say."""
    if not run.changed_files:
        RunDiff.objects.filter(run=run).delete()
        return None
    workspace = Workspace.objects.filter(conversation_id=run.conversation_id).first()
    if workspace is None:
        fields = {"error": "the conversation no longer has a repository."}
    else:
        try:
            fields = compute(workspace=workspace, old=run.tree_before, new=run.tree_after)
        except repos.RepoError as exc:
            log.warning("Could not read the changes of run %s: %s", run.uuid, exc)
            fields = {"error": str(exc).replace(str(repos.repos_root()), "…")}
    diff, _ = RunDiff.objects.update_or_create(run=run, defaults=fields)
    return diff


# --- The patch download ----------------------------------------------------------------------


def patch_stream(*, workspace: Workspace) -> Iterator[bytes]:
    """Everything the conversation changed up to its last finished turn (or undo), for
    ``git apply`` on its base commit: streamed from git, stopped at PATCH_MAX_BYTES with a last
    line saying so: the web process holds one chunk at a time. Empty when nothing changed."""
    cap = max(1, settings.PATCH_MAX_BYTES)
    if not workspace.tree:
        return iter(())
    base, tree = repos._checked_trees(workspace, workspace.base_commit, workspace.tree)
    if base == tree:
        return iter(())
    stream = repos.ws_git_stream(
        workspace,
        "diff-tree", "-r", "-p", "--binary", "-M", "--no-ext-diff", "--no-textconv",
        "--ignore-submodules=all", base, tree,
        doing="Writing the patch", limit=cap, timeout=600,
    )  # fmt: skip
    return _with_notice(stream, cap)


def _with_notice(stream: repos.GitStream, cap: int) -> Iterator[bytes]:
    try:
        yield from stream
    except repos.RepoError as exc:
        yield f"\n# Tandem: the patch is incomplete: {exc}\n".encode()
        return
    if stream.cut:
        yield (
            f"\n# Tandem: the patch was cut at {cap:,} bytes (PATCH_MAX_BYTES); it is "
            "incomplete and will not apply. Push the branch to get all of it.\n"
        ).encode()
