"""
BMC lock-outs kept by the region (issue 10; see
:mod:`powerctl.pserv.lockout` for the pserv's half).  A pserv reports the
credentials of a node's agent locked out; the region keeps the row and
sends it with the node's configuration to whichever pserv drives the node,
until the credentials change (:func:`forget_for_node`,
:func:`forget_for_pod_manager`, in the transaction of the change) or an
operator clears it (:meth:`LockoutStore.clear`).
"""

from powerctl.region.errors import NotFound
from powerctl.region.store.base import KindStore, check_name, check_text, plain, transaction

COLUMNS = "l.id, l.node, n.cluster, l.agent, l.failures, l.reason, l.pserv, l.locked_at"


async def forget_for_node(tx, node):
    """The node's credentials changed: its lock-outs no longer apply."""
    await tx.rows("DELETE FROM lockouts WHERE node = %s", (node,))


async def forget_for_pod_manager(tx, uuid):
    """A pod manager's credentials changed: so did those of the nodes using it."""
    await tx.rows("DELETE FROM lockouts WHERE node IN (SELECT node FROM node_pod_managers"
                  " WHERE pod_manager = %s)", (uuid,))


async def for_nodes(tx, names):
    """``{node: [{"agent", "id"}]}`` for the nodes of ``names`` locked out."""
    if not names:
        return {}
    rows = await tx.rows("SELECT node, agent, id FROM lockouts WHERE node = ANY(%s)"
                         " ORDER BY node, agent", (list(names),))
    out = {}
    for row in rows:
        out.setdefault(row["node"], []).append({"agent": row["agent"], "id": row["id"]})
    return out


class LockoutStore(KindStore):
    @transaction
    async def record(self, tx, node, agent, failures, reason, pserv):
        """Record (or refresh) a lock-out; the row, with its ``id``."""
        check_text("reason", reason, 1000)
        row = await tx.row(
            "INSERT INTO lockouts (node, agent, failures, reason, pserv)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (node, agent) DO UPDATE SET"
            " failures = EXCLUDED.failures, reason = EXCLUDED.reason, pserv = EXCLUDED.pserv"
            " RETURNING id", (node, agent, failures, reason, pserv))
        return row["id"]

    @transaction
    async def list(self, tx, cluster=None, clusters=None):
        """Every lock-out (of ``cluster``; of ``clusters`` only, for a scoped token)."""
        rows = await tx.rows(
            f"SELECT {COLUMNS} FROM lockouts l JOIN nodes n ON n.name = l.node"
            " WHERE (%(cluster)s::text IS NULL OR n.cluster = %(cluster)s)"
            " AND (%(clusters)s::text[] IS NULL OR n.cluster = ANY(%(clusters)s))"
            " ORDER BY l.node, l.agent",
            {"cluster": cluster, "clusters": None if clusters is None else sorted(clusters)})
        return [plain(r) for r in rows]

    @transaction
    async def of_nodes(self, tx, names):
        return await for_nodes(tx, names)

    @transaction
    async def clear(self, tx, node):
        """
        Clear ``node``'s lock-outs: ``{"cluster", "cleared": [rows removed]}``
        (NotFound without such a node).  The ``NOTIFY assignments`` makes
        every region's pservs of the cluster recover, so an owner connected
        to another region learns it too.
        """
        check_name("node", node)
        exists = await tx.row("SELECT cluster FROM nodes WHERE name = %s", (node,))
        if exists is None:
            raise NotFound(f"node {node!r} does not exist")
        rows = await tx.rows(
            "DELETE FROM lockouts WHERE node = %s RETURNING id, node, agent, failures,"
            " reason, pserv, locked_at", (node,))
        await tx.rows("SELECT pg_notify('assignments', %s)", (exists["cluster"],))
        cleared = [dict(plain(r), cluster=exists["cluster"])
                   for r in sorted(rows, key=lambda r: r["agent"])]
        return {"cluster": exists["cluster"], "cleared": cleared}
