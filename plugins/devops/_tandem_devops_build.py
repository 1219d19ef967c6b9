"""A minimal PEP 517 / PEP 660 build backend for this one package.

Tandem installs only what requirements.lock pins, and the lock has no build backend (setuptools
came with some virtual environments and not others, wheel with none), so building this plugin
with setuptools failed in a fresh venv ("invalid command 'bdist_wheel'") or needed the network.
This backend needs nothing but the standard library: a wheel is a zip file with the package,
its metadata and entry points; an editable one holds a .pth file naming this folder instead.
It reads name, version, dependencies and entry points from pyproject.toml.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "tandem_devops"


def _project() -> dict:
    return tomllib.loads((HERE / "pyproject.toml").read_text())["project"]


def _dist_info() -> str:
    project = _project()
    return f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"


def _metadata_files() -> dict[str, str]:
    project = _project()
    meta = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '')}",
    ]
    meta += [f"Requires-Dist: {dep}" for dep in project.get("dependencies", [])]
    entry_points = ""
    for group, entries in project.get("entry-points", {}).items():
        entry_points += f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
    wheel = "Wheel-Version: 1.0\nGenerator: tandem-devops _build\nRoot-Is-Purelib: true\n"
    return {
        "METADATA": "\n".join(meta) + "\n",
        "WHEEL": wheel + "Tag: py3-none-any\n",
        "entry_points.txt": entry_points,
    }


def _write_wheel(directory: str, files: dict[str, bytes]) -> str:
    project = _project()
    name = f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    info = _dist_info()
    for meta_name, text in _metadata_files().items():
        files[f"{info}/{meta_name}"] = text.encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(Path(directory) / name, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name


def get_requires_for_build_wheel(config_settings: dict | None = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: dict | None = None) -> list[str]:
    return []


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict | None = None
) -> str:
    info = Path(metadata_directory) / _dist_info()
    info.mkdir(parents=True, exist_ok=True)
    for name, text in _metadata_files().items():
        (info / name).write_text(text)
    return info.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(
    wheel_directory: str,
    config_settings: dict | None = None,
    metadata_directory: str | None = None,
) -> str:
    files = {
        path.relative_to(HERE).as_posix(): path.read_bytes()
        for path in sorted((HERE / PACKAGE).rglob("*.py"))
    }
    return _write_wheel(wheel_directory, files)


def build_editable(
    wheel_directory: str,
    config_settings: dict | None = None,
    metadata_directory: str | None = None,
) -> str:
    return _write_wheel(wheel_directory, {f"_{PACKAGE}.pth": f"{HERE}\n".encode()})
