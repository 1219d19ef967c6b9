"""Start Daphne (HTTP + WebSocket) on uvloop: ``python -m config.serve [daphne options]``.

Embedded mode also fails the runs a previous server process left unfinished (they ran inside
it), and says which model is in use.
"""

from __future__ import annotations

import asyncio
import os
import sys


def drop_proxy_headers(args: list[str]) -> list[str]:
    """Daphne's --proxy-headers believes the first X-Forwarded-For value, which the client
    chooses. Tandem reads the header itself, from TRUSTED_PROXIES only (config/clientip.py)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--proxy-headers":
            print(
                "Ignoring --proxy-headers: Tandem reads X-Forwarded-For itself, from the "
                "proxies in TRUSTED_PROXIES only.",
                flush=True,
            )
            continue
        if arg in ("--proxy-headers-host", "--proxy-headers-port"):
            skip = True
            continue
        if arg.startswith(("--proxy-headers-host=", "--proxy-headers-port=")):
            continue
        kept.append(arg)
    return kept


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Before django.setup(): the "daphne" app imports daphne.server, which makes the loop the
    # Twisted reactor runs on at import time, with whatever policy is set by then.
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    import atexit

    from config import metrics

    # Before anything counts: clear what earlier processes of this host left behind, and say
    # goodbye on the way out (config/metrics.py).
    metrics.process_started()
    atexit.register(metrics.process_exiting)
    import django

    django.setup()
    from django.conf import settings

    if settings.RUN_EXECUTOR == "inprocess":
        from assistant.services import fail_interrupted_runs

        count = fail_interrupted_runs()
        if count:
            print(f"Marked {count} run(s) left unfinished by a previous server as failed.")
        import threading

        from assistant.llm import warm_up

        # Replies run on this process's loop in embedded mode: have litellm imported before
        # the first one instead of during it. Not in production: the workers make the model
        # calls, and litellm would add ~100 MB and a second of start-up to every web process.
        threading.Thread(target=warm_up, name="litellm-warm-up", daemon=True).start()
    from assistant.llm import site_config

    args = drop_proxy_headers(sys.argv[1:] or ["-b", "127.0.0.1", "-p", "8000"])
    host = args[args.index("-b") + 1] if "-b" in args else "127.0.0.1"
    port = args[args.index("-p") + 1] if "-p" in args else "8000"
    model = site_config()
    print(f"Tandem ({settings.TANDEM_MODE} mode) at http://{host}:{port}", flush=True)
    if model.is_demo:
        print(
            "Model: Demo model (scripted, not AI). Set LLM_MODEL, LLM_API_BASE and LLM_API_KEY, "
            "or a team's settings, for a real one.",
            flush=True,
        )
    else:
        print(f"Model: {model.model}", flush=True)
    if settings.LOG_FORMAT == "json" and not any(a.startswith("--access-log") for a in args):
        # Its plain-text access log would break a JSON log stream: config/logs.py writes a JSON
        # line per request instead.
        args = [*args, "--access-log", os.devnull]
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run([*args, "config.asgi:application"])


if __name__ == "__main__":
    main()
