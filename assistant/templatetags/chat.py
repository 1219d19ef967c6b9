from datetime import timedelta

from django import template
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince

from assistant.file_links import Links, link_paths
from assistant.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str, links: Links | None = None) -> str:
    # render_markdown escapes raw HTML and sanitises its output, so this is safe to mark; the
    # links added are built from escaped parts.
    html = render_markdown(text or "")
    return mark_safe(link_paths(html, links if isinstance(links, Links) else None))  # noqa: S308


@register.filter
def ago(moment) -> str:
    """ "just now" under a minute (timesince says "0 minutes"), else "5 minutes ago"."""
    if not moment:
        return ""
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return timesince(moment).split(",")[0] + " ago"


@register.simple_tag
def approvals_waiting(team) -> int:
    """The count on the nav's Approvals badge, for any team page."""
    from assistant.selectors import awaiting_count_of

    return awaiting_count_of(team)
