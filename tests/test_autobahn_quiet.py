"""config/autobahn_quiet.py: the per-frame debug arguments autobahn builds are plain text."""

from autobahn.websocket import protocol

from config import autobahn_quiet


def test_the_server_entry_point_installs_the_plain_helpers():
    import config.asgi  # noqa: F401  (Daphne loads it: installing happens there)

    assert protocol.hltype is autobahn_quiet.plain_type
    assert protocol.hlval is autobahn_quiet.plain_value


def test_the_plain_helpers_keep_the_words_without_colour():
    text = autobahn_quiet.plain_type(protocol.WebSocketProtocol.sendData)
    assert text == "<WebSocketProtocol.sendData>"
    assert autobahn_quiet.plain_value(("127.0.0.1", 5)) == "('127.0.0.1', 5)"
    assert "\x1b[" not in text  # no terminal colour codes (click.style added them per frame)
