"""Profiles (server URL and API key) in $XDG_CONFIG_HOME/tandem/config.json, mode 0600.

    {"default": "work", "profiles": {"work": {"url": "...", "key": "tdm_...", "team": "acme",
                                              "user": "alice@example.com"}}}

TANDEM_PROFILE picks a profile; TANDEM_URL and TANDEM_API_KEY override what it says (or stand
in for a config file altogether, e.g. in CI).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import EXIT_AUTH, CliError


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tandem"


def config_path() -> Path:
    return config_dir() / "config.json"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tandem"


@dataclass
class Profile:
    name: str
    url: str
    key: str
    team: str = ""
    user: str = ""


def load() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"default": None, "profiles": {}}
    except (OSError, ValueError) as exc:
        raise CliError(f"Cannot read {path}: {exc}. Fix or delete it, then run `tandem login`.")
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise CliError(f"{path} is not a Tandem config. Delete it and run `tandem login`.")
    return data


def save(data: dict) -> Path:
    """Write atomically, readable by the owner only (it holds API keys)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.chmod(tmp, 0o600)  # also when it existed with wider permissions
    os.replace(tmp, path)
    return path


def store(profile: Profile, *, make_default: bool = False) -> Path:
    data = load()
    data["profiles"][profile.name] = {
        "url": profile.url,
        "key": profile.key,
        "team": profile.team,
        "user": profile.user,
    }
    if make_default or not data.get("default") or data["default"] not in data["profiles"]:
        data["default"] = profile.name
    return save(data)


def remove(name: str) -> bool:
    data = load()
    if data["profiles"].pop(name, None) is None:
        return False
    if data.get("default") == name:
        data["default"] = next(iter(data["profiles"]), None)
    save(data)
    return True


def chosen_name(name: str | None) -> str | None:
    return name or os.environ.get("TANDEM_PROFILE") or None


def resolve(name: str | None) -> Profile:
    """The profile to use, with the environment's overrides."""
    name = chosen_name(name)
    data = load()
    env_url, env_key = os.environ.get("TANDEM_URL"), os.environ.get("TANDEM_API_KEY")
    stored = data["profiles"].get(name or data.get("default") or "")
    if name and stored is None:
        known = ", ".join(sorted(data["profiles"])) or "none yet"
        raise CliError(
            f"There is no profile “{name}” (profiles: {known}). "
            f"Run `tandem login --profile {name}`.",
            EXIT_AUTH,
        )
    stored = stored or {}
    url = env_url or stored.get("url")
    key = env_key or stored.get("key")
    if not url or not key:
        raise CliError("Not logged in. Run `tandem login` first.", EXIT_AUTH)
    return Profile(
        name=name or data.get("default") or "env",
        url=url.rstrip("/"),
        key=key,
        team=stored.get("team", ""),
        user=stored.get("user", ""),
    )
