"""The local Kraken-v2-compatible endpoint that republishes the merged feed.

`LocalServer(config.server, merge, config.channels, demand=...)` with `start()`, `stop()`,
`publish(pubs)`, `demand_ready()`, `demand_failed()`, `stats()`. See `listener.py` (lifecycle),
`hub.py` (subscriptions, dispatch, snapshots), `client.py` (one socket, slow-client policy),
`requests.py` (request validation, error texts), `demand.py` (dynamic subscriptions).
"""

from relay.server.client import SLOW_CLOSE_CODE, SLOW_CLOSE_REASON
from relay.server.demand import DemandHandler
from relay.server.listener import LocalServer

__all__ = ["DemandHandler", "LocalServer", "SLOW_CLOSE_CODE", "SLOW_CLOSE_REASON"]
