"""Upstream layer: redundant Kraken connections (any protocol) feeding their merge.

`UpstreamPool(config, merge, publish)` runs one `UpstreamConnection` task per configured
upstream (connect with source address / proxy, subscribe in paced batches, frame deadline and
pings, reconnect forever with jittered backoff, staggered, within a per-egress attempt budget)
and a ticker that drives `merge.tick` and routes the merge's resync requests back to a line.
Sans-I/O parts: `backoff` (delays, stagger), `budget` (attempts per egress), `subscriptions`
(the per-connection subscription planner).
"""

from relay.upstream.pool import UpstreamPool

__all__ = ["UpstreamPool"]
