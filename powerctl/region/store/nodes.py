"""
Nodes: their power documents, desired and observed power state,
responsiveness and drift.

Node power documents are returned as stored and must be passed through
:func:`powerctl.powerdoc.redact` before they are shown.
"""

import attrs
from psycopg2.extras import Json

from powerctl.power import POWER_STATES, Action, OpState, PowerState
from powerctl.region import drift, powerconfig
from powerctl.region.errors import Conflict, InvalidInput, NotFound
from powerctl.region.store.base import (
    MAX_INTERNAL_PAGE, NODE_COLUMNS, OPEN_SQL, KindStore, check_fields, check_name,
    check_text, node_row, op_number, page_limit, plain, transaction)
from powerctl.region.store.clusters import (
    CIRCUIT_JOIN, CIRCUIT_SQL, check_circuit, circuit_of, ensure_cluster)
from powerctl.region.store.lockouts import forget_for_node
from powerctl.region.store.operations import cancel_open, journal, lock_open
from powerctl.region.store.pod_managers import (
    fetch_for_power, link_to_node, resolve_many, validated_power)


class NodeStore(KindStore):
    """
    Nodes.

    :param catalogue: the driver catalogue power documents are validated
        against.
    :param responsive_grace: seconds since a node's last good poll before
        failed polls may make it non-responsive.
    :param failed_polls_limit: a node becomes non-responsive only after
        *more than* this many consecutive failed polls.
    """

    def __init__(self, pool, catalogue, vault, responsive_grace=60.0, failed_polls_limit=2,
                 ops=None):
        super().__init__(pool)
        #: the journal (an OperationStore), for outcomes written with the
        #: node state they imply (:meth:`record_outcome`)
        self._ops = ops
        self._catalogue = catalogue
        self._vault = vault  # seals secret parameters at rest
        self.responsive_grace = float(responsive_grace)
        self.failed_polls_limit = int(failed_polls_limit)

    @transaction
    async def create(self, tx, name, cluster, power, circuit=None):
        """
        Add a node (and its cluster, if new). Conflict if the name is taken.
        ``circuit``: the electrical circuit it is on (None: none), whose
        budget of power-ons its cluster may set (:meth:`ClusterStore.set_circuit`).
        """
        check_name("name", name)
        check_name("cluster", cluster)
        circuit = check_circuit(circuit)
        power = await validated_power(tx, self._catalogue, self._vault, power, None)
        await ensure_cluster(tx, cluster)
        row = await tx.row(
            f"INSERT INTO nodes (name, cluster, power, circuit) VALUES (%s, %s, %s, %s)"
            f" ON CONFLICT (name) DO NOTHING RETURNING {NODE_COLUMNS}",
            (name, cluster, Json(power), circuit))
        if row is None:
            raise Conflict(f"node {name!r} already exists")
        await link_to_node(tx, name, power)
        return plain(row)

    @transaction
    async def get(self, tx, name):
        """One node; NotFound if there is none of that name."""
        return plain(await node_row(tx, name))

    @transaction
    async def list(self, tx, cluster=None, after_name="", limit=None, clusters=None,
                   power_state=None, desired_state=None, responsive=None):
        """
        Nodes by name, pageable by name (keyset: ``after_name`` is the last
        name seen), optionally of one ``cluster``, of the ``clusters`` a
        scoped token covers, and of a power state, desired state or
        responsiveness.  Filters apply before ``limit``, in SQL, so a page
        is full whenever more matching rows follow.
        """
        rows = await tx.rows(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE (%(cluster)s::text IS NULL"
            " OR cluster = %(cluster)s) AND name > %(after)s"
            " AND (%(clusters)s::text[] IS NULL OR cluster = ANY(%(clusters)s::text[]))"
            " AND (%(power_state)s::text IS NULL OR power_state = %(power_state)s)"
            " AND (%(desired)s::text IS NULL OR desired_state = %(desired)s)"
            " AND (%(responsive)s::boolean IS NULL OR responsive = %(responsive)s)"
            " ORDER BY name LIMIT %(limit)s",
            {"cluster": cluster, "after": after_name or "", "limit": limit,
             "clusters": None if clusters is None else sorted(clusters),
             "power_state": power_state, "desired": desired_state, "responsive": responsive})
        return [plain(r) for r in rows]

    @transaction
    async def counts(self, tx):
        """
        Per cluster and power state: how many nodes, how many not in their
        desired state, non-responsive and drifted -- one GROUP BY, for the
        status page and /metrics (which never read every node row).
        """
        rows = await tx.rows(
            "SELECT cluster, power_state, count(*) AS nodes,"
            " count(*) FILTER (WHERE desired_state IS NOT NULL"
            "   AND desired_state <> power_state) AS mismatched,"
            " count(*) FILTER (WHERE NOT responsive) AS nonresponsive,"
            " count(*) FILTER (WHERE drift_since IS NOT NULL) AS drifted"
            " FROM nodes GROUP BY cluster, power_state ORDER BY cluster, power_state")
        return [dict(r) for r in rows]

    @transaction
    async def page(self, tx, cluster=None, name="", problems=False, after_name="", limit=100):
        """
        One page of the status page's node table, filtered in SQL
        (``name`` contained in the node's name, ``problems``: mismatched,
        drifted, non-responsive or with an error), with ``total`` (rows
        matching) and ``before`` (matching rows up to ``after_name``):
        ``{"nodes", "total", "before", "more"}``.
        """
        where = ("(%(cluster)s::text IS NULL OR cluster = %(cluster)s)"
                 " AND strpos(name, %(name)s) > 0"
                 " AND (NOT %(problems)s OR (desired_state IS NOT NULL"
                 "   AND desired_state <> power_state) OR drift_since IS NOT NULL"
                 "   OR NOT responsive OR last_error IS NOT NULL)")
        args = {"cluster": cluster, "name": name or "", "problems": bool(problems),
                "after": after_name or "", "limit": limit + 1}
        counted = await tx.row(
            f"SELECT count(*) AS total, count(*) FILTER (WHERE name <= %(after)s) AS before"
            f" FROM nodes WHERE {where}", args)
        rows = await tx.rows(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE {where} AND name > %(after)s"
            " ORDER BY name LIMIT %(limit)s", args)
        return {"nodes": [plain(r) for r in rows[:limit]], "more": len(rows) > limit,
                "total": counted["total"], "before": counted["before"]}

    @transaction
    async def update(self, tx, name, quiesce=None, by=None, **fields):
        """
        Change a node's ``cluster``, ``power`` and/or ``circuit`` (None or
        "" for none).  Secrets given as ``"(set)"`` keep their stored value.
        A new circuit is a change the pserv must know about: the node may
        move to the owner of that circuit's nodes.

        When the change is one a pserv must know about (another cluster, a
        different power configuration), ``quiesce(node)`` is awaited first
        with the node's row locked: it makes the pserv driving the node stop
        and forget it, and no new request for the node can slip in before
        the change is committed, so nothing runs with the old settings
        after the commit.  ``quiesce`` answers the ids of the operations the
        pservs cancelled; they are journalled ``cancelled`` by ``by`` here
        (the pservs' own reports, held by the row locks, then change
        nothing).  The answer is the node with ``changed_for_pserv``.
        """
        check_fields(fields, ("cluster", "power", "circuit"), "node")
        node = await node_row(tx, name, lock=True)
        cluster = check_name("cluster", fields.get("cluster", node["cluster"]))
        circuit = check_circuit(fields.get("circuit", node["circuit"]))
        power = node["power"]
        if "power" in fields:
            power = await validated_power(tx, self._catalogue, self._vault, fields["power"],
                                          node["power"])
        relevant = (cluster != node["cluster"] or power != node["power"]
                    or circuit != node["circuit"])
        if relevant and quiesce is not None:
            await self._quiesce(tx, node, quiesce, f"node {name} reconfigured", by)
        await ensure_cluster(tx, cluster)
        # Another cluster: its pservs, not the old owner, will drive it.
        row = await tx.row(
            f"UPDATE nodes SET cluster = %s, power = %s, circuit = %s, updated_at = now(),"
            f" owner_epoch = CASE WHEN cluster = %s THEN owner_epoch END,"
            f" handoff_epoch = CASE WHEN cluster = %s THEN handoff_epoch END"
            f" WHERE name = %s RETURNING {NODE_COLUMNS}",
            (cluster, Json(power), circuit, cluster, cluster, name))
        await link_to_node(tx, name, power)
        if power != node["power"]:  # issue 10: new credentials are not locked out
            await forget_for_node(tx, name)
        return dict(plain(row), changed_for_pserv=relevant)

    @transaction
    async def delete(self, tx, name, by="", quiesce=None):
        """
        Remove a node; NotFound if there is none.  Its operation history
        stays in the journal; its open operations end ``cancelled``
        (``cancelled_by`` = ``by``).  ``quiesce(node)``, if given, is
        awaited first with the node's row locked (see :meth:`update`).
        Returns ``{"node": name, "cancelled": [operation ids]}``.
        """
        check_text("by", by, 255)
        node = await node_row(tx, name, lock=True)
        reason = f"node {name} deleted"
        if quiesce is not None:
            await self._quiesce(tx, node, quiesce, reason, by)
        cancelled = await cancel_open(tx, name, reason, by)
        await tx.rows("DELETE FROM nodes WHERE name = %s", (name,))
        return {"node": name, "cancelled": sorted(cancelled)}

    async def _quiesce(self, tx, node, quiesce, reason, by):
        """
        Lock the node's open operations, await ``quiesce(node)`` and
        journal the ones it says the pservs cancelled.
        """
        await lock_open(tx, node["name"])
        cancelled = await quiesce(plain(node))
        if cancelled:
            await cancel_open(tx, node["name"], reason, by, only=sorted(cancelled))

    @transaction
    async def desired_states(self, tx, cluster, after_name="", limit=500, epoch=None):
        """
        A page of the cluster's nodes by name: ``node``, ``desired_state``,
        ``power_state`` and the resolved ``power`` (as in OperationStore.outstanding).
        """
        rows = await tx.rows(
            "SELECT n.name AS node, n.desired_state, n.power_state, n.power,"
            f" {CIRCUIT_SQL} FROM nodes n {CIRCUIT_JOIN}"
            " WHERE n.cluster = %s AND n.name > %s"
            " AND (%s::bigint IS NULL OR (n.owner_epoch = %s AND n.handoff_epoch IS NULL))"
            " ORDER BY n.name LIMIT %s",
            (cluster, after_name or "", epoch, epoch, page_limit(limit, 500, MAX_INTERNAL_PAGE)))
        resolved = await resolve_many(tx, self._catalogue, self._vault,
                                      [r.pop("power") for r in rows])
        return [dict(circuit_of(r), power=p, power_error=e) for r, (p, e) in zip(rows, resolved)]

    @transaction
    async def circuit_config(self, tx, name):
        """
        What a pserv needs of a node's circuit: ``{"name", "max_on",
        "spacing"}`` (``max_on`` None: no budget set), or None when the node
        names no circuit (or does not exist).
        """
        row = await tx.row(f"SELECT {CIRCUIT_SQL} FROM nodes n {CIRCUIT_JOIN}"
                           " WHERE n.name = %s", (name,))
        return circuit_of(row)["circuit"] if row is not None else None

    @transaction
    async def power_config(self, tx, name):
        """A node's resolved power configuration; PowerDocumentRefused if it no longer resolves."""
        node = await node_row(tx, name)
        pods = await fetch_for_power(tx, self._vault,
                                     powerconfig.referenced_pod_managers(node["power"]))
        return powerconfig.resolve_power(self._vault.open_power(node["power"]),
                                         self._catalogue, pods)

    def _responsiveness(self, node, failed, queried):
        """
        ``(failed_polls, responsive)`` after one report.  A success always
        restores responsiveness.  A failed *poll* counts; the node turns
        non-responsive only after more than ``failed_polls_limit`` of them
        in a row *and* ``responsive_grace`` seconds since its last good
        poll, so one slow BMC or a pserv restart does not flap the fleet.
        """
        if not failed:
            return 0, True
        polls = node["failed_polls"] + (1 if queried else 0)
        overdue = node["since_good"].total_seconds() >= self.responsive_grace
        return polls, node["responsive"] and not (polls > self.failed_polls_limit and overdue)

    @transaction
    async def record_power_state(self, tx, node, power_state, error=None, queried=True,
                                 poll=False):
        """
        Record what a poll (``queried=True``) or an action's outcome saw.

        A report is failed when it carries an ``error`` or says ``error``.
        While the node is still responsive a failed report keeps its last
        known ``power_state`` (one lost UDP packet does not make a running
        host "error"); once it is non-responsive the reported state is
        stored.  ``last_changed_at`` moves only when ``power_state`` does.

        A pserv's poll (``poll=True``, from the region, which dispatches what
        it answers) also decides the node's drift (:mod:`powerctl.region.drift`);
        an action's outcome does not.  When the cluster's policy enforces,
        the ``reconcile`` operation is journalled here, under the node's row
        lock (so no operator's request can slip in between), and answered
        as ``reconcile`` (None otherwise).
        """
        report = _check_report(node, power_state, error, queried)
        recorded = await self._record(tx, [report], poll)
        if node not in recorded:
            raise NotFound(f"node {node!r} does not exist")
        return recorded[node]

    @transaction
    async def record_outcome(self, tx, op_id, state, observed_state=None, error=None,
                             **kwargs):
        """
        A pserv's report of how an operation ended and the node state it
        implies, in one transaction, so nobody reads one without the other
        (issue 14).  The node's row is locked before the operation's, the
        order every other writer of both takes.  An observed state is
        recorded as the node's; a failure without one sets the node's last
        error (a failed change is not a failed poll: it does not count
        against responsiveness, unless it was a query).  Answers the
        operation's :class:`~.operations.Recorded`; arguments as
        :meth:`OperationStore.end <.operations.OperationStore.end>`.
        """
        await tx.rows("SELECT 1 FROM nodes WHERE name = (SELECT node FROM power_ops"
                      " WHERE id = %s) FOR UPDATE", (op_number(op_id),))
        recorded = await self._ops.end(tx, op_id, state, observed_state=observed_state,
                                       error=error, **kwargs)
        if recorded.changed:
            report = _implied(recorded.op, state, observed_state, error)
            if report is not None:
                # a deleted node leaves only its journal: nothing to record
                await self._record(tx, [report], poll=False)
        return recorded

    @transaction
    async def record_outcomes(self, tx, reports):
        """
        A batch of a pserv's outcome reports in one transaction (issue 14),
        each a dict of :meth:`record_outcome`'s arguments with ``op_id`` and
        ``state``: the nodes locked once (name order, before the
        operations, as every writer of both), the operations ended by
        :meth:`OperationStore.end_many <.operations.OperationStore.end_many>`
        and the node states they imply written in one batch (of several
        reports of one node, the last that implies a state counts).
        Answers one ``Recorded`` or refusal (the exception
        :meth:`record_outcome` would raise) per report, in order.
        """
        ids = []
        for report in reports:
            try:
                ids.append(op_number(report.get("op_id")))
            except NotFound:
                pass
        if ids:
            await tx.rows("SELECT 1 FROM nodes WHERE name IN (SELECT node FROM power_ops"
                          " WHERE id = ANY(%s::bigint[])) ORDER BY name FOR UPDATE", (ids,))
        results = await self._ops.end_many(tx, reports)
        implied = {}
        for report, result in zip(reports, results):
            if not isinstance(result, Exception) and result.changed:
                node = _implied(result.op, report["state"], report.get("observed_state"),
                                report.get("error"))
                if node is not None:
                    implied[node.node] = node
        await self._record(tx, list(implied.values()), poll=False)
        return results

    @transaction
    async def record_polls(self, tx, reports):
        """
        Record one batch of a pserv's polls, ``[(node, state, error)]``, in
        one transaction with one read and one write for the whole batch
        (plus the rare drift changes), as :meth:`record_power_state` with
        ``poll=True`` would node by node.

        A bad report (unknown state, over-long error) or an unknown node is
        left out and does not cost the others their update.  Answers
        ``(recorded, missing, refused)``: the nodes as recorded (each with
        its ``reconcile``), the names that do not exist, and the refused
        reports by name with the reason.
        """
        good, refused = {}, {}
        for node, state, error in reports:  # the last report of a node counts
            try:
                good[node] = _check_report(node, state, error, True)
                refused.pop(node, None)
            except InvalidInput as e:
                refused[node] = str(e)
                good.pop(node, None)
        recorded = await self._record(tx, list(good.values()), poll=True)
        missing = [name for name in good if name not in recorded]
        return recorded, missing, refused

    async def _record(self, tx, reports, poll):
        """
        The nodes of ``reports`` (checked ``_Report``s, one per node) as
        recorded: {name: row}.  Rows are locked in name order, so two
        batches that share nodes cannot deadlock.
        """
        if not reports:
            return {}
        rows = {r["name"]: r for r in await tx.rows(
            "SELECT name, power_state, failed_polls, responsive, desired_state, drift_since,"
            " drift_observed, drift_polls, now() AS now,"
            " now() - COALESCE(last_good_poll_at, created_at) AS since_good,"
            " (SELECT drift_policy FROM clusters c WHERE c.name = nodes.cluster) AS policy,"
            " EXISTS (SELECT 1 FROM power_ops o WHERE o.node = nodes.name"
            f"   AND o.state IN {OPEN_SQL}) AS open_op"
            " FROM nodes WHERE name = ANY(%s) ORDER BY name FOR UPDATE",
            ([r.node for r in reports],))}
        columns = {k: [] for k in ("node", "state", "polls", "responsive", "error", "queried",
                                   "good")}
        for report in reports:
            row = rows.get(report.node)
            if row is None:
                continue
            failed = report.error is not None or report.state == PowerState.ERROR.value
            polls, responsive = self._responsiveness(row, failed, report.queried)
            for key, value in (
                ("node", report.node), ("polls", polls), ("responsive", responsive),
                ("state", row["power_state"] if failed and responsive else report.state),
                ("error", (report.error or "the query failed") if failed else None),
                ("queried", bool(report.queried)), ("good", not failed),
            ):
                columns[key].append(value)
        if not columns["node"]:
            return {}
        updated = await tx.rows(
            "UPDATE nodes SET power_state = u.state, failed_polls = u.polls,"
            " responsive = u.responsive, last_error = u.error,"
            # when it turned non-responsive (auto-fencing's grace and storms)
            " nonresponsive_since = CASE WHEN u.responsive THEN NULL"
            "   WHEN nodes.responsive THEN now() ELSE nodes.nonresponsive_since END,"
            " last_queried_at = CASE WHEN u.queried THEN now() ELSE last_queried_at END,"
            " last_good_poll_at = CASE WHEN u.good THEN now() ELSE last_good_poll_at END,"
            " last_changed_at = CASE WHEN power_state <> u.state THEN now()"
            "   ELSE last_changed_at END"
            " FROM unnest(%(node)s::text[], %(state)s::text[], %(polls)s::int[],"
            "   %(responsive)s::bool[], %(error)s::text[], %(queried)s::bool[],"
            "   %(good)s::bool[]) AS u(node, state, polls, responsive, error, queried, good)"
            f" WHERE nodes.name = u.node RETURNING {_qualified(NODE_COLUMNS)}", columns)
        by_name = {report.node: report for report in reports}
        recorded = {}
        for node in sorted(updated, key=lambda n: n["name"]):
            reconcile = None
            if poll:
                report = by_name[node["name"]]
                failed = report.error is not None or report.state == PowerState.ERROR.value
                node, reconcile = await self._drift(tx, rows[node["name"]], node, report.state,
                                                    failed)
            recorded[node["name"]] = dict(plain(node), reconcile=reconcile)
        return recorded

    async def _drift(self, tx, row, node, observed, failed):
        """
        Record what one poll says about drift (``row``: the node before the
        poll, ``node``: after it); journal the ``reconcile`` operation when
        enforced.  Answers the node and that operation (or None).
        """
        recent = ()
        if row["policy"] == "enforce" and not row["open_op"]:
            recent = tuple((r["requester"], r["state"]) for r in await tx.rows(
                "SELECT requester, state FROM power_ops WHERE node = %s"
                f" AND action <> '{Action.QUERY.value}'"
                " ORDER BY id DESC LIMIT %s", (node["name"], drift.MAX_RECONCILE_ATTEMPTS)))
        verdict = drift.assess(drift.Observation(
            desired=row["desired_state"], observed=observed, failed=failed,
            responsive=node["responsive"], open_op=row["open_op"],
            drift_since=row["drift_since"], drift_observed=row["drift_observed"],
            drift_polls=row["drift_polls"], policy=row["policy"] or drift.DEFAULT_POLICY,
            recent_ops=recent, now=row["now"]))
        op = None
        if verdict.enforce is not None:
            # A new request clears the drift, as any request does.
            op = plain(await journal(tx, node["name"], verdict.enforce,
                                     drift.RECONCILE_REQUESTER))
            verdict = drift.NO_DRIFT
        fields = (verdict.since, verdict.observed, verdict.polls)
        if fields != (node["drift_since"], node["drift_observed"], node["drift_polls"]):
            node = await tx.row(
                "UPDATE nodes SET drift_since = %s, drift_observed = %s, drift_polls = %s"
                f" WHERE name = %s RETURNING {NODE_COLUMNS}", fields + (node["name"],))
        return node, op


@attrs.frozen
class _Report:
    """One checked report of a node's power state."""

    node: str
    state: str
    error: str | None
    queried: bool


def _implied(op, state, observed_state, error):
    """
    The node state an operation's outcome implies (a ``_Report``), or
    None: an observed state is the node's; a failure without one is the
    node's last error (counted against responsiveness only for a query).
    """
    if observed_state is not None:
        return _check_report(op["node"], observed_state, None, True)
    if state == OpState.FAILED.value:
        return _check_report(op["node"], PowerState.ERROR.value, error or "failed",
                             op["action"] == Action.QUERY.value)
    return None


def _check_report(node, state, error, queried):
    """A ``_Report``; InvalidInput naming the field when it is not one."""
    if state not in POWER_STATES:
        raise InvalidInput(f"power_state: {state!r} is not one of " + ", ".join(POWER_STATES))
    if error is not None:
        check_text("error", error)
    return _Report(node, state, error, queried)


def _qualified(columns):
    """``NODE_COLUMNS`` as ``nodes.<column>``: an UPDATE ... FROM has two tables."""
    return ", ".join("nodes." + c.strip() for c in columns.split(","))
