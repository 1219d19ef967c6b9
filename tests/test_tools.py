"""The assistant's tools (assistant/tools): schemas, each tool on a real tree in the sandbox,
hostile paths, bad calls, and git_status/git_diff on a real workspace."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from assistant import repos, sandbox, tools
from assistant.models import Repository
from assistant.sandbox import SandboxLimits
from assistant.tools import ToolContext, ToolResult
from assistant.tools import sandbox_helper as helper

pytestmark = pytest.mark.skipif(
    not Path(sandbox.BWRAP).exists(), reason="bubblewrap is not installed"
)
FAST = SandboxLimits(wall_seconds=10)
APP = "def main():\n    return 1\n\n\ndef other():\n    return 1\n"


@pytest.fixture
def parent() -> Path:
    # Not under pytest's tmp_path: as root the sandbox runs as nobody, which must be able to
    # reach the tree (/tmp/pytest-of-root is 0700).
    path = Path(tempfile.mkdtemp(prefix="tandem-tools-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def ctx(parent) -> ToolContext:
    tree = parent / "tree"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "app.py").write_text(APP)
    (tree / "src" / "util.py").write_text("def helper():\n    return 'Help'\n")
    (tree / "README.md").write_text("# Demo\n\nA small project.\n")
    (tree / ".gitignore").write_text("build/\n*.log\n")
    (tree / "build").mkdir()
    (tree / "build" / "out.py").write_text("def main():\n    return 'built'\n")
    (tree / "debug.log").write_text("main main main\n")
    return ToolContext(tree=tree, git_dir=None, limits=FAST)


def call(name: str, args, ctx: ToolContext) -> ToolResult:
    return asyncio.run(tools.execute(name, args, ctx))


# --- The registry ---------------------------------------------------------------------------


def test_schemas_are_function_calling_shapes():
    found = {s["function"]["name"]: s for s in tools.schemas()}
    assert set(found) == {
        "list_files", "read_file", "write_file", "edit_file", "grep", "glob", "run_command",
        "git_status", "git_diff",
    }  # fmt: skip
    for name, schema in found.items():
        assert schema["type"] == "function"
        fn = schema["function"]
        assert fn["description"] and isinstance(fn["description"], str)
        p = fn["parameters"]
        assert p["type"] == "object" and p["additionalProperties"] is False
        assert set(p["required"]) <= set(p["properties"]), name
        for prop in p["properties"].values():
            assert prop["type"] in ("string", "integer", "boolean") and prop["description"]
    ro = {name for name, tool in tools.TOOLS.items() if tool.read_only}
    assert ro == {"list_files", "read_file", "grep", "glob", "git_status", "git_diff"}
    assert {s["function"]["name"] for s in tools.schemas(read_only=True)} == ro
    assert found["edit_file"]["function"]["parameters"]["required"] == [
        "path", "old_text", "new_text",
    ]  # fmt: skip


def test_bad_calls_are_clear_error_results(ctx):
    cases = [
        ("no_such_tool", {}, "Unknown tool “no_such_tool”"),
        ("read_file", {}, "missing required argument(s): path"),
        ("edit_file", {"path": "a"}, "missing required argument(s): old_text, new_text"),
        ("read_file", {"path": 3}, "argument path must be of type string"),
        ("read_file", {"path": "a", "start_line": "2"}, "start_line must be of type integer"),
        ("read_file", {"path": "a", "start_line": True}, "start_line must be of type integer"),
        ("read_file", {"path": "a", "start_line": 0}, "start_line must be at least 1"),
        ("read_file", {"path": "a", "mode": "x"}, "unknown argument(s): mode"),
        ("grep", "not a dict", "must be a JSON object"),
        ("run_command", {"command": "   "}, "The command is empty"),
    ]
    for name, args, words in cases:
        r = call(name, args, ctx)
        assert not r.ok and words in r.output, (name, args, r)


def test_a_sandbox_that_cannot_start_is_an_error_result(parent):
    r = call("read_file", {"path": "a"}, ToolContext(tree=parent / "missing", limits=FAST))
    assert not r.ok and "could not run" in r.output and "does not exist" in r.output


# --- Files ----------------------------------------------------------------------------------


def test_read_file_with_line_numbers_and_ranges(ctx):
    r = call("read_file", {"path": "src/app.py"}, ctx)
    assert r.ok and not r.truncated, r
    assert r.output.splitlines()[:2] == ["     1\tdef main():", "     2\t    return 1"]
    r = call("read_file", {"path": "src/app.py", "start_line": 5, "end_line": 6}, ctx)
    assert r.output == "     5\tdef other():\n     6\t    return 1"
    r = call("read_file", {"path": "./src/../src/app.py", "start_line": 6}, ctx)
    assert r.output == "     6\t    return 1"
    r = call("read_file", {"path": "src/app.py", "start_line": 60}, ctx)
    assert not r.ok and "has 6 lines" in r.output
    r = call("read_file", {"path": "nope.py"}, ctx)
    assert not r.ok and "“nope.py” does not exist" in r.output
    r = call("read_file", {"path": "src"}, ctx)
    assert not r.ok and "is a directory" in r.output


def test_read_file_caps_with_a_note(ctx):
    (ctx.tree / "long.txt").write_text("".join(f"line {n}\n" for n in range(1, 5001)))
    r = call("read_file", {"path": "long.txt"}, ctx)
    assert r.ok and r.truncated
    lines = r.output.splitlines()
    assert lines[0] == "     1\tline 1" and lines[-2] == f"  {helper.MAX_READ_LINES}\tline 2000"
    assert "showing lines 1-2000 of 5000" in lines[-1] and "start_line=2001" in lines[-1]
    # A range past the line cap is honoured; the byte cap still holds.
    (ctx.tree / "wide.txt").write_text(("x" * 999 + "\n") * 500)
    r = call("read_file", {"path": "wide.txt", "start_line": 10, "end_line": 400}, ctx)
    assert r.truncated and "byte cap" in r.output and len(r.output) < 2 * helper.MAX_READ_BYTES
    (ctx.tree / "blob.bin").write_bytes(b"\x00\x01" * 100)
    r = call("read_file", {"path": "blob.bin"}, ctx)
    assert not r.ok and "binary file (200 bytes)" in r.output


def test_list_files_respects_gitignore_and_globs(ctx):
    r = call("list_files", {"pattern": "*"}, ctx)
    assert r.ok and r.output.splitlines() == [
        ".gitignore", "README.md", "src/app.py", "src/util.py",
    ], r  # fmt: skip
    assert call("list_files", {"pattern": "*.py"}, ctx).output == "src/app.py\nsrc/util.py"
    assert call("list_files", {"pattern": "**/util.py"}, ctx).output == "src/util.py"
    assert call("list_files", {"pattern": "*", "path": "src"}, ctx).output.count("\n") == 1
    assert call("list_files", {"pattern": "*.rs"}, ctx).output == "No files match."


def test_list_files_is_capped_with_a_note(ctx):
    many = ctx.tree / "many"
    many.mkdir()
    for n in range(helper.MAX_FILES + 20):
        (many / f"f{n:04}.txt").write_text("")
    r = call("list_files", {"pattern": "*.txt"}, ctx)
    assert r.ok and r.truncated
    assert f"showing {helper.MAX_FILES} of {helper.MAX_FILES + 20} files" in r.output


def test_glob_finds_files_newest_first_and_respects_gitignore(ctx):
    # Without git: ripgrep's list (.gitignore counts). Newest first, then by name.
    for age, name in enumerate(["src/util.py", "src/app.py", "README.md"]):
        os.utime(ctx.tree / name, (1_700_000_000 - age, 1_700_000_000 - age))
    r = call("glob", {"pattern": "**/*.py"}, ctx)
    assert r.ok and r.output == "src/util.py\nsrc/app.py", r
    assert call("glob", {"pattern": "*.md"}, ctx).output == "README.md"
    assert call("glob", {"pattern": "*", "path": "src"}, ctx).output == "src/util.py\nsrc/app.py"
    assert call("glob", {"pattern": "*.rs"}, ctx).output == "No files match “*.rs”."
    r = call("glob", {"pattern": " "}, ctx)
    assert not r.ok and "The pattern is empty" in r.output


def test_glob_in_a_git_tree_lists_tracked_and_new_files(ctx):
    env = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    tree = ctx.tree
    (tree / "build" / "keep.py").write_text("tracked although ignored\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["add", "-f", "build/keep.py"],
        ["commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=tree, env=env, check=True, capture_output=True)
    (tree / "src" / "new.py").write_text("untracked, not ignored\n")
    os.utime(tree / "src" / "new.py", (2_000_000_000, 2_000_000_000))
    (tree / "src" / "util.py").unlink()  # tracked, deleted: not listed
    r = call("glob", {"pattern": "*.py"}, ctx)
    assert r.ok and sorted(r.output.splitlines()) == ["build/keep.py", "src/app.py", "src/new.py"]
    assert r.output.splitlines()[0] == "src/new.py"  # the newest
    assert call("glob", {"pattern": "build/*"}, ctx).output == "build/keep.py"  # not out.py


def test_glob_is_capped_with_a_note(ctx):
    many = ctx.tree / "many"
    many.mkdir()
    for n in range(helper.MAX_GLOB + 5):
        (many / f"f{n:04}.txt").write_text("")
    r = call("glob", {"pattern": "many/*.txt"}, ctx)
    assert r.ok and r.truncated
    assert f"showing {helper.MAX_GLOB} of {helper.MAX_GLOB + 5} files" in r.output


def test_write_file_then_read_it_back(ctx):
    r = call("write_file", {"path": "new/deep/mod.py", "content": "x = 'é'\ny = 2\n"}, ctx)
    assert r.ok and r.changed_files == ["new/deep/mod.py"] and "Created" in r.output, r
    assert (ctx.tree / "new/deep/mod.py").read_text() == "x = 'é'\ny = 2\n"
    r = call("read_file", {"path": "new/deep/mod.py"}, ctx)
    assert r.output == "     1\tx = 'é'\n     2\ty = 2"
    r = call("write_file", {"path": "new/deep/mod.py", "content": ""}, ctx)
    assert r.ok and "Overwrote" in r.output
    r = call("write_file", {"path": "src", "content": "x"}, ctx)
    assert not r.ok and "is a directory" in r.output


def test_edit_file_exact_replace_and_its_errors(ctx):
    args = {"path": "src/app.py", "old_text": "def main():\n    return 1", "new_text": "X"}
    r = call("edit_file", args, ctx)
    assert r.ok and r.changed_files == ["src/app.py"] and "line 1" in r.output, r
    assert (ctx.tree / "src/app.py").read_text() == APP.replace("def main():\n    return 1", "X")

    r = call("edit_file", {"path": "src/app.py", "old_text": "    return 1", "new_text": "y"}, ctx)
    assert r.ok  # only one left now
    r = call("edit_file", {"path": "src/util.py", "old_text": "nothing", "new_text": "y"}, ctx)
    assert not r.ok and "old_text was not found in “src/util.py”" in r.output
    (ctx.tree / "dup.py").write_text("a = 1\na = 1\na = 1\n")
    r = call("edit_file", {"path": "dup.py", "old_text": "a = 1", "new_text": "a = 2"}, ctx)
    assert not r.ok and "occurs 3 times" in r.output and "exactly once" in r.output
    assert (ctx.tree / "dup.py").read_text() == "a = 1\na = 1\na = 1\n"
    r = call("edit_file", {"path": "dup.py", "old_text": "", "new_text": "z"}, ctx)
    assert not r.ok and "old_text is empty" in r.output
    r = call("edit_file", {"path": "missing.py", "old_text": "a", "new_text": "b"}, ctx)
    assert not r.ok and "does not exist" in r.output


# --- Hostile paths --------------------------------------------------------------------------


def test_paths_outside_the_tree_are_refused_clearly(ctx, parent):
    (parent / "secret.txt").write_text("the server's secret\n")
    (ctx.tree / "passwd").symlink_to("/etc/passwd")
    (ctx.tree / "up").symlink_to(parent)
    (ctx.tree / "secret-link").symlink_to(parent / "secret.txt")
    attempts = [
        ("read_file", {"path": "../secret.txt"}, "leaves the repository"),
        ("read_file", {"path": "src/../../secret.txt"}, "leaves the repository"),
        ("read_file", {"path": "/etc/passwd"}, "is an absolute path"),
        ("read_file", {"path": str(parent / "secret.txt")}, "is an absolute path"),
        ("read_file", {"path": "passwd"}, "symbolic link pointing outside"),
        ("read_file", {"path": "secret-link"}, "symbolic link pointing outside"),
        ("read_file", {"path": "up/secret.txt"}, "symbolic link pointing outside"),
        ("write_file", {"path": "up/planted.txt", "content": "x"}, "symbolic link pointing"),
        ("write_file", {"path": "passwd", "content": "x"}, "symbolic link pointing outside"),
        ("write_file", {"path": "../planted.txt", "content": "x"}, "leaves the repository"),
        ("write_file", {"path": ".git/config", "content": "x"}, "inside .git"),
        ("edit_file", {"path": "passwd", "old_text": "root", "new_text": "x"}, "symbolic link"),
        ("list_files", {"pattern": "*", "path": "up"}, "symbolic link pointing outside"),
        ("list_files", {"pattern": "*", "path": "/etc"}, "is an absolute path"),
        ("grep", {"pattern": "root", "path": "passwd"}, "symbolic link pointing outside"),
        ("grep", {"pattern": "secret", "path": ".."}, "leaves the repository"),
    ]
    for name, args, words in attempts:
        r = call(name, args, ctx)
        assert not r.ok and words in r.output, (name, args, r)
        assert "root:" not in r.output and "the server's secret" not in r.output
    assert not (parent / "planted.txt").exists()
    assert (parent / "secret.txt").read_text() == "the server's secret\n"
    # And a plain grep of the whole tree doesn't follow the links either.
    r = call("grep", {"pattern": "secret|root:"}, ctx)
    assert r.ok and r.output == "No matches.", r
    # The commands the model can run see only the sandbox.
    r = call("run_command", {"command": "cat ../secret.txt; cat up/secret.txt"}, ctx)
    assert not r.ok and "the server's secret" not in r.output


# --- Search ---------------------------------------------------------------------------------


def test_grep_with_context_case_and_globs(ctx):
    r = call("grep", {"pattern": r"def \w+\(\)"}, ctx)
    assert r.ok and r.output.splitlines() == [
        "src/app.py:1:def main():", "src/app.py:5:def other():", "src/util.py:1:def helper():",
    ], r  # build/ and *.log are ignored  # fmt: skip
    args = {"pattern": "'HELP'", "case_insensitive": True, "context_lines": 1}
    r = call("grep", args, ctx)
    assert r.output.splitlines() == [
        "src/util.py-1-def helper():",
        "src/util.py:2:    return 'Help'",
    ]
    assert call("grep", {"pattern": "'HELP'"}, ctx).output == "No matches."
    r = call("grep", {"pattern": "main", "glob": "*.md"}, ctx)
    assert r.output == "No matches."
    r = call("grep", {"pattern": "small", "glob": "*.md"}, ctx)
    assert r.output == "README.md:3:A small project."
    r = call("grep", {"pattern": "main", "glob": "*.log"}, ctx)
    assert "No files match the glob" in r.output  # still ignored by .gitignore
    r = call("grep", {"pattern": "return", "path": "src/util.py"}, ctx)
    assert r.output == "src/util.py:2:    return 'Help'"
    r = call("grep", {"pattern": "("}, ctx)
    assert not r.ok and "The search failed" in r.output and "regex" in r.output


def test_grep_results_are_capped_with_a_note(ctx):
    (ctx.tree / "big.txt").write_text("needle\n" * 1000)
    r = call("grep", {"pattern": "needle"}, ctx)
    assert r.ok and r.truncated
    lines = r.output.splitlines()
    assert len(lines) == helper.MAX_GREP_LINES + 1 and "results cut at" in lines[-1]


# --- Commands -------------------------------------------------------------------------------


def test_run_command_exit_code_and_combined_output(ctx):
    r = call("run_command", {"command": "echo out; echo err >&2; ls src"}, ctx)
    assert r.ok and r.exit_code == 0 and not r.truncated, r
    assert r.output == "out\nerr\napp.py\nutil.py\n"
    r = call("run_command", {"command": "echo partial; exit 7"}, ctx)
    assert not r.ok and r.exit_code == 7 and r.output == "partial\n[exit code 7]"
    r = call("run_command", {"command": "no-such-program"}, ctx)
    assert r.exit_code == 127 and "not found" in r.output
    r = call("run_command", {"command": "echo made > made.txt"}, ctx)
    assert r.ok and (ctx.tree / "made.txt").read_text() == "made\n"
    # A script's prints and errors in the order they happened (stdout is not held back).
    script = "import sys; print('first'); sys.stderr.write('second\\n')"
    r = call("run_command", {"command": f'python3 -c "{script}"'}, ctx)
    assert r.output == "first\nsecond\n", r


def test_run_command_long_output_is_clipped_and_timeouts_reported(ctx):
    r = call("run_command", {"command": "seq 1 100000"}, ctx)
    assert r.ok and r.truncated and "characters cut from the middle" in r.output
    assert r.output.startswith("1\n2\n") and r.output.endswith("99999\n100000\n")
    slow = ToolContext(tree=ctx.tree, limits=SandboxLimits(wall_seconds=1))
    r = call("run_command", {"command": "echo started; sleep 30"}, slow)
    assert not r.ok and r.exit_code is None
    assert "started" in r.output and "ran longer than 1 s" in r.output


# --- Git on a real workspace ----------------------------------------------------------------


@pytest.mark.django_db
def test_git_status_and_diff_show_an_edit(settings, parent, conversation, team):
    settings.REPOS_ROOT = parent / "repos"
    origin = parent / "origin"
    origin.mkdir()
    (origin / "app.py").write_text("def main():\n    return 1\n")
    (origin / "notes.txt").write_text("keep\n")
    env = {
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "PATH": "/usr/bin:/bin",
        "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@example.com",
    }  # fmt: skip
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=origin, env=env, check=True)
    repo = Repository.objects.create(team=team, name="demo", url=str(origin))
    ws = repos.create_workspace(conversation=conversation, repo=repo, branch="main")
    wctx = ToolContext(
        tree=repos.workspace_path(workspace=ws), git_dir=repos.git_dir(workspace=ws), limits=FAST
    )

    r = call("git_status", {}, wctx)
    assert r.ok and "## tandem/" in r.output and "clean" in r.output, r
    assert call("git_diff", {}, wctx).output == "No changes."

    edit = {"path": "app.py", "old_text": "return 1", "new_text": "return 42"}
    assert call("edit_file", edit, wctx).ok
    assert call("write_file", {"path": "new.txt", "content": "fresh\n"}, wctx).ok
    r = call("git_status", {}, wctx)
    assert r.ok and " M app.py" in r.output and "?? new.txt" in r.output, r
    r = call("git_diff", {}, wctx)
    assert r.ok and "-    return 1\n+    return 42" in r.output, r
    assert "+++ b/new.txt" in r.output and "+fresh" in r.output
    r = call("git_diff", {"path": "new.txt"}, wctx)
    assert "app.py" not in r.output and "+fresh" in r.output
    # The server's view agrees, and the read-only git dir was not written by the sandbox.
    assert {e.path for e in repos.status(workspace=ws)} == {"app.py", "new.txt"}
    r = call("write_file", {"path": ".git/hooks/pre-commit", "content": "x"}, wctx)
    assert not r.ok and "inside .git" in r.output
    r = call("run_command", {"command": "touch .git/planted"}, wctx)
    assert not r.ok and not (repos.git_dir(workspace=ws) / "planted").exists()


def test_git_status_without_a_repository_is_an_error_result(ctx):
    r = call("git_status", {}, ctx)
    assert not r.ok and "not a git repository" in r.output
