from __future__ import annotations

from django.http import HttpRequest

from .selectors import teams_of


def teams(request: HttpRequest) -> dict:
    if not request.user.is_authenticated:
        return {}
    # Lazy: only pages that render the team switcher run the query.
    return {"my_teams": lambda: list(teams_of(request.user))}
