"""The shared frame builder writes exactly what websockets' Sans-I/O protocol would."""

import pytest
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.core.wsframe import text_frame


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 200, 65535, 65536, 300_000])
def test_text_frame_matches_websockets_framing(n: int) -> None:
    proto = ServerProtocol()
    proto.state = State.OPEN
    payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    proto.send_text(payload)
    assert b"".join(proto.data_to_send()) == text_frame(payload)
