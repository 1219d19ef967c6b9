from django.urls import path

from sharing.consumers import ShareConsumer

from .consumers import ConversationConsumer

websocket_urlpatterns = [
    path("ws/conversations/<uuid:conversation_id>/", ConversationConsumer.as_asgi()),
    path("ws/share/<str:token>/", ShareConsumer.as_asgi()),  # live share links' viewers
]
