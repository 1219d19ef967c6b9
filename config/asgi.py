"""ASGI entry point: Django for HTTP, Channels for the WebSocket, one process, one loop."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from assistant import routing as assistant_routing  # noqa: E402
from assistant.runner import remember_server_loop  # noqa: E402
from config import autobahn_quiet  # noqa: E402
from config.clientip import ClientAddressMiddleware  # noqa: E402
from config.origin import SameOriginValidator  # noqa: E402
from sharing import routing as sharing_routing  # noqa: E402

autobahn_quiet.install()  # every WebSocket frame paid for colouring an unused debug line

# Each app routes its own sockets; assistant sits below sharing and never imports it.
websocket_urlpatterns = (
    assistant_routing.websocket_urlpatterns + sharing_routing.websocket_urlpatterns
)

# The client's address is resolved once, here, from the socket peer and the X-Forwarded-For of
# trusted proxies only (config/clientip.py); everything after reads scope["client"].
router = ClientAddressMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # Cross-origin handshakes are refused: the Origin must be this site, port included.
            "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)


async def application(scope, receive, send):
    # Embedded mode runs agent turns on this loop; remember it for views running in threads.
    remember_server_loop()
    await router(scope, receive, send)
