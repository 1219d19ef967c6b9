from django import template

from slack.models import ConversationFollow, SlackConnection, SlackUserLink, Status

register = template.Library()


@register.simple_tag(takes_context=True)
def slack_follow(context, conversation) -> dict:
    """For the Follow toggle: shown when the team's Slack app can DM people."""
    user = context["request"].user
    connection = SlackConnection.objects.filter(team_id=conversation.team_id).first()
    if connection is None or not connection.has_bot or connection.status != Status.ACTIVE:
        return {"show": False}
    return {
        "show": True,
        "following": ConversationFollow.objects.filter(
            user=user, conversation=conversation
        ).exists(),
        "linked": SlackUserLink.objects.filter(
            slack_team_id=connection.slack_team_id, user=user
        ).exists(),
    }


@register.simple_tag
def slack_notice(team) -> dict:
    connection = SlackConnection.objects.filter(team=team).first()
    return {
        "connected": connection is not None,
        "disabled": connection is not None and connection.status == Status.DISABLED,
        "reason": connection.disabled_reason if connection else "",
    }
