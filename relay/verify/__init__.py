"""Verifying clients, one per protocol: what a careful strategy checks on the feed it receives.

Each verifier is Sans-I/O (`feed(raw)`; `requests()` are the subscribe frames to send;
`report()` and `ok` say what was found) and independent of the relay's own book and checksum
code, so it checks the relay rather than sharing its bugs: books rebuilt from the wire text,
Kraken's CRC32 recomputed (spot), `seq` continuity (futures), every trade exactly once.
`relay.verify.client.run(...)` drives one against any endpoint; `kraken-relay verify` is the
command line (see the README).
"""

from relay.verify.client import VERIFIERS, VerifyingClient, verify
from relay.verify.futures import FuturesVerifier
from relay.verify.spot_v1 import V1Verifier
from relay.verify.spot_v2 import V2Verifier

__all__ = ["VERIFIERS", "FuturesVerifier", "V1Verifier", "V2Verifier", "VerifyingClient", "verify"]
