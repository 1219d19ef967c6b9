"""Errors in words, and the exit codes they end with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # the reply failed, a conflict, anything else
EXIT_USAGE = 2  # bad command line (argparse's own)
EXIT_AUTH = 3  # not logged in, a refused key, a read-only key writing
EXIT_NOT_FOUND = 4  # no such conversation / run / tool call (or another team's)
EXIT_LIMIT = 5  # the team's budget or the member's tokens used up, or rate limited
EXIT_UNREACHABLE = 6  # the server can't be reached
EXIT_WAITING = 10  # the reply waits for an approval nobody gave here (not interactive)
EXIT_INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ApiFailure(CliError):
    """The server answered with an error: its status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.api_code = code
        super().__init__(explain(status, code, message), exit_code_for(status, code))


def exit_code_for(status: int, code: str) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 429:
        return EXIT_LIMIT
    return EXIT_ERROR


def explain(status: int, code: str, message: str) -> str:
    if code == "invalid_key":
        return (
            "The server refused the API key (unknown, revoked or expired). "
            "Make a new one on your team's API keys page and run `tandem login`."
        )
    if code == "unauthorized":
        return "The server wants an API key. Run `tandem login`."
    if code == "insufficient_scope":
        return "This API key is read-only; this needs a read-and-write key (`tandem login`)."
    if code == "budget_exceeded":
        return f"Limit reached: {message}"
    if code == "rate_limited":
        return f"Rate limited: {message}"
    if status == 404 and message:
        return f"{message.rstrip('.')} (or it belongs to a team this key can't see)."
    return message or f"The server answered HTTP {status}."
