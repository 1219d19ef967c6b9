"""The errors the chat services refuse with. Their own module, below the services, so the apps
above (usage's budgets, the API, Slack) can raise and catch them without importing the
services, and the services can catch usage's refusals without importing usage."""

from __future__ import annotations


class ChatError(Exception):
    """A chat operation that cannot be done, with a message for the user."""


class BudgetExceeded(ChatError):
    """A limit is reached; nothing was sent to the model. The API answers 429 for it.
    Raised by usage/budgets.py."""
