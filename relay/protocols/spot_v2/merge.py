"""The Spot v2 merge: the protocol-neutral `relay.core.merge.Merge` with the v2 parser and codec."""

from __future__ import annotations

from relay.core.merge import Merge
from relay.core.outputs import MergeSettings
from relay.protocols.spot_v2.wire import V2Codec, V2Parser


class V2Merge(Merge):
    """Merges Spot v2 lines; synthesized frames are Spot v2 frames."""

    def __init__(self, settings: MergeSettings | None = None) -> None:
        super().__init__(settings or MergeSettings(), V2Parser(), V2Codec())
