"""
What automatic fencing (:mod:`powerctl.region.autofence`) reads and keeps:
each cluster's policy, and the health of its nodes as the decision needs it.
"""

import json

from powerctl.region.autofence import AutoFencePolicy, NodeHealth
from powerctl.region.errors import InvalidInput, NotFound
from powerctl.region.fencing import SWITCHING_ON
from powerctl.region.store.base import OPEN_SQL, KindStore, transaction

#: The requester of the fences automatic fencing journals.
REQUESTER = "auto-fence"


def check_policy(data):
    """An :class:`AutoFencePolicy` from its JSON form; InvalidInput naming the bad key."""
    try:
        return AutoFencePolicy.from_dict(data)
    except ValueError as e:
        raise InvalidInput(str(e)) from None


class AutoFenceStore(KindStore):
    """Clusters' automatic fencing policies and their nodes' health."""

    @transaction
    async def policy(self, tx, cluster):
        """The cluster's policy (disabled when none is set); NotFound if no such cluster."""
        row = await tx.row("SELECT auto_fence FROM clusters WHERE name = %s", (cluster,))
        if row is None:
            raise NotFound(f"cluster {cluster!r} does not exist")
        return AutoFencePolicy.from_dict(row["auto_fence"] or {})

    @transaction
    async def set_policy(self, tx, cluster, data):
        """Set (a dict) or remove (None) the cluster's policy; answers it."""
        policy = check_policy(data) if data is not None else AutoFencePolicy()
        row = await tx.row(
            "UPDATE clusters SET auto_fence = %s::jsonb WHERE name = %s RETURNING name",
            (json.dumps(policy.to_dict()) if data is not None else None, cluster))
        if row is None:
            raise NotFound(f"cluster {cluster!r} does not exist")
        return policy

    @transaction
    async def enabled(self, tx):
        """``[(cluster, policy)]`` of the clusters whose automatic fencing is on."""
        rows = await tx.rows("SELECT name, auto_fence FROM clusters"
                             " WHERE (auto_fence ->> 'enabled')::boolean ORDER BY name")
        return [(r["name"], AutoFencePolicy.from_dict(r["auto_fence"])) for r in rows]

    @transaction
    async def health(self, tx, cluster, window):
        """
        ``(now, [NodeHealth], started)`` of ``cluster``, in the database's
        seconds: its nodes (when each turned non-responsive, whether a fence
        of it is open, whether it is fenced already) and when the automatic fences of the last ``window``
        seconds were requested.
        """
        now = (await tx.row("SELECT extract(epoch FROM now()) AS now"))["now"]
        rows = await tx.rows(
            "SELECT name, extract(epoch FROM nonresponsive_since) AS since,"
            " EXISTS (SELECT 1 FROM power_ops o WHERE o.node = nodes.name"
            f"   AND o.action = 'fence' AND o.state IN {OPEN_SQL}) AS fence_open,"
            # fenced: of its succeeded fences and on/cycle requests, the last
            # is a fence, and it was not seen on since
            " power_state IS DISTINCT FROM 'on' AND COALESCE((SELECT l.action = 'fence'"
            "   FROM power_ops l WHERE l.node = nodes.name AND (l.action IN %s"
            "   OR (l.action = 'fence' AND l.state = 'succeeded'))"
            "   ORDER BY l.id DESC LIMIT 1), false) AS fenced"
            " FROM nodes WHERE cluster = %s ORDER BY name", (SWITCHING_ON, cluster))
        started = await tx.rows(
            "SELECT extract(epoch FROM o.requested_at) AS at FROM power_ops o"
            " JOIN nodes n ON n.name = o.node WHERE n.cluster = %s AND o.requester = %s"
            " AND o.requested_at > now() - %s * interval '1 second'",
            (cluster, REQUESTER, float(window)))
        return (float(now),
                [NodeHealth(r["name"], float(r["since"]) if r["since"] is not None else None,
                            r["fence_open"], r["fenced"]) for r in rows],
                [float(r["at"]) for r in started])
