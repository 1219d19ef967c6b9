"""What the agent is told about the repository it works on, in its system prompt: the project's
kind and tooling, its languages, its own instructions for coding agents, its README and the top
of its tree, as Markdown of at most MAX_CHARS characters.

Everything comes from git objects of a snapshot of the workspace, never from files on disk: the
tree is hostile (the agent and the repository's authors control it), and a README that is a
symlink to /etc/passwd would put the server's files into a prompt the team can read. Symlinks
(mode 120000, whose blob is the target's path) are never read at all.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from . import file_links, repos
from .models import Workspace
from .repos import RepoError, TreeEntry

log = logging.getLogger(__name__)

MAX_CHARS = 12_000
README_CHARS = 4_000
INSTRUCTIONS_CHARS = 6_000
TREE_LINES = 60
CHILDREN_PER_DIRECTORY = 10
# Larger blobs are not read at all: git hands over a blob whole, and a project's README or
# manifest is never this big unless something is wrong with it.
MAX_BLOB_BYTES = 1 << 20
TRIMMED = "[… trimmed]"

_FILE_MODES = ("100644", "100755")
_SYMLINK = "120000"
_SUBMODULE = "160000"

README_NAMES = ("README.md", "README.rst", "README.txt", "README", "README.markdown")
INSTRUCTION_FILES = ("AGENTS.md", "CLAUDE.md", ".github/copilot-instructions.md")

# By extension; prose and data (Markdown, JSON, YAML) are left out, as GitHub does.
LANGUAGES = {
    **dict.fromkeys(("py", "pyi", "pyx"), "Python"),
    "ipynb": "Jupyter Notebook",
    **dict.fromkeys(("js", "mjs", "cjs", "jsx"), "JavaScript"),
    **dict.fromkeys(("ts", "tsx", "mts", "cts"), "TypeScript"),
    "vue": "Vue",
    "svelte": "Svelte",
    "astro": "Astro",
    **dict.fromkeys(("html", "htm"), "HTML"),
    "css": "CSS",
    **dict.fromkeys(("scss", "sass"), "SCSS"),
    "less": "Less",
    "go": "Go",
    "rs": "Rust",
    "java": "Java",
    **dict.fromkeys(("kt", "kts"), "Kotlin"),
    "scala": "Scala",
    **dict.fromkeys(("groovy", "gradle"), "Groovy"),
    **dict.fromkeys(("clj", "cljs", "cljc"), "Clojure"),
    **dict.fromkeys(("c", "h"), "C"),
    **dict.fromkeys(("cc", "cpp", "cxx", "hpp", "hh", "hxx"), "C++"),
    "cu": "CUDA",
    "cs": "C#",
    "fs": "F#",
    "m": "Objective-C",
    "mm": "Objective-C++",
    "swift": "Swift",
    **dict.fromkeys(("rb", "rake", "erb"), "Ruby"),
    "php": "PHP",
    **dict.fromkeys(("pl", "pm"), "Perl"),
    **dict.fromkeys(("sh", "bash", "zsh"), "Shell"),
    "ps1": "PowerShell",
    "lua": "Lua",
    "r": "R",
    "jl": "Julia",
    "dart": "Dart",
    **dict.fromkeys(("ex", "exs", "heex"), "Elixir"),
    "erl": "Erlang",
    "hs": "Haskell",
    **dict.fromkeys(("ml", "mli"), "OCaml"),
    "elm": "Elm",
    "zig": "Zig",
    "nim": "Nim",
    "sql": "SQL",
    **dict.fromkeys(("tf", "hcl"), "HCL"),
    "sol": "Solidity",
    **dict.fromkeys(("asm", "s"), "Assembly"),
    **dict.fromkeys(("f90", "f95", "f03"), "Fortran"),
    "vim": "Vim Script",
    "coffee": "CoffeeScript",
    "tex": "TeX",
    "cmake": "CMake",
    "gd": "GDScript",
    "nix": "Nix",
}
# Third-party or generated code says little about the project; GitHub leaves it out too.
_VENDORED = {
    "node_modules", "vendor", "third_party", "third-party", "bower_components", "dist",
    "build", ".venv", "venv", "site-packages", "__pycache__", ".yarn",
}  # fmt: skip
_GENERATED = re.compile(r"\.min\.(js|css)$|\.bundle\.js$|\.map$")

# (what, files that mark it): the first match in a directory names the project there.
PROJECT_KINDS = (
    ("Python", ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt", "Pipfile")),
    ("Node.js", ("package.json",)),
    ("Deno", ("deno.json", "deno.jsonc")),
    ("Rust", ("Cargo.toml",)),
    ("Go", ("go.mod",)),
    ("Java/JVM", ("pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle.kts")),
    ("Ruby", ("Gemfile",)),
    ("PHP", ("composer.json",)),
    ("Elixir", ("mix.exs",)),
    ("Swift", ("Package.swift",)),
    ("Dart/Flutter", ("pubspec.yaml",)),
    ("C/C++ (CMake)", ("CMakeLists.txt",)),
)
# Lockfiles and the like: which tool manages the project in that directory.
PACKAGE_MANAGERS = (
    ("uv.lock", "uv"),
    ("poetry.lock", "Poetry"),
    ("Pipfile.lock", "Pipenv"),
    ("pdm.lock", "PDM"),
    ("requirements.txt", "pip (requirements.txt)"),
    ("package-lock.json", "npm"),
    ("yarn.lock", "Yarn"),
    ("pnpm-lock.yaml", "pnpm"),
    ("bun.lockb", "Bun"),
    ("bun.lock", "Bun"),
    ("Cargo.lock", "Cargo"),
    ("Gemfile.lock", "Bundler"),
    ("composer.lock", "Composer"),
    ("pom.xml", "Maven"),
    ("build.gradle", "Gradle"),
    ("build.gradle.kts", "Gradle"),
)
# Top-level files (or directories, with a trailing "/") → a tool the project uses.
TOOLS = (
    (("Makefile", "GNUmakefile", "makefile"), "Make"),
    (("justfile", "Justfile"), "just"),
    (("Taskfile.yml", "Taskfile.yaml"), "Task"),
    (("Dockerfile", "Containerfile"), "Docker"),
    (("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"), "Compose"),
    ((".github/workflows/",), "GitHub Actions"),
    ((".gitlab-ci.yml",), "GitLab CI"),
    ((".circleci/",), "CircleCI"),
    (("Jenkinsfile",), "Jenkins"),
    ((".pre-commit-config.yaml",), "pre-commit"),
    (("pytest.ini", "conftest.py", "tests/conftest.py"), "pytest"),
    (("tox.ini",), "tox"),
    (("noxfile.py",), "nox"),
    (("ruff.toml", ".ruff.toml"), "Ruff"),
    (("mypy.ini", ".mypy.ini"), "mypy"),
    (("manage.py",), "Django"),
    (("tsconfig.json",), "TypeScript"),
    (("eslint.config.js", "eslint.config.mjs", ".eslintrc.js", ".eslintrc.json"), "ESLint"),
    ((".prettierrc", ".prettierrc.json", "prettier.config.js"), "Prettier"),
    (("jest.config.js", "jest.config.ts"), "Jest"),
    (("vitest.config.ts", "vitest.config.js"), "Vitest"),
    (("playwright.config.ts", "playwright.config.js"), "Playwright"),
    ((".golangci.yml", ".golangci.yaml"), "golangci-lint"),
    (("flake.nix",), "Nix"),
)
# Small manifests whose contents name more tooling: read when present, at the top level.
_MANIFESTS = ("pyproject.toml", "package.json", "Makefile", "GNUmakefile", "makefile")
_MANIFEST_BYTES = 256 * 1024


def build(*, workspace: Workspace) -> str:
    """The repository context for the system prompt, as Markdown; RepoError if git fails."""
    tree = repos.snapshot(workspace=workspace)
    entries = repos.tree_entries(workspace=workspace, tree=tree)
    file_links.remember(workspace, entries)  # listed anyway: what replies may link to
    repo = _Repo(entries)
    header = (
        f"# Repository: {_inline(workspace.repository.name)} (branch {_inline(workspace.branch)})"
    )
    if not repo.files:
        return header + "\n\nThe repository has no files yet.\n"

    manifests = [repo.paths[name] for name in _MANIFESTS if name in repo.paths]
    instruction_files = _present(repo, INSTRUCTION_FILES)
    readmes = _present(repo, README_NAMES, any_case=True)
    small = [
        e
        for e in manifests + instruction_files + readmes
        if e.size is not None and e.size <= MAX_BLOB_BYTES
    ]
    blobs = repos.read_blobs(workspace=workspace, ids=[entry.id for entry in small])
    instructions = _first_text(instruction_files, blobs)
    readme = _first_text(readmes, blobs)

    head = "\n\n".join([header, _project(repo, blobs)])
    files = _files(repo)
    room = MAX_CHARS - len(head) - len(files) - 200  # headings and the notes
    sections = [head]
    if instructions:
        path, text = instructions
        sections.append(
            f"## The project's instructions for coding agents ({_inline(path)})\n\n"
            "From the repository: its maintainers' conventions for coding agents. Follow them "
            "where they do not conflict with your instructions or the request.\n\n"
            + _document(path, text, min(INSTRUCTIONS_CHARS, room))
        )
        room -= len(sections[-1])
    if readme:
        path, text = readme
        sections.append(
            f"## README ({_inline(path)})\n\n"
            + _document(path, text, min(README_CHARS, room - 100))
        )
    sections.append(files)
    text = "\n\n".join(sections) + "\n"
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - len(TRIMMED) - 1] + TRIMMED + "\n"


def build_safe(*, workspace: Workspace) -> str:
    """`build`, or "" when the repository cannot be read: a run goes on without the context."""
    try:
        return build(workspace=workspace)
    except (RepoError, OSError) as exc:
        log.warning("Repository context for workspace %s unavailable: %s", workspace.uuid, exc)
        return ""


# --- The tree --------------------------------------------------------------------------------


@dataclass
class _Repo:
    entries: list[TreeEntry]
    files: list[TreeEntry] = field(init=False)  # regular files and symlinks: what is counted
    paths: dict[str, TreeEntry] = field(init=False)  # regular files only: what may be read
    directories: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.files = [e for e in self.entries if e.mode in (*_FILE_MODES, _SYMLINK)]
        self.paths = {e.path: e for e in self.entries if e.mode in _FILE_MODES}
        # String work, not PurePosixPath: this runs over every file of trees of 20,000 and more.
        self.directories = set()
        for entry in self.entries:
            cut = entry.path.rfind("/")
            while cut > 0 and entry.path[:cut] not in self.directories:
                self.directories.add(entry.path[:cut])
                cut = entry.path.rfind("/", 0, cut)

    def has(self, name: str) -> bool:
        return name[:-1] in self.directories if name.endswith("/") else name in self.paths


def _present(repo: _Repo, names: tuple[str, ...], *, any_case: bool = False) -> list[TreeEntry]:
    found = []
    for name in names:
        if name in repo.paths:
            found.append(repo.paths[name])
        elif any_case:  # readme.md, Readme.md: only at the top level, like the others
            found += [
                e for p, e in repo.paths.items() if "/" not in p and p.lower() == name.lower()
            ]
    return list(dict.fromkeys(found))


def _first_text(entries: list[TreeEntry], blobs: dict[str, bytes]) -> tuple[str, str] | None:
    """The first of the files that is text, not empty and not too large: (path, text)."""
    for entry in entries:
        data = blobs.get(entry.id)
        if data is None or b"\0" in data[:8192]:  # too large, or binary
            continue
        text = data.decode("utf-8", "replace").removeprefix("\ufeff").strip()
        if text:
            return entry.path, text
    return None


def _document(path: str, text: str, limit: int) -> str:
    if limit < 200:
        return f"({_inline(path)} is not shown: the context is full.)"
    return _fenced(_trimmed(text, limit), "rst" if path.endswith(".rst") else "markdown")


def _trimmed(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    if cut.rfind("\n") > limit * 0.8:  # end on a whole line when one is near
        cut = cut[: cut.rfind("\n")]
    return f"{cut.rstrip()}\n{TRIMMED}"


def _fenced(text: str, language: str = "") -> str:
    # Longer than any run of backticks inside, so the content cannot close the fence early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _inline(name: str) -> str:
    # Names are the repository's: no control character may start a line of the prompt.
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    shown = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m[0]):02x}", shown)
    return shown if len(shown) <= 80 else shown[:79] + "…"


# --- What the project is -----------------------------------------------------------------------


def _project(repo: _Repo, blobs: dict[str, bytes]) -> str:
    lines = ["## Project"]
    places = [""] + sorted(d + "/" for d in repo.directories if "/" not in d)
    kinds = []
    for place in places:
        for kind, markers in PROJECT_KINDS:
            found = [m for m in markers if place + m in repo.paths]
            if found:
                kinds.append(_kind_line(repo, blobs, place, kind, found))
                break
    shown = kinds[:8] + (
        [f"- ({len(kinds) - 8} more projects in subdirectories)"] * (len(kinds) > 8)
    )
    lines += shown or ["- No build or package files at the top level."]
    tools = _tools(repo, blobs)
    if tools:
        lines.append("- Tooling: " + ", ".join(tools))
    languages = _languages(repo)
    if languages:
        lines.append("- Languages (by bytes): " + languages)
    return "\n".join(lines)


def _kind_line(
    repo: _Repo, blobs: dict[str, bytes], place: str, kind: str, markers: list[str]
) -> str:
    details = [", ".join(markers)]
    managers = dict.fromkeys(
        manager for lockfile, manager in PACKAGE_MANAGERS if place + lockfile in repo.paths
    )
    details += managers
    if not place and "pyproject.toml" in markers:
        details += _pyproject(blobs.get(repo.paths["pyproject.toml"].id, b""))
    if not place and "package.json" in markers:
        details += _package_json(blobs.get(repo.paths["package.json"].id, b""))
    where = f" in {_inline(place)}" if place else ""
    return f"- {kind}{where} ({'; '.join(details)})"


def _pyproject(data: bytes) -> list[str]:
    try:
        parsed = tomllib.loads(data[:_MANIFEST_BYTES].decode("utf-8", "replace"))
    except (ValueError, RecursionError):  # the file is the repository's: anything goes
        return []
    details = []
    build_system = parsed.get("build-system")
    backend = build_system.get("build-backend") if isinstance(build_system, dict) else None
    if isinstance(backend, str):
        details.append(f"build backend {_inline(backend)}")
    tools = parsed.get("tool", {})
    if isinstance(tools, dict) and tools:
        details.append("configures " + ", ".join(_inline(str(name)) for name in list(tools)[:12]))
    return details


def _package_json(data: bytes) -> list[str]:
    try:
        parsed = json.loads(data[:_MANIFEST_BYTES].decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return []
    if not isinstance(parsed, dict):
        return []
    details = []
    if isinstance(parsed.get("packageManager"), str):
        details.append(_inline(parsed["packageManager"]))
    scripts = parsed.get("scripts")
    if isinstance(scripts, dict) and scripts:
        details.append("scripts: " + ", ".join(_inline(str(name)) for name in list(scripts)[:12]))
    return details


def _tools(repo: _Repo, blobs: dict[str, bytes]) -> list[str]:
    tools = []
    for markers, tool in TOOLS:
        if any(repo.has(marker) for marker in markers):
            tools.append(tool)
    if "GitHub Actions" in tools:
        workflows = sorted(
            path.rpartition("/")[2]
            for path in repo.paths
            if path.startswith(".github/workflows/") and path.endswith((".yml", ".yaml"))
        )
        if workflows:
            tools[tools.index("GitHub Actions")] += f" ({', '.join(map(_inline, workflows[:6]))})"
    makefile = next((repo.paths[n] for n in _MANIFESTS[2:] if n in repo.paths), None)
    targets = _make_targets(blobs.get(makefile.id, b"")) if makefile else []
    if targets:
        tools[tools.index("Make")] += f" (targets: {', '.join(targets)})"
    if "pytest" not in tools and _pytest_configured(repo, blobs):
        tools.append("pytest")
    return list(dict.fromkeys(tools))


def _make_targets(data: bytes) -> list[str]:
    text = data[:_MANIFEST_BYTES].decode("utf-8", "replace")
    targets = re.findall(r"^([A-Za-z0-9][\w./-]*)\s*:(?![:=])", text, re.MULTILINE)
    return [_inline(name) for name in dict.fromkeys(targets)][:12]


def _pytest_configured(repo: _Repo, blobs: dict[str, bytes]) -> bool:
    if any(path.rpartition("/")[2] == "conftest.py" for path in repo.paths):
        return True
    pyproject = repo.paths.get("pyproject.toml")
    return pyproject is not None and b"[tool.pytest" in blobs.get(pyproject.id, b"")


def _languages(repo: _Repo) -> str:
    sizes: Counter[str] = Counter()
    for entry in repo.paths.values():
        *directories, name = entry.path.split("/")
        stem, dot, extension = name.rpartition(".")
        language = LANGUAGES.get(extension.lower()) if dot and stem else None
        if not language or not entry.size or _GENERATED.search(name):
            continue
        if _VENDORED.isdisjoint(directories):
            sizes[language] += entry.size
    total = sum(sizes.values())
    return ", ".join(f"{name} {size / total:.1%}" for name, size in sizes.most_common(5))


# --- The top of the tree -----------------------------------------------------------------------


def _files(repo: _Repo) -> str:
    children: dict[str, dict[str, None]] = defaultdict(dict)  # directory → names, in order
    counts: Counter[str] = Counter()  # directory → files in it, at any depth
    top: dict[str, None] = {}
    for entry in repo.entries:  # their order does not matter: the names are sorted below
        parts = entry.path.split("/", 2)
        suffix = {_SYMLINK: "@", _SUBMODULE: "/ (submodule)"}.get(entry.mode, "")
        if len(parts) == 1:
            top[parts[0] + suffix] = None
            continue
        top[parts[0] + "/"] = None
        counts[parts[0]] += 1
        children[parts[0]][parts[1] + ("/" if len(parts) > 2 else suffix)] = None

    def order(names: dict[str, None]) -> list[str]:  # directories first, then files
        return sorted(names, key=lambda name: (not name.endswith("/"), name.lower()))

    names = order(top)
    if len(names) >= TREE_LINES:
        lines = [_inline(name) for name in names[: TREE_LINES - 1]]
        lines.append(f"… ({len(names) - TREE_LINES + 1} more)")
        names = []
    else:
        lines = []
    spare = TREE_LINES - len(names)  # lines left for what is inside the directories
    waiting = sum(1 for name in names if name.endswith("/") and name[:-1] in children)
    for name in names:
        directory = name[:-1]
        if not name.endswith("/") or directory not in children:
            lines.append(_inline(name))
            continue
        lines.append(f"{_inline(name)} ({_files_count(counts[directory])})")
        inside = order(children[directory])
        room = min(CHILDREN_PER_DIRECTORY, spare // waiting)  # shared fairly, leftovers onward
        waiting -= 1
        if len(inside) <= room:
            shown, rest = inside, 0
        elif room >= 2:  # the note takes the place of one child
            shown, rest = inside[: room - 1], len(inside) - room + 1
        else:  # a lone "(N more)" says no more than the count above
            shown, rest = [], 0
        lines += [f"  {_inline(child)}" for child in shown]
        if rest:
            lines.append(f"  … ({rest} more)")
        spare -= len(shown) + bool(rest)
    heading = f"## Files ({_files_count(len(repo.files))}; the top two levels)"
    return heading + "\n\n" + _fenced("\n".join(lines))


def _files_count(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"
