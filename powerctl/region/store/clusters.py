"""
Clusters and the pservs that serve them: registration, heartbeats,
liveness and each cluster's drift policy.
"""

from powerctl.power import OpState
from powerctl.region import drift
from powerctl.region.errors import InvalidInput, NotFound
from powerctl.region.store.base import (
    PSERV_COLUMNS, KindStore, check_name, check_text, plain, transaction)


#: The columns (and join) that give a node's circuit with its budget; read
#: back with :func:`circuit_of`.  The node's table is ``n``.
CIRCUIT_SQL = ("n.circuit AS circuit_name, ci.max_on AS circuit_max_on,"
               " ci.spacing AS circuit_spacing")
CIRCUIT_JOIN = "LEFT JOIN circuits ci ON ci.cluster = n.cluster AND ci.name = n.circuit"


def circuit_of(row):
    """``row`` with the :data:`CIRCUIT_SQL` columns folded into ``circuit`` (or None)."""
    row = dict(row)
    name = row.pop("circuit_name", None)
    max_on, spacing = row.pop("circuit_max_on", None), row.pop("circuit_spacing", None)
    row["circuit"] = None if name is None else {
        "name": name, "max_on": max_on, "spacing": float(spacing or 0.0)}
    return row


def check_circuit(value):
    """A node's circuit: a name, or None ("" clears it)."""
    if value is None or value == "":
        return None
    return check_name("circuit", value)


def check_budget(max_on, spacing):
    """A circuit's budget: ``max_on`` an integer >= 1, ``spacing`` seconds >= 0 (<= 3600)."""
    if isinstance(max_on, bool) or not isinstance(max_on, int) or not 1 <= max_on <= 100_000:
        raise InvalidInput(f"max_on: must be an integer from 1 to 100000, not {max_on!r}")
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) \
            or not 0 <= spacing <= 3600:
        raise InvalidInput(f"spacing: must be a number of seconds from 0 to 3600, "
                           f"not {spacing!r}")
    return max_on, float(spacing)


#: The largest count the pservs table holds (a PostgreSQL integer).
MAX_INT = 2**31 - 1


async def ensure_cluster(tx, cluster):
    """Create ``cluster`` if it is new (nodes and pservs name their cluster)."""
    await tx.rows(
        "INSERT INTO clusters (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
        (cluster,))


class ClusterStore(KindStore):
    """
    Clusters and pservs.

    :param heartbeat_timeout: a connected pserv whose last heartbeat is
        older than this many seconds is not live.
    """

    # (Store always passes the setting's heartbeat_timeout: make mutate's
    # +-1 on this default is equivalent.)
    def __init__(self, pool, heartbeat_timeout=90.0):
        super().__init__(pool)
        self.heartbeat_timeout = float(heartbeat_timeout)

    @transaction
    async def register_pserv(self, tx, name, cluster, version, region):
        """A pserv connected (or reconnected) to ``region``: record it, live."""
        check_name("pserv", name)
        check_name("cluster", cluster)
        check_text("version", version, 255)
        if region is not None:
            check_text("region", region, 255)
        await ensure_cluster(tx, cluster)
        row = await tx.row(
            "INSERT INTO pservs (name, cluster, version, region, connected, connected_at,"
            " last_heartbeat) VALUES (%s, %s, %s, %s, true, now(), now())"
            " ON CONFLICT (name) DO UPDATE SET cluster = EXCLUDED.cluster,"
            " version = EXCLUDED.version, region = EXCLUDED.region, connected = true,"
            " connected_at = now(), last_heartbeat = now(), actions_in_flight = 0"
            f" RETURNING {PSERV_COLUMNS}", (name, cluster, version, region))
        return plain(row)

    @transaction
    async def heartbeat(self, tx, name, actions_in_flight):
        """A pserv is alive, with this many actions under way."""
        if isinstance(actions_in_flight, bool) or not isinstance(actions_in_flight, int) \
                or not 0 <= actions_in_flight <= MAX_INT:
            raise InvalidInput(f"actions_in_flight: must be an integer from 0 to {MAX_INT}")
        row = await tx.row(
            "UPDATE pservs SET last_heartbeat = now(), actions_in_flight = %s,"
            f" connected = true WHERE name = %s RETURNING {PSERV_COLUMNS}",
            (actions_in_flight, name))
        if row is None:
            raise NotFound(f"pserv {name!r} is not registered")
        return plain(row)

    @transaction
    async def pserv_disconnected(self, tx, name, region=None):
        """
        A pserv's connection closed.  With ``region``, only if it is still
        recorded as connected to that region: a pserv that already
        reconnected elsewhere must not be marked dead by the old region.
        Returns whether anything changed.
        """
        row = await tx.row(
            "UPDATE pservs SET connected = false, actions_in_flight = 0"
            " WHERE name = %(name)s AND connected"
            " AND (%(region)s::text IS NULL OR region = %(region)s) RETURNING name",
            {"name": name, "region": region})
        return row is not None

    def _live(self):
        """SQL (with one parameter) true for a connected, recently heard pserv."""
        return "(connected AND last_heartbeat > now() - make_interval(secs => %s))"

    @transaction
    async def live_pservs(self, tx, cluster):
        """The cluster's pservs that are connected and heartbeating, by name."""
        rows = await tx.rows(
            f"SELECT {PSERV_COLUMNS} FROM pservs WHERE cluster = %s AND {self._live()} ORDER BY name",
            (cluster, self.heartbeat_timeout))
        return [plain(r) for r in rows]

    @transaction
    async def serving(self, tx, node):
        """
        ``(cluster, [live pserv name, ...])`` for ``node``'s cluster, or
        None when there is no such node (deleted meanwhile): what a power
        request's answer says about who will run it.
        """
        row = await tx.row("SELECT cluster FROM nodes WHERE name = %s", (node,))
        if row is None:
            return None
        rows = await tx.rows(
            f"SELECT name FROM pservs WHERE cluster = %s AND {self._live()} ORDER BY name",
            (row["cluster"], self.heartbeat_timeout))
        return row["cluster"], [r["name"] for r in rows]

    @transaction
    async def list(self, tx):
        """
        Every cluster with its node count, running operations and pservs
        (connected or not); ``status`` is ``online`` while one pserv is live.
        ``drift_policy`` and ``drifted_nodes`` are its reconciliation.
        """
        clusters = await tx.rows(
            "SELECT c.name, c.created_at, c.drift_policy,"
            " (SELECT count(*) FROM nodes n WHERE n.cluster = c.name) AS nodes,"
            " (SELECT count(*) FROM nodes n WHERE n.cluster = c.name"
            "   AND n.drift_since IS NOT NULL) AS drifted_nodes,"
            " (SELECT count(*) FROM power_ops o JOIN nodes n ON n.name = o.node"
            f"   WHERE n.cluster = c.name AND o.state = '{OpState.RUNNING.value}') AS running_ops"
            " FROM clusters c ORDER BY c.name")
        pservs = await tx.rows(
            f"SELECT {PSERV_COLUMNS}, {self._live()} AS live FROM pservs ORDER BY name",
            (self.heartbeat_timeout,))
        result = []
        for cluster in clusters:
            mine = [plain(p) for p in pservs if p["cluster"] == cluster["name"]]
            result.append(plain(dict(
                cluster, pservs=mine, circuits=await self._circuits(tx, cluster["name"]),
                actions_in_flight=sum(p["actions_in_flight"] for p in mine if p["connected"]),
                status="online" if any(p["live"] for p in mine) else "offline")))
        return result

    @transaction
    async def set_circuit(self, tx, cluster, circuit, max_on, spacing=0.0):
        """
        Set the budget of ``circuit`` in ``cluster``: at most ``max_on``
        power-ons at once, starts ``spacing`` seconds apart.  NotFound if no
        such cluster.  Answers the circuit as :meth:`circuits` shows it.
        The owning pserv learns it with the next dispatch or ``Recover``.
        """
        check_name("circuit", circuit)
        max_on, spacing = check_budget(max_on, spacing)
        if await tx.row("SELECT 1 FROM clusters WHERE name = %s", (cluster,)) is None:
            raise NotFound(f"cluster {cluster!r} does not exist")
        await tx.rows(
            "INSERT INTO circuits (cluster, name, max_on, spacing) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (cluster, name) DO UPDATE SET max_on = EXCLUDED.max_on,"
            " spacing = EXCLUDED.spacing, updated_at = now()",
            (cluster, circuit, max_on, spacing))
        [row] = [c for c in await self._circuits(tx, cluster) if c["name"] == circuit]
        return row

    @transaction
    async def delete_circuit(self, tx, cluster, circuit):
        """Remove a circuit's budget (its nodes keep naming it); NotFound if none."""
        row = await tx.row("DELETE FROM circuits WHERE cluster = %s AND name = %s"
                           " RETURNING name", (cluster, circuit))
        if row is None:
            raise NotFound(f"circuit {circuit!r} of cluster {cluster!r} has no budget")

    @transaction
    async def circuits(self, tx, cluster):
        """
        The circuits of ``cluster``: those with a budget and those its nodes
        name, ``[{"name", "max_on", "spacing", "nodes"}]`` by name
        (``max_on`` None: no budget).
        """
        return await self._circuits(tx, cluster)

    async def _circuits(self, tx, cluster):
        rows = await tx.rows(
            "SELECT name, max(max_on) AS max_on, max(spacing) AS spacing,"
            " sum(nodes)::integer AS nodes FROM ("
            "  SELECT name, max_on, spacing, 0 AS nodes FROM circuits WHERE cluster = %(c)s"
            "  UNION ALL SELECT circuit, NULL, NULL, 1 FROM nodes"
            "  WHERE cluster = %(c)s AND circuit IS NOT NULL) AS u"
            " GROUP BY name ORDER BY name", {"c": cluster})
        return [{"name": r["name"], "max_on": r["max_on"],
                 "spacing": float(r["spacing"]) if r["spacing"] is not None else None,
                 "nodes": r["nodes"]} for r in rows]

    @transaction
    async def set_policy(self, tx, name, drift_policy):
        """Set a cluster's ``drift_policy`` (report or enforce); NotFound if no such cluster."""
        if drift_policy not in drift.POLICIES:
            raise InvalidInput(f"drift_policy: {drift_policy!r} is not one of "
                               + ", ".join(drift.POLICIES))
        row = await tx.row("UPDATE clusters SET drift_policy = %s WHERE name = %s"
                           " RETURNING name, drift_policy", (drift_policy, name))
        if row is None:
            raise NotFound(f"cluster {name!r} does not exist")
        return row
