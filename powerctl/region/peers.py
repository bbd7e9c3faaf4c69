"""
AMP connections not yet authenticated, counted per peer address.

A peer that connects and says nothing holds a connection until the
authentication timeout (:attr:`powerctl.region.rpc.RegionProtocol.auth_timeout`)
closes it; without a bound, one address could hold thousands of them, each
with a timer.  A pserv needs one at a time (two while it reconnects), so
:data:`MAX_PER_ADDRESS` leaves room for several pservs behind one address
(a NAT, or a test host) and still stops a flood.  Pure bookkeeping: the
protocol asks before it starts its timer and tells when a connection
authenticated or ended.
"""

#: Connections one address may have open and not yet authenticated.
MAX_PER_ADDRESS = 32


class PendingPeers:
    """How many unauthenticated connections each address holds, bounded by ``limit``."""

    def __init__(self, limit=MAX_PER_ADDRESS):
        self.limit = limit
        self._count = {}
        self._refusing = set()  # addresses refused since they were last under the limit

    def admit(self, address):
        """Count one more connection of ``address``; False (not counted) over the limit."""
        held = self._count.get(address, 0)
        if held >= self.limit:
            return False
        self._count[address] = held + 1
        return True

    def first_refusal(self, address):
        """
        True for the first refusal of ``address`` since it was last under the
        limit: a flood is logged once, not once per connection.
        """
        first = address not in self._refusing
        self._refusing.add(address)
        return first

    def leave(self, address):
        """A counted connection of ``address`` authenticated or ended."""
        held = self._count.get(address, 0) - 1
        if held > 0:
            self._count[address] = held
        else:
            self._count.pop(address, None)
        if held < self.limit:
            self._refusing.discard(address)

    def pending(self, address):
        """Connections of ``address`` open and not yet authenticated."""
        return self._count.get(address, 0)
