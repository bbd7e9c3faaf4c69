"""
Who drives a node: the pure rules of ownership, shared by region and pserv.

Every node has at most one owning pserv at a time, identified by the
*epoch* of that pserv's lease: a number PostgreSQL hands out from a
sequence, so it only grows.  The epoch is the fencing token: a dispatch,
an outcome or a power report that carries an epoch other than the node's
current one is refused, so a former owner can never write the journal.

Assignment uses rendezvous (highest random weight) hashing: each node goes
to the live pserv with the highest ``weight(pserv, node)``.  Removing one
of N pservs moves only that pserv's nodes; adding one moves about 1/N of
them.  A node moves from one *live* owner to another only by hand-over
(the old owner cancels, waits for quiet and releases it); from a *dead*
owner only once its lease has expired.

Circuits: a node on an electrical circuit is placed by the circuit's key
(:func:`placement_key`) instead of its name, so every node of one circuit
goes to the same pserv, which alone then starts their power-ons and can
keep the circuit's budget without asking anyone.  Nodes without a circuit
are placed by name, as before.

Timing (see :class:`LeaseKeeper`): a pserv renews its lease with every
heartbeat.  It stops driving everything ``margin`` seconds before its
lease would run out by its own clock, counted from when it *sent* the
renewal, so clock skew between hosts does not matter and a pserv never
drives a node after the region could have given it to another.  The
worst-case take-over of a dead pserv's nodes is ``lease`` plus the
region's assignment interval.

Nothing here does I/O.
"""

import hashlib

import attrs


def weight(pserv, node):
    """The rendezvous weight of ``pserv`` for ``node`` (stable across processes)."""
    digest = hashlib.blake2b(f"{pserv}\0{node}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def placement_key(node, circuit=None):
    """
    What a node is hashed by: its circuit when it has one (the separator
    cannot occur in a name, so no node name collides with a circuit key).
    """
    return node if not circuit else f"circuit\x1f{circuit}"


def choose(node, pservs):
    """The pserv (a name from ``pservs``) that should own ``node``; None if none."""
    if not pservs:
        return None
    return max(pservs, key=lambda p: (weight(p, node), p))


@attrs.frozen
class Decision:
    """
    What the assignment decided for one node.  ``kind``: ``assign`` (it has
    no live owner: give it to ``epoch`` now), ``handoff`` (its live owner
    ``from_epoch`` must release it first, then ``epoch`` gets it) or
    ``keep``.
    """

    node: str
    kind: str
    epoch: int | None = None
    from_epoch: int | None = None


def assign(nodes, live):
    """
    Decisions for ``nodes`` (``[(name, owner_epoch or None)]``, or
    ``(name, owner_epoch, key)`` to place a node by ``key`` -- its
    :func:`placement_key` -- instead of its name) given the
    ``live`` leases of their cluster (``{epoch: pserv name}``).  A pserv
    with several live epochs (restarted within its old lease) is
    represented by its newest: the old epoch's nodes hand over to it.
    """
    newest = {}
    for epoch, pserv in live.items():
        if epoch > newest.get(pserv, -1):
            newest[pserv] = epoch
    names = sorted(newest)
    decisions = []
    for entry in nodes:
        node, owner_epoch = entry[0], entry[1]
        target = choose(entry[2] if len(entry) > 2 else node, names)
        epoch = newest[target] if target is not None else None
        if epoch is None or owner_epoch == epoch:
            decisions.append(Decision(node, "keep", owner_epoch))
        elif owner_epoch is None or owner_epoch not in live:
            decisions.append(Decision(node, "assign", epoch, owner_epoch))
        else:
            decisions.append(Decision(node, "handoff", epoch, owner_epoch))
    return decisions


class LeaseKeeper:
    """
    A pserv's view of its own lease, on its own clock.

    :param clock: an ``IReactorTime``.
    :param margin: seconds before the lease's end at which the pserv stops
        driving hardware (it must be quiet before the region may move its
        nodes: a cancellation takes up to the registry's cancel timeout).
    :param expiring: called with no arguments when the lease is about to
        end without renewal.
    """

    def __init__(self, clock, margin, expiring):
        self.clock = clock
        self.margin = margin
        self._expiring = expiring
        self.epoch = None
        self.deadline = None
        self._call = None
        self._closed = False

    def granted(self, epoch, sent_at, remaining):
        """
        The region answered a Register or Heartbeat sent at ``sent_at``
        (our clock): the lease of ``epoch`` has ``remaining`` seconds left.
        A renewal never shortens a deadline already known for that epoch.
        """
        if self._closed:
            return  # stopping: no lease is taken up any more
        deadline = sent_at + remaining
        if epoch != self.epoch:
            self.epoch, self.deadline = epoch, deadline
        elif self.deadline is None or deadline > self.deadline:
            self.deadline = deadline
        else:
            return
        self._schedule()

    def valid(self):
        """Whether we may drive hardware now."""
        return (self.epoch is not None and self.deadline is not None
                and self.clock.seconds() < self.deadline - self.margin)

    def lost(self):
        """Forget the lease (we went quiet, or were told it expired)."""
        self.epoch = self.deadline = None
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def close(self):
        """The pserv is stopping: forget the lease and take no new one."""
        self._closed = True
        self.lost()

    def _schedule(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        delay = max(0.0, self.deadline - self.margin - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self):
        self._call = None
        if self.epoch is not None and not self.valid():
            self._expiring()
