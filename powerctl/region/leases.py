"""
Leases, epochs and node owners in PostgreSQL (the rules are in
:mod:`powerctl.ownership`; this module only stores and applies them).

Several regions share one database, so everything that decides is one
transaction: a lease is granted or renewed by one statement, and an
assignment round for a cluster runs under a transaction-scoped advisory
lock on that cluster, so two regions never assign the same cluster at once.

Lock order: every transaction here that locks several ``nodes`` rows locks
them in name order (``ORDER BY name FOR UPDATE``) before it changes any, the
order the node stores' batch writers take too.  A bare multi-row ``UPDATE
nodes`` locks rows in whatever order its plan visits them (table or index
order), and against an assignment round's name order that is a deadlock
(seen in a 10,000-node benchmark; tests/test_lock_order.py).  Should a
transaction here still be chosen as a deadlock victim, it is retried once
(its transaction rolled back whole, so the retry starts afresh) and logged
with PostgreSQL's own account of the cycle.
"""

import zlib

from twisted.logger import Logger

from powerctl import ownership
from powerctl.region.errors import Conflict, InvalidInput
from powerctl.region.store.base import (
    check_name as _name, check_text as _text, plain as _plain, transaction as _transaction)
from powerctl.region.store.deadlocks import retried_once as _retried_once

#: Advisory lock namespace for assignment rounds (one lock per cluster).
ASSIGN_LOCK = 0x6F776E  # "own"
#: Advisory lock namespace for lease grants (one lock per pserv name).
GRANT_LOCK = 0x6C6561  # "lea"


class LeaseExpired(Conflict):
    """The lease of this epoch is over (or was released): register again."""

    code = "lease_expired"


class Leases:
    """
    :param pool: the region's txpostgres pool (shared with the Store).
    :param lease: seconds a lease lasts after each grant or renewal.
    """

    log = Logger()

    def __init__(self, pool, lease=30.0):
        self._pool = pool
        self.lease = float(lease)

    @_transaction
    async def grant(self, tx, pserv, cluster, instance):
        """
        A pserv process registers: the live lease it already holds (same
        ``instance``) is renewed, else a new one is granted under a new,
        larger epoch.  Answers ``{"epoch", "remaining"}``.
        """
        _name("pserv", pserv)
        _name("cluster", cluster)
        _text("instance", instance, 255)
        if not instance:
            raise InvalidInput("instance: must not be empty")
        await tx.rows("INSERT INTO clusters (name) VALUES (%s) ON CONFLICT DO NOTHING",
                      (cluster,))
        # One process registering with two regions at once gets one lease.
        await tx.rows("SELECT pg_advisory_xact_lock(%s, %s)",
                      (GRANT_LOCK, zlib.crc32(pserv.encode()) & 0x7FFFFFFF))
        row = await tx.row(
            "UPDATE leases SET expires_at = greatest(expires_at,"
            " now() + make_interval(secs => %(lease)s))"
            " WHERE pserv = %(pserv)s AND cluster = %(cluster)s AND instance = %(instance)s"
            " AND NOT released AND expires_at > now()"
            " RETURNING epoch, extract(epoch FROM expires_at - now())::float AS remaining",
            {"lease": self.lease, "pserv": pserv, "cluster": cluster, "instance": instance})
        if row is None:
            row = await tx.row(
                "INSERT INTO leases (epoch, pserv, cluster, instance, expires_at)"
                " VALUES (nextval('pserv_epochs'), %(pserv)s, %(cluster)s, %(instance)s,"
                " now() + make_interval(secs => %(lease)s))"
                " RETURNING epoch, extract(epoch FROM expires_at - now())::float AS remaining",
                {"lease": self.lease, "pserv": pserv, "cluster": cluster,
                 "instance": instance})
        return dict(row)

    @_transaction
    async def renew(self, tx, epoch):
        """Extend a live lease; answers the seconds left.  LeaseExpired if it is over."""
        row = await tx.row(
            "UPDATE leases SET expires_at = now() + make_interval(secs => %s)"
            " WHERE epoch = %s AND NOT released AND expires_at > now()"
            " RETURNING extract(epoch FROM expires_at - now())::float AS remaining",
            (self.lease, int(epoch)))
        if row is None:
            raise LeaseExpired(f"the lease of epoch {epoch} is over; register again")
        return row["remaining"]

    @_retried_once
    @_transaction
    async def release(self, tx, epoch):
        """
        A pserv stops cleanly and is quiet: its lease ends now and its nodes
        are free at once (no waiting for expiry).  Its nodes are locked in
        name order before any is changed, in the same statement (see the
        module's docstring): a bare ``UPDATE ... WHERE owner_epoch`` locked
        them in the index's order, which deadlocked with an assignment
        round of the cluster.
        """
        await tx.rows("UPDATE leases SET released = true WHERE epoch = %s", (int(epoch),))
        rows = await tx.rows(
            "WITH locked AS MATERIALIZED (SELECT name FROM nodes WHERE owner_epoch = %s"
            " ORDER BY name FOR UPDATE)"
            " UPDATE nodes SET owner_epoch = NULL FROM locked WHERE nodes.name = locked.name"
            " RETURNING nodes.cluster", (int(epoch),))
        return sorted({r["cluster"] for r in rows})

    @_transaction
    async def owner(self, tx, node):
        """``{"owner_epoch", "handoff_epoch", "cluster"}`` of a node; None if it does not exist."""
        return await tx.row(
            "SELECT owner_epoch, handoff_epoch, cluster FROM nodes WHERE name = %s", (node,))

    @_retried_once
    @_transaction
    async def release_nodes(self, tx, epoch, nodes):
        """
        The owner of ``epoch`` has stopped driving ``nodes`` (it was asked
        to hand them over): they go to the epoch waiting for them.  Nodes it
        does not own, or that nobody waits for, are left alone.  A node of a
        circuit goes only with the last of that circuit's nodes ``epoch``
        holds (until then it waits, driven by nobody), so the circuit's
        budget is never kept by two pservs at once.  Answers the names
        handed over.  Every row the two updates may change (nodes of
        ``epoch`` being handed over) is locked first, in name order.
        """
        await tx.rows("SELECT 1 FROM nodes WHERE owner_epoch = %s AND handoff_epoch IS NOT NULL"
                      " ORDER BY name FOR UPDATE", (int(epoch),))
        await tx.rows(
            "UPDATE nodes SET handoff_released = true"
            " WHERE name = ANY(%s) AND owner_epoch = %s AND handoff_epoch IS NOT NULL",
            (list(nodes), int(epoch)))
        rows = await tx.rows(
            "UPDATE nodes n SET owner_epoch = handoff_epoch, handoff_epoch = NULL,"
            " handoff_released = false"
            " WHERE n.owner_epoch = %(epoch)s AND n.handoff_epoch IS NOT NULL"
            " AND n.handoff_released AND (n.circuit IS NULL AND n.name = ANY(%(names)s)"
            "  OR n.circuit IS NOT NULL AND NOT EXISTS (SELECT 1 FROM nodes s"
            "   WHERE s.cluster = n.cluster AND s.circuit = n.circuit"
            "   AND s.owner_epoch = %(epoch)s AND s.handoff_epoch IS NOT NULL"
            "   AND NOT s.handoff_released))"
            " RETURNING name, cluster", {"names": list(nodes), "epoch": int(epoch)})
        for cluster in sorted({r["cluster"] for r in rows}):
            await tx.rows("SELECT pg_notify('assignments', %s)", (cluster,))
        return sorted(r["name"] for r in rows)

    @_transaction
    async def notify(self, tx, cluster):
        """Make every region refresh the cluster's pservs (``NOTIFY assignments``)."""
        await tx.rows("SELECT pg_notify('assignments', %s)", (cluster,))

    @_transaction
    async def owned(self, tx, epoch, nodes):
        """Which of ``nodes`` the lease of ``epoch`` owns (and is not handing over)."""
        rows = await tx.rows(
            "SELECT name FROM nodes WHERE name = ANY(%s) AND owner_epoch = %s"
            " AND handoff_epoch IS NULL", (list(nodes), int(epoch)))
        return {r["name"] for r in rows}

    @_transaction
    async def live(self, tx, cluster=None):
        """Live leases, ``[{"epoch", "pserv", "cluster", "remaining"}]``."""
        rows = await tx.rows(
            "SELECT epoch, pserv, cluster,"
            " extract(epoch FROM expires_at - now())::float AS remaining FROM leases"
            " WHERE NOT released AND expires_at > now()"
            " AND (%(cluster)s::text IS NULL OR cluster = %(cluster)s) ORDER BY epoch",
            {"cluster": cluster})
        return [_plain(r) for r in rows]

    @_transaction
    async def clusters(self, tx):
        """Every cluster that has nodes or leases."""
        rows = await tx.rows("SELECT name FROM clusters ORDER BY name")
        return [r["name"] for r in rows]

    @_retried_once
    @_transaction
    async def assign(self, tx, cluster):
        """
        One assignment round for ``cluster`` (waiting for one another region
        runs to end first).  Nodes without a live owner go to their
        rendezvous pserv; nodes whose live owner is not their rendezvous
        pserv are marked for hand-over.  Answers ``{"assigned": {epoch:
        [nodes]}, "handoffs": {from_epoch: [nodes]}, "waiting": [nodes]}``,
        ``waiting`` being the nodes marked by an earlier round that their
        owner has not released yet.
        """
        # Rounds for one cluster queue up rather than skip: a round that
        # started before a pserv registered must not be the last word.
        await tx.rows("SELECT pg_advisory_xact_lock(%s, %s)",
                      (ASSIGN_LOCK, zlib.crc32(cluster.encode()) & 0x7FFFFFFF))
        leases = await tx.rows(
            "SELECT epoch, pserv FROM leases WHERE cluster = %s AND NOT released"
            " AND expires_at > now()", (cluster,))
        live = {r["epoch"]: r["pserv"] for r in leases}
        if not live:
            # Nobody to assign to: every node is ownerless, and that is all
            # (one statement, not a locked pass over the cluster's nodes in
            # Python: with the cluster's pservs down, every power request
            # still asks for a round).  The rows it changes are locked in
            # name order first, as everywhere (a bare UPDATE locks in scan
            # order and deadlocked with the batch writers' name order).
            await tx.rows("WITH locked AS MATERIALIZED (SELECT name FROM nodes"
                          " WHERE cluster = %s AND (owner_epoch IS NOT NULL"
                          " OR handoff_epoch IS NOT NULL) ORDER BY name FOR UPDATE)"
                          " UPDATE nodes SET owner_epoch = NULL, handoff_epoch = NULL"
                          " FROM locked WHERE nodes.name = locked.name", (cluster,))
            return {"assigned": {}, "handoffs": {}, "waiting": []}
        nodes = await tx.rows(
            "SELECT name, owner_epoch, handoff_epoch, circuit FROM nodes WHERE cluster = %s"
            " ORDER BY name FOR UPDATE", (cluster,))
        # A node whose owner's lease is over has no owner: its lease's end
        # was the moment the old owner went quiet.
        pairs = [(n["name"], n["owner_epoch"] if n["owner_epoch"] in live else None)
                 for n in nodes]
        handoff_now = {n["name"]: n["handoff_epoch"] for n in nodes}
        keys = [ownership.placement_key(n["name"], n["circuit"]) for n in nodes]
        assigned, handoffs, clear, waiting = {}, {}, [], []
        placed = [pair + (key,) for pair, key in zip(pairs, keys)]
        for decision in ownership.assign(placed, live):
            if decision.kind == "assign":
                assigned.setdefault(decision.epoch, []).append(decision.node)
            elif decision.kind == "handoff":
                if handoff_now[decision.node] != decision.epoch:
                    handoffs.setdefault(decision.from_epoch, []).append(
                        (decision.node, decision.epoch))
                else:  # marked by an earlier round, not released yet
                    waiting.append(decision.node)
            elif handoff_now[decision.node] is not None:
                clear.append(decision.node)
        owners = dict(pairs)
        # Nodes of a dead owner with nobody live to take them lose the owner.
        orphans = [n["name"] for n in nodes if n["owner_epoch"] is not None
                   and owners[n["name"]] is None
                   and not any(n["name"] in v for v in assigned.values())]
        for epoch, names in assigned.items():
            await tx.rows("UPDATE nodes SET owner_epoch = %s, handoff_epoch = NULL,"
                          " handoff_released = false"
                          " WHERE name = ANY(%s)", (epoch, names))
        for _, pairs_ in handoffs.items():
            await tx.rows(
                # handoff_released stays: a node its owner released already
                # is not driven by it whichever pserv it waits for.
                "UPDATE nodes SET handoff_epoch = h.epoch"
                " FROM unnest(%s::text[], %s::bigint[])"
                " AS h(name, epoch) WHERE nodes.name = h.name",
                ([p[0] for p in pairs_], [p[1] for p in pairs_]))
        if clear or orphans:
            await tx.rows("UPDATE nodes SET handoff_epoch = NULL, handoff_released = false"
                          " WHERE name = ANY(%s)",
                          (clear + orphans,))
        if orphans:
            await tx.rows("UPDATE nodes SET owner_epoch = NULL WHERE name = ANY(%s)",
                          (orphans,))
        if assigned or handoffs or clear:
            # (clear: an owner may have forgotten a circuit's node it had
            # released already; its next Recover must learn it again.)
            await tx.rows("SELECT pg_notify('assignments', %s)", (cluster,))
        return {"assigned": assigned,
                "handoffs": {e: [p[0] for p in v] for e, v in handoffs.items()},
                "waiting": waiting}
