"""A scripted fake LLM provider (OpenAI, Anthropic and Ollama wire formats) for tests,
benchmarks and the "Demo model" mode. See ``script`` for the directive syntax."""

from .script import scripted_tokens
from .server import make_app, start_server

__all__ = ["make_app", "scripted_tokens", "start_server"]
