"""Which futures products Kraken serves, learned from its own answers (Sans-I/O, clock-fed).

The relay has no futures instrument list of its own (Kraken Futures has no instrument feed on the
websocket), so a product a client asks for outside the configured set is validated by the upstream
answer: Kraken answers every product of a subscribe with `{"event":"subscribed",...}` naming it,
or with `{"event":"error","message":"Invalid product id"}`, which names no product.

So errors are attributed by counting, per line: `open` holds the subscriptions of products not
yet known to be valid that this line has been asked for (or will be, once its planner sends them)
and has not answered. A `subscribed` for a product proves it valid on every line (its keys leave
every `open`); a failed ack answers that key on that line. When a line has sent as many `Invalid
product id` errors as it has unanswered keys, every key still open there is refused: those
products are invalid. Nothing is ever refused while an open key may still be acknowledged, so a
valid product is never refused for another's error; when the counts cannot meet (an answer that
never comes), the clients waiting on it get the endpoint's timeout instead.

`expect(keys, now)` gets the desired upstream subscriptions whenever they change, `line_up(i)`
when a line's planner sends them all again (its first status after a connect), `line_down(i)`;
`on_ack` / `on_error` are fed from the upstream frames; `take()` returns the products found
invalid since the last call.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.protocols.futures.wire import ERR_PRODUCT

Key = tuple[str, str]  # (feed, product)

GHOST_TTL = 30.0  # seconds an unanswered key no longer wanted keeps a line's count waiting


class _Line:
    __slots__ = ("live", "open", "errors")

    def __init__(self) -> None:
        self.live = False  # its planner has (re)sent the desired set on the current connection
        self.open: set[Key] = set()  # asked (or about to be), unanswered, product not known valid
        self.errors = 0  # `Invalid product id` errors received for keys in `open`


class ProductValidator:
    def __init__(self, ghost_ttl: float = GHOST_TTL) -> None:
        self.ghost_ttl = ghost_ttl
        self.valid: set[str] = set()  # products Kraken acknowledged on some line
        self.expected: set[Key] = set()  # the desired subscriptions (keys with a product)
        self.gone: dict[Key, float] = {}  # no longer desired, maybe still unanswered: since when
        self.lines: list[_Line] = []
        self._refused: list[str] = []

    def add_line(self) -> None:
        self.lines.append(_Line())

    def is_valid(self, product: str) -> bool:
        return product in self.valid

    def pending(self) -> set[str]:
        """Products some line still has to answer for."""
        return {p for ln in self.lines for _, p in ln.open}

    # -- what the relay asks for ---------------------------------------------------------------
    def expect(self, keys: Iterable[Key], now: float) -> None:
        want = {k for k in keys if k[1]}
        added = want - self.expected
        for k in self.expected - want:
            self.gone[k] = now
        for k in added:
            self.gone.pop(k, None)
        self.expected = want
        new = {k for k in added if k[1] not in self.valid}
        if new:
            for ln in self.lines:
                if ln.live:
                    ln.open |= new

    def line_up(self, i: int) -> None:
        """Line `i`'s planner (re)sends every desired subscription: all of them await an answer."""
        ln = self.lines[i]
        ln.live = True
        ln.open = {k for k in self.expected if k[1] not in self.valid}
        ln.errors = 0

    def line_down(self, i: int) -> None:
        ln = self.lines[i]
        ln.live = False
        ln.open = set()
        ln.errors = 0

    # -- what Kraken answers -------------------------------------------------------------------
    def on_ack(self, i: int, feed: str | None, products: Iterable[str], ok: bool) -> None:
        products = [p for p in products if p]
        if not products:
            return
        if ok:
            fresh = [p for p in products if p not in self.valid]
            if not fresh:
                return
            self.valid.update(fresh)
            known = set(fresh)
            for j, ln in enumerate(self.lines):
                if ln.open:
                    ln.open = {k for k in ln.open if k[1] not in known}
                    self._settle(j)
            return
        ln = self.lines[i]  # refused another way (`subscribed_failed`): answered, not invalid
        for p in products:
            ln.open.discard((feed or "", p))
        self._settle(i)

    def on_error(self, i: int, message: str) -> None:
        ln = self.lines[i]
        if message != ERR_PRODUCT or not ln.live or not ln.open:
            return  # not an answer to one of the subscriptions we wait on
        ln.errors += 1
        self._settle(i)

    def _settle(self, i: int) -> None:
        ln = self.lines[i]
        if not ln.open:
            ln.errors = 0
            return
        if ln.errors < len(ln.open):
            return
        for p in sorted({p for _, p in ln.open}):
            if p not in self.valid and p not in self._refused:
                self._refused.append(p)
        ln.open = set()
        ln.errors = 0

    def tick(self, now: float) -> None:
        """A line whose count waits only on keys nobody wants any more (maybe never sent) starts over."""
        if not self.gone:
            return
        old = {k for k, t in self.gone.items() if now - t >= self.ghost_ttl}
        for ln in self.lines:
            if ln.open and ln.open <= old:
                ln.open = set()
                ln.errors = 0
        held = set().union(*(ln.open for ln in self.lines)) if self.lines else set()
        for k in old - held:
            del self.gone[k]

    def take(self) -> list[str]:
        out = self._refused
        if out:
            self._refused = []
        return out
