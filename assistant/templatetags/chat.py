from django import template
from django.utils.safestring import mark_safe

from assistant.rendering import render_markdown

register = template.Library()


@register.filter
def markdown(text: str) -> str:
    # render_markdown escapes raw HTML and sanitises its output, so this is safe to mark.
    return mark_safe(render_markdown(text or ""))  # noqa: S308
