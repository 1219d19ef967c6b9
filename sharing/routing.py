from django.urls import path

from .consumers import ShareConsumer

websocket_urlpatterns = [
    path("ws/share/<str:token>/", ShareConsumer.as_asgi()),  # live share links' viewers
]
