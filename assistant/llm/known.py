"""Model names to suggest in the team's settings, per provider: read from known_models.json,
which scripts/extract_models.py writes from litellm's own list at build time — so the web
process never imports litellm for a suggestion list."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

FILE = Path(__file__).with_name("known_models.json")


@lru_cache(maxsize=1)
def known_models() -> list[tuple[str, str]]:
    """(provider, model) pairs, providers in the file's order. Empty if the file is missing."""
    try:
        data = json.loads(FILE.read_text())
    except (OSError, ValueError):
        return []
    return [
        (provider, name)
        for provider, names in data.items()
        if isinstance(names, list)
        for name in names
    ]
