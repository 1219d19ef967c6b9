"""``python manage.py fakellm --port 8765 [--host 127.0.0.1]``: run the fake LLM provider."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the scripted fake LLM provider (OpenAI, Anthropic and Ollama wire formats)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)

    def handle(self, *args, host: str, port: int, **options):
        # Imported here so other management commands don't pay for aiohttp.
        from aiohttp import web

        from assistant.fakellm.server import make_app

        self.stdout.write(
            f"Fake LLM on http://{host}:{port} "
            f"(OpenAI: /v1/chat/completions, Anthropic: /v1/messages, Ollama: /api/chat)"
        )
        # No access log: benchmarks run this hard and one line per request costs.
        web.run_app(make_app(), host=host, port=port, access_log=None, print=None, backlog=2048)
