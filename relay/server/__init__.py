"""The local listener that republishes the merged feeds (asyncio layer).

`LocalServer(config.server, endpoints)` with `start()`, `stop()`, `publisher(endpoint)`,
`stats()`. See `listener.py` (lifecycle, routing by path, coalesced writes) and `client.py`
(one socket: handshake, limits, token, slow-client policy). What a message means is the
protocol endpoint's (`relay.protocols.<name>.endpoint`).
"""

from relay.server.client import SLOW_CLOSE_CODE, SLOW_CLOSE_REASON
from relay.server.listener import LocalServer

__all__ = ["LocalServer", "SLOW_CLOSE_CODE", "SLOW_CLOSE_REASON"]
