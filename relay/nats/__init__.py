"""NATS: the publisher of the merged feed (`publisher`). The NATS line, which reads another
relay's publications as one upstream line, is `relay.upstream.nats_line`; both name subjects
and read headers with `relay.core.bus`."""
