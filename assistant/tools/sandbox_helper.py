"""What the file, search and git tools run *inside* the sandbox.

The server never opens a path of the (hostile) tree itself: it starts this file's source with
``python3 -I -S -c`` under bubblewrap, sends ``{"op": ..., "args": {...}}`` on stdin and reads one
JSON object back: ``{"ok": bool, "output": str, "truncated": bool, "changed": [...]}``.

Only the standard library, and Python 3.11 (the system ``python3`` the sandbox mounts). The
server imports :func:`check_rel` from here too, to refuse bad paths before starting anything.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import sys

# No typing import at run time: the helper starts on every tool call (mypy knows the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Args = dict[str, Any]  # a tool call's arguments, as the model sent them
    Reply = dict[str, Any]  # {"ok": bool, "output": str, "truncated": bool, "changed": [...]}

ROOT = "/workspace"
MAX_READ_BYTES = 100_000  # read_file: bytes of text returned
MAX_READ_LINES = 2000  # read_file: lines returned when no range is given
MAX_LINE_CHARS = 2000  # read_file: a longer line is cut
MAX_FILES = 500  # list_files
MAX_GREP_LINES = 300  # grep: output lines (matches and context)
MAX_GLOB = 300  # glob: paths returned
MAX_WRITE_BYTES = 5_000_000
RG = [
    "rg",
    "--no-config",
    "--no-require-git",  # .gitignore counts even without a .git
    "--hidden",
    "--glob",
    "!.git",
    "--color=never",
]
GIT = [
    "git",
    "--no-pager",
    "--no-optional-locks",  # the git dir is read-only in here
    "--literal-pathspecs",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "safe.directory=*",  # the tree may belong to another uid than the sandbox's
    "-c",
    "diff.external=",
    "-c",
    "core.pager=cat",
]


class ToolError(Exception):
    """A readable error for the model."""


def check_rel(rel: object, *, what: str = "path") -> str:
    """The path normalised relative to the repository root, or ToolError. No file access."""
    if not isinstance(rel, str) or rel.strip() == "":
        raise ToolError(f"The {what} must be a non-empty string.")
    if "\0" in rel:
        raise ToolError(f"The {what} contains a NUL byte.")
    if rel.startswith("/") or rel.startswith("~"):
        raise ToolError(
            f"“{rel}” is an absolute path; use a path relative to the repository root "
            "(for example src/app.py)."
        )
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise ToolError(f"“{rel}” leaves the repository; only files inside it can be used.")
    return norm


def resolve(rel: object, *, what: str = "path") -> tuple[str, str]:
    """(relative path, absolute path in here) after checking it stays in the repository."""
    norm = check_rel(rel, what=what)
    full = ROOT if norm == "." else posixpath.join(ROOT, norm)
    real = os.path.realpath(full)
    if real != ROOT and not real.startswith(ROOT + "/"):
        raise ToolError(
            f"“{rel}” is (or goes through) a symbolic link pointing outside the repository; "
            "it cannot be used."
        )
    return norm, real


def _not_git(norm: str, rel: str) -> None:
    if norm == ".git" or norm.startswith(".git/"):
        raise ToolError(f"“{rel}” is inside .git, which tools cannot change.")


def _read_text(real: str, rel: str) -> str:
    if not os.path.exists(real):
        raise ToolError(f"“{rel}” does not exist.")
    if os.path.isdir(real):
        raise ToolError(f"“{rel}” is a directory; use list_files to see what it holds.")
    if not os.path.isfile(real):
        raise ToolError(f"“{rel}” is not a regular file.")
    with open(real, "rb") as fh:
        data = fh.read()
    if b"\0" in data[:8192]:
        raise ToolError(f"“{rel}” is a binary file ({len(data)} bytes); it cannot be shown.")
    return data.decode("utf-8", errors="replace")


def op_read_file(args: Args) -> Reply:
    rel = args["path"]
    _norm, real = resolve(rel)
    text = _read_text(real, rel)
    lines = text.splitlines()
    total = len(lines)
    if total == 0:
        return {"ok": True, "output": f"(“{rel}” is empty)"}
    start = args.get("start_line") or 1
    end = args.get("end_line")
    if start < 1 or (end is not None and end < start):
        raise ToolError("start_line must be ≥ 1 and end_line ≥ start_line.")
    if start > total:
        raise ToolError(f"start_line {start} is past the end: “{rel}” has {total} lines.")
    last = min(end or total, total, start - 1 + (MAX_READ_LINES if end is None else total))
    out: list[str] = []
    size, cut_at = 0, None
    for n in range(start, last + 1):
        line = lines[n - 1]
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" … [line cut: {len(lines[n - 1])} characters]"
        piece = f"{n:>6}\t{line}"
        size += len(piece.encode()) + 1
        if size > MAX_READ_BYTES and out:
            cut_at = n - 1
            break
        out.append(piece)
    shown_to = cut_at or last
    truncated = shown_to < (min(end, total) if end else total)
    if truncated:
        why = f"the {MAX_READ_BYTES} byte cap" if cut_at else f"the {MAX_READ_LINES} line cap"
        out.append(
            f"[truncated at {why}: showing lines {start}-{shown_to} of {total}; "
            f"read more with start_line={shown_to + 1}]"
        )
    return {"ok": True, "output": "\n".join(out), "truncated": truncated}


def op_write_file(args: Args) -> Reply:
    rel, content = args["path"], args["content"]
    norm, real = resolve(rel)
    _not_git(norm, rel)
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"The content is too large ({len(data)} bytes; at most {MAX_WRITE_BYTES}).")
    if os.path.isdir(real):
        raise ToolError(f"“{rel}” is a directory.")
    existed = os.path.exists(real)
    parent = os.path.dirname(real)
    try:
        os.makedirs(parent, exist_ok=True)
    except FileExistsError:
        raise ToolError(f"A parent of “{rel}” is a file, not a directory.")
    _write(real, data)
    verb = "Overwrote" if existed else "Created"
    lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
    return {
        "ok": True,
        "output": f"{verb} {norm} ({lines} lines, {len(data)} bytes).",
        "changed": [norm],
    }


def _write(real: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    fd = os.open(real, flags, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def op_edit_file(args: Args) -> Reply:
    rel, old, new = args["path"], args["old_text"], args["new_text"]
    norm, real = resolve(rel)
    _not_git(norm, rel)
    if old == "":
        raise ToolError(
            "old_text is empty; give the exact text to replace (use write_file for new files)."
        )
    if old == new:
        raise ToolError("old_text and new_text are the same; nothing to change.")
    text = _read_text(real, rel)
    count = text.count(old)
    if count == 0:
        hint = ""
        if old.strip() and text.count(old.strip()) > 0:
            hint = " (it does occur with different leading or trailing whitespace)"
        raise ToolError(
            f"old_text was not found in “{rel}”{hint}. It must match the file exactly, "
            "including whitespace and indentation; read the file again and copy the text."
        )
    if count > 1:
        raise ToolError(
            f"old_text occurs {count} times in “{rel}”; it must occur exactly once. "
            "Include more surrounding lines to make it unique."
        )
    at = text.index(old)
    line = text.count("\n", 0, at) + 1
    _write(real, text.replace(old, new, 1).encode("utf-8"))
    return {
        "ok": True,
        "output": (
            f"Edited {norm} at line {line}: replaced {old.count(chr(10)) + 1} line(s) "
            f"with {new.count(chr(10)) + 1}."
        ),
        "changed": [norm],
    }


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A gitignore-style glob as a compiled regex over paths relative to the root.

    No slash: matches the file name anywhere ('*.py'). With one: the whole path, where '*' and
    '?' stop at '/', and '**' spans directories ('src/**/*.py' includes src/a.py).
    """
    pat = pattern.strip().lstrip("/")
    if pat.startswith("./"):
        pat = pat[2:]
    anywhere = "/" not in pat
    out: list[str] = []
    i = 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pat.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pat[i + 2 :]:
            end = pat.index("]", i + 2)
            body = pat[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    body = "".join(out)
    if pat.endswith("/"):
        body += ".*"
    return re.compile(("(?:.*/)?" if anywhere else "") + body + "(?:/.*)?" + r"\Z", re.DOTALL)


def _files(paths: list[str], pattern: str | None) -> list[str]:
    """Files under paths (all by default) that .gitignore keeps and the glob matches, sorted."""
    argv = [*RG, "--files", "--sort=path", "--", *paths]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
    files = proc.stdout.decode("utf-8", "replace").splitlines()
    if proc.returncode not in (0, 1) and not files:
        raise ToolError("Listing failed: " + proc.stderr.decode("utf-8", "replace").strip())
    if pattern and pattern not in ("*", "**", "**/*"):
        rx = glob_regex(pattern)
        files = [f for f in files if rx.match(f)]
    return files


def _search_path(args: Args) -> list[str]:
    rel = args.get("path")
    if rel in (None, "", "."):
        return []
    norm, real = resolve(rel)
    if not os.path.exists(real):
        raise ToolError(f"“{rel}” does not exist.")
    return [norm]


def op_list_files(args: Args) -> Reply:
    files = _files(_search_path(args), args["pattern"])
    if not files:
        return {"ok": True, "output": "No files match."}
    truncated = len(files) > MAX_FILES
    out = files[:MAX_FILES]
    if truncated:
        out.append(f"[showing {MAX_FILES} of {len(files)} files; narrow the pattern or the path]")
    return {"ok": True, "output": "\n".join(out), "truncated": truncated}


def _candidates(paths: list[str]) -> list[str]:
    """Files git tracks plus new ones .gitignore doesn't exclude; without git, ripgrep's view."""
    try:
        out = _git("ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *paths)
    except ToolError as exc:
        if "not a git repository" not in str(exc):
            raise
        return _files(paths, None)
    names = sorted({os.fsdecode(n) for n in out.split(b"\0") if n})
    # Tracked but deleted in the tree, or a submodule (a directory): not files to open.
    return [n for n in names if os.path.isfile(posixpath.join(ROOT, n))]


def op_glob(args: Args) -> Reply:
    pattern = args["pattern"]
    if not pattern.strip():
        raise ToolError("The pattern is empty; give one such as '**/*.py'.")
    files = _candidates(_search_path(args))
    if pattern not in ("*", "**", "**/*"):
        rx = glob_regex(pattern)
        files = [f for f in files if rx.match(f)]
    if not files:
        return {"ok": True, "output": f"No files match “{pattern}”."}

    def mtime(name: str) -> int:
        try:
            return os.lstat(posixpath.join(ROOT, name)).st_mtime_ns
        except OSError:
            return 0

    files.sort(key=lambda name: (-mtime(name), name))  # the most recently changed first
    truncated = len(files) > MAX_GLOB
    out = files[:MAX_GLOB]
    if truncated:
        out.append(f"[showing {MAX_GLOB} of {len(files)} files; narrow the pattern or the path]")
    return {"ok": True, "output": "\n".join(out), "truncated": truncated}


def op_grep(args: Args) -> Reply:
    paths = _search_path(args)
    argv = [*RG, "--line-number", "--no-heading", "--with-filename", "--sort=path"]
    argv += ["--max-columns=400", "--max-columns-preview"]
    if args.get("case_insensitive"):
        argv.append("--ignore-case")
    context = args.get("context_lines") or 0
    if context:
        argv.append(f"--context={min(max(context, 0), 20)}")
    if args.get("glob"):
        # rg's own --glob would override .gitignore: pick the files here instead.
        paths = _files(paths, args["glob"])
        if not paths:
            return {"ok": True, "output": f"No files match the glob “{args['glob']}”."}
    argv += ["--regexp", args["pattern"], "--", *paths]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    lines: list[str] = []
    truncated = False
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPEs
    for raw in proc.stdout:
        if len(lines) >= MAX_GREP_LINES:
            truncated = True
            proc.kill()
            break
        lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
    proc.stdout.close()
    err = proc.stderr.read().decode("utf-8", "replace").strip()
    code = proc.wait()
    if not truncated and code == 2 and not lines:
        raise ToolError("The search failed: " + (err or "ripgrep exited with 2"))
    if not lines:
        return {"ok": True, "output": "No matches."}
    if truncated:
        lines.append(f"[results cut at {MAX_GREP_LINES} lines; narrow the pattern, path or glob]")
    return {"ok": True, "output": "\n".join(lines), "truncated": truncated}


def _git(*args: str, ok: tuple[int, ...] = (0,)) -> bytes:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
    }
    proc = subprocess.run([*GIT, *args], cwd=ROOT, capture_output=True, env=env, check=False)
    if proc.returncode not in ok:
        err = proc.stderr.decode("utf-8", "replace").strip()
        if "not a git repository" in err:
            raise ToolError("This workspace is not a git repository.")
        raise ToolError(f"git {args[0]} failed: {err}")
    return proc.stdout


def op_git_status(args: Args) -> Reply:
    out = _git("status", "--porcelain=v1", "--branch", "--untracked-files=all")
    text = out.decode("utf-8", "replace").rstrip("\n")
    lines = text.splitlines()
    if len(lines) <= 1:
        text += "\nNo changes: the working tree is clean."
    return {"ok": True, "output": text}


def op_git_diff(args: Args) -> Reply:
    paths = _search_path(args)
    flags = ["--no-ext-diff", "--no-textconv", "--no-color"]
    parts = [_git("diff", *flags, "HEAD", "--", *paths).decode("utf-8", "replace")]
    untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *paths)
    for name in filter(None, untracked.split(b"\0")):
        diff = _git("diff", *flags, "--no-index", "--", "/dev/null", os.fsdecode(name), ok=(0, 1))
        parts.append(diff.decode("utf-8", "replace"))
    text = "".join(parts)
    return {"ok": True, "output": text or "No changes."}


def op_read_files(args: Args) -> Reply:
    """Text files whose paths match any of the globs, for a plugin's worker-side function:
    the files as git sees the tree (tracked plus new, not ignored), within the caps."""
    regexes = [glob_regex(p) for p in args["patterns"]]
    max_files, max_bytes = int(args["max_files"]), int(args["max_bytes"])
    max_file_bytes = int(args["max_file_bytes"])
    files: list[dict[str, str]] = []
    skipped: list[str] = []
    total = 0
    for name in _candidates([]):
        if not any(rx.match(name) for rx in regexes):
            continue
        try:  # a symlink out of the tree is skipped, never followed
            _norm, real = resolve(name)
            if not os.path.isfile(real):  # a FIFO would block the read
                raise ToolError(name)
            size = os.path.getsize(real)
        except (ToolError, OSError):
            skipped.append(name)
            continue
        if len(files) >= max_files or size > max_file_bytes or total + size > max_bytes:
            skipped.append(name)
            continue
        with open(real, "rb") as fh:
            data = fh.read(max_file_bytes + 1)
        if b"\0" in data[:8192]:
            continue  # binary: nothing a text check can read
        text = data.decode("utf-8", errors="replace")
        size = len(json.dumps(text))  # as it goes out: the caller's output cap is on this
        if total + size > max_bytes:
            skipped.append(name)
            continue
        total += size
        files.append({"path": name, "text": text})
    return {"ok": True, "output": "", "files": files, "skipped": skipped[:1000]}


OPS = {
    "read_file": op_read_file,
    "write_file": op_write_file,
    "edit_file": op_edit_file,
    "list_files": op_list_files,
    "glob": op_glob,
    "grep": op_grep,
    "git_status": op_git_status,
    "git_diff": op_git_diff,
    "read_files": op_read_files,
}


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    try:
        reply = OPS[request["op"]](request["args"])
    except ToolError as exc:
        reply = {"ok": False, "output": str(exc)}
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        reply = {"ok": False, "output": f"{exc.strerror or exc}{where}".replace(ROOT + "/", "")}
    sys.stdout.write(json.dumps(reply))


if __name__ == "__main__":
    main()
