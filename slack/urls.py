from django.urls import path

from . import views

urlpatterns = [
    # Called by Slack: signature-checked, no session, no CSRF token.
    path("slack/commands", views.commands, name="slack_commands"),
    path("slack/events", views.events, name="slack_events"),
    path("slack/interactivity", views.interactivity, name="slack_interactivity"),
    # Signed-in people, back from Slack or from a link Slack showed them.
    path("slack/oauth/callback", views.oauth_callback, name="slack_oauth_callback"),
    path("slack/link/<str:token>/", views.link, name="slack_link"),
    # Team admins.
    path("t/<slug:slug>/slack/", views.settings_page, name="slack_settings"),
    path("t/<slug:slug>/slack/connect/", views.connect, name="slack_connect"),
    path("t/<slug:slug>/slack/webhook/", views.webhook, name="slack_webhook"),
    path("t/<slug:slug>/slack/channel/", views.channel, name="slack_channel"),
    path("t/<slug:slug>/slack/kinds/", views.kinds, name="slack_kinds"),
    path("t/<slug:slug>/slack/test/", views.test_message, name="slack_test"),
    path("t/<slug:slug>/slack/disconnect/", views.disconnect, name="slack_disconnect"),
    # Members.
    path(
        "t/<slug:slug>/c/<uuid:conversation_id>/follow/",
        views.follow,
        name="conversation_follow",
    ),
]
