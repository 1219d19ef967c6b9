from __future__ import annotations

import logging

from django import template

register = template.Library()
log = logging.getLogger(__name__)


@register.simple_tag(takes_context=True)
def budget_status(context):
    """Where the signed-in member stands against the team's limits (for the banner)."""
    from usage import budgets

    team, user = context.get("team"), context.get("user")
    if team is None or user is None or not user.is_authenticated:
        return None
    try:
        return budgets.status(team.pk, user.pk)
    except Exception:
        # The banner is a courtesy; the refusal itself happens when a message is sent.
        log.exception("Could not read the budget status of team %s", team.pk)
        return None
