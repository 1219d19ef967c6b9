"""Write assistant/llm/known_models.json: the chat models litellm knows, per provider, for the
model field's suggestions. Run at build time (when litellm is upgraded), not by the web process:
importing litellm there costs seconds and memory at start-up.

    LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python scripts/extract_models.py
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

# The providers people pick most; a suggestion list, not a limit on what can be typed.
PROVIDERS = ["openai", "anthropic", "gemini", "mistral", "groq", "deepseek", "xai"]
PER_PROVIDER = 200  # bounds the page: a <datalist> of a few hundred options
OUT = Path(__file__).resolve().parent.parent / "assistant" / "llm" / "known_models.json"


def main() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the copy litellm ships
    import litellm

    known: dict[str, list[str]] = {}
    for provider in PROVIDERS:
        names = set()
        for name in litellm.models_by_provider.get(provider, []):
            if litellm.model_cost.get(name, {}).get("mode") != "chat":
                continue
            names.add(name if name.startswith(f"{provider}/") else f"{provider}/{name}")
        known[provider] = sorted(names)[:PER_PROVIDER]
    body = {"litellm": version("litellm"), **known}
    OUT.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {sum(len(v) for v in known.values())} models")


if __name__ == "__main__":
    main()
