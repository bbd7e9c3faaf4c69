"""
Nodes: their power documents, desired and observed power state,
responsiveness and drift.

Node power documents are returned as stored and must be passed through
:func:`powerctl.powerdoc.redact` before they are shown.
"""

import attrs
from psycopg2.extras import Json
from twisted.internet import defer

from powerctl.power import OP_STATES, POWER_STATES, Action, OpState, PowerState
from powerctl.region import drift, powerconfig
from powerctl.region.errors import Conflict, InvalidInput, NotFound
from powerctl.region.store.base import (
    MAX_INTERNAL_PAGE, NODE_COLUMNS, OP_COLUMNS, OPEN_SQL, PSERV_COLUMNS, KindStore,
    check_fields, check_name, check_text, node_row, op_number, page_limit, plain, run_prepared,
    transaction)
from powerctl.region.store import node_page
from powerctl.region.store.deadlocks import retried_once
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

    # (Store always passes responsive_grace: make mutate's +-1 on this
    # default is equivalent.)
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
        self._pages = node_page.Statements()  # the node list's, by filters and secrets

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

    def list(self, cluster=None, after_name="", limit=None, clusters=None,
             power_state=None, desired_state=None, responsive=None):
        """
        Nodes by name, pageable by name (keyset: ``after_name`` is the last
        name seen), optionally of one ``cluster``, of the ``clusters`` a
        scoped token covers, and of a power state, desired state or
        responsiveness.  Filters apply before ``limit``, in SQL, so a page
        is full whenever more matching rows follow; the indexes of
        migration 0013 serve the cluster and power state filters in name
        order.  One statement (autocommit, one round trip: a read needs no
        BEGIN and COMMIT of its own).  A Deferred.
        """
        return defer.ensureDeferred(self._list(
            cluster, after_name, limit, clusters, power_state, desired_state, responsive))

    async def _list(self, cluster, after_name, limit, clusters, power_state, desired_state,
                    responsive):
        rows = await self._pool.runQuery(
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
        return [plain(dict(zip(_NODE_NAMES, r))) for r in rows]

    def page(self, secrets, after_name="", limit=100, **filters):
        """
        One page of the API's node list as PostgreSQL writes it
        (:mod:`powerctl.region.store.node_page`): ``(json text, more,
        last name, clusters)`` -- the nodes after ``after_name`` by name,
        at most ``limit``, power documents redacted by ``secrets`` (the
        catalogue's ``{driver: secret names}``); ``more``: whether another
        page follows (then ``last name`` is its cursor's key); ``clusters``:
        those of the page's nodes.  ``filters``: ``cluster``, ``clusters``
        (a scoped token's), ``power_state``, ``desired_state``,
        ``responsive``, as :meth:`list` takes them (None: no filter).
        One prepared statement, one round trip, autocommit.  A Deferred.
        """
        unknown = set(filters) - {name for name, _ in node_page.FILTERS}
        if unknown:
            raise TypeError(f"unknown filters: {sorted(unknown)}")
        args = {name: value for name, value in filters.items() if value is not None}
        if "clusters" in args:
            args["clusters"] = sorted(args["clusters"])
        args.update(after=after_name or "", limit=page_limit(limit, 100))
        d = run_prepared(self._pool, self._pages.get(args, secrets), args)
        return d.addCallback(lambda rows: tuple(rows[0]))


    # (Its only caller, the status page, passes limit, open_limit and
    # finished_limit: make mutate's +-1 on their defaults here and in
    # _overview's page_limit calls is equivalent.)
    def overview(self, heartbeat_timeout, cluster=None, name="", problems=False,
                 after_name="", limit=100, open_states=(), open_limit=200,
                 finished_states=(), finished_limit=20, seq=False):
        """
        Everything the status page reads, in one statement (one round trip,
        one snapshot, autocommit) instead of a dozen queries in six
        transactions: ``{"seq", "counts", "clusters", "page", "open",
        "finished"}`` --
        ``seq``: :meth:`EventStore.last_seq <.events.EventStore.last_seq>`
        (None unless asked); ``counts``: per cluster and power state, how
        many nodes, how many not in their desired state, non-responsive and
        drifted (one GROUP BY; :func:`powerctl.region.web.counts_of` is its
        pure reference); ``clusters``: :meth:`ClusterStore.list
        <.clusters.ClusterStore.list>` without ``circuits``, pservs live by
        ``heartbeat_timeout``; ``page``: ``{"nodes", "total", "before",
        "more"}``, one page of the node table filtered as the page's
        parameters say (``name`` contained in the name, ``problems``:
        mismatched, drifted, non-responsive or with an error; ``total``
        rows match, ``before`` of them up to ``after_name``), node rows
        without their power documents (the page never shows them;
        :func:`powerctl.region.web.page_of` is the reference); ``open``: the
        newest ``open_limit`` operations of each of ``open_states``;
        ``finished``: the ``finished_limit`` last finished of
        ``finished_states`` (by ``finished_at``).  Timestamps are ISO 8601
        text as PostgreSQL writes them in JSON.  A Deferred.
        """
        return defer.ensureDeferred(self._overview(
            heartbeat_timeout, cluster, name, problems, after_name, limit, open_states,
            open_limit, finished_states, finished_limit, seq))

    async def _overview(self, heartbeat_timeout, cluster, name, problems, after_name, limit,
                        open_states, open_limit, finished_states, finished_limit, seq):
        for state in (*open_states, *finished_states):
            if state not in OP_STATES:
                raise InvalidInput(f"state: {state!r} is not one of {', '.join(OP_STATES)}")
        limit = page_limit(limit, 100)
        args = {"cluster": cluster, "name": name or "", "problems": bool(problems),
                "after": after_name or "", "limit": limit + 1,
                "hb": float(heartbeat_timeout), "seq": bool(seq),
                "open_limit": page_limit(open_limit, 200),
                "finished_limit": page_limit(finished_limit, 20)}
        for key, states in (("open", open_states), ("finished", finished_states)):
            args.update((f"{key}_{i}", state) for i, state in enumerate(states))
        sql = _OVERVIEW.replace("@OPEN@", _newest("open", len(open_states))).replace(
            "@FINISHED@", _newest("finished", len(finished_states)))
        [(doc,)] = await self._pool.runQuery(sql, args)
        _cluster_status(doc["clusters"])
        rows = doc["page"]["nodes"]
        doc["page"]["nodes"] = rows[:limit]
        doc["page"]["more"] = len(rows) > limit
        return doc

    def fleet(self, heartbeat_timeout):
        """
        What /metrics reads, in one statement: ``{"counts", "clusters",
        "ops"}`` -- ``counts`` and ``clusters`` as :meth:`overview` answers
        them, ``ops`` as :meth:`OperationStore.count_by_state
        <.operations.OperationStore.count_by_state>`.  A Deferred.
        """
        return defer.ensureDeferred(self._fleet(heartbeat_timeout))

    async def _fleet(self, heartbeat_timeout):
        [(doc,)] = await self._pool.runQuery(_FLEET, {"hb": float(heartbeat_timeout)})
        _cluster_status(doc["clusters"])
        return doc

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

    # (Its only caller, rpc.recover, passes limit=PAGE: make mutate's +-1 on
    # either 500 here is equivalent.)
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
    async def changes_cursor(self, tx):
        """
        Where an incremental recovery starting now may resume later: the
        xmin of this transaction's snapshot.  Every change this snapshot
        does not see -- in progress, or not begun -- belongs to a
        transaction whose id is at least that (migration 0014), so
        ``changed_since(cursor)`` misses none; some it saw may come again.
        """
        row = await tx.row("SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin")
        return int(row["xmin"])

    # (Only rpc.recover calls it, with limit=PAGE: make mutate's +-1 on
    # either 500 here is equivalent.)
    @transaction
    async def changed_since(self, tx, cluster, since, after_name="", limit=500, epoch=None):
        """
        A page, by name, of the cluster's nodes whose configuration changed
        in a transaction at or after ``since`` (:meth:`changes_cursor`), as
        :meth:`desired_states` gives them plus ``ours``: whether the lease
        ``epoch`` still drives the node (False: handed over or being handed
        over).  ``power`` is resolved only for nodes that are ours.
        """
        rows = await tx.rows(
            "SELECT n.name AS node, n.desired_state, n.power_state, n.power,"
            " (n.owner_epoch IS NOT DISTINCT FROM %s::bigint AND n.handoff_epoch IS NULL)"
            f" AS ours, {CIRCUIT_SQL} FROM nodes n {CIRCUIT_JOIN}"
            " WHERE n.cluster = %s AND n.name > %s AND n.config_xid >= %s::text::xid8"
            " ORDER BY n.name LIMIT %s",
            (epoch, cluster, after_name or "", str(since),
             page_limit(limit, 500, MAX_INTERNAL_PAGE)))
        ours = [r for r in rows if r["ours"]]
        resolved = await resolve_many(tx, self._catalogue, self._vault,
                                      [r["power"] for r in ours])
        powers = {r["node"]: pe for r, pe in zip(ours, resolved)}
        out = []
        for r in rows:
            power, error = powers.get(r["node"], (None, None))
            r.pop("power")
            out.append(dict(circuit_of(r), power=power, power_error=error))
        return out

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
    async def releasing(self, tx, cluster, epoch, limit):
        """
        Up to ``limit`` names (in name order) of the nodes of ``cluster``
        that ``epoch`` owns and is asked to hand over, not released yet.
        """
        rows = await tx.rows(
            "SELECT name FROM nodes WHERE cluster = %s AND owner_epoch = %s"
            " AND handoff_epoch IS NOT NULL AND NOT handoff_released"
            " ORDER BY name LIMIT %s", (cluster, int(epoch), int(limit)))
        return [r["name"] for r in rows]

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

    @retried_once
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

    @retried_once
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


#: The names of ``NODE_COLUMNS``, in order (rows read with ``runQuery``).
_NODE_NAMES = [c.strip() for c in NODE_COLUMNS.split(",")]
#: The node columns the status page shows (no power document).
_PAGE_COLUMNS = ", ".join(c.strip() for c in NODE_COLUMNS.split(",") if c.strip() != "power")
#: The status page's node filter (:meth:`NodeStore.overview`).
_PAGE_WHERE = ("(%(cluster)s::text IS NULL OR cluster = %(cluster)s)"
               " AND strpos(name, %(name)s) > 0"
               " AND (NOT %(problems)s OR (desired_state IS NOT NULL"
               "   AND desired_state <> power_state) OR drift_since IS NOT NULL"
               "   OR NOT responsive OR last_error IS NOT NULL)")
def _newest(key, count):
    """
    SQL for the newest ``%(<key>_limit)s`` operations of each of ``count``
    states ``%(<key>_0)s``, ``%(<key>_1)s``... (their order as ``i``): one
    ``UNION ALL`` branch per state, so that each state reaches the planner
    as a constant and is read from the (state, id) index -- a lateral join
    over an array of states was planned as one backward walk of the whole
    journal, 18 ms for no open operation among 100,000 finished ones.
    """
    branches = [
        f"(SELECT {i} AS i, o.id, o.finished_at, to_json(o) AS op FROM ("
        f"SELECT {OP_COLUMNS} FROM power_ops WHERE state = %({key}_{i})s"
        f" ORDER BY id DESC LIMIT %({key}_limit)s) o)" for i in range(count)]
    return " UNION ALL ".join(branches) or (
        "SELECT NULL::int AS i, NULL::bigint AS id, NULL::timestamptz AS finished_at,"
        " NULL::json AS op WHERE false")


#: What the status page reads, as one JSON document (:meth:`NodeStore.overview`;
#: @OPEN@ and @FINISHED@ stand for :func:`_newest` of each list of states).
#: Parameters are interpolated by the client, so the planner sees them as
#: constants and drops what a CASE does not need: the counted total comes
#: from the GROUP BY unless a name or problems filter applies, and the
#: rows before ``after`` are counted only when paging.
_FLEET_WITH = (
    "WITH counts AS ("
    " SELECT cluster, power_state, count(*) AS nodes,"
    " count(*) FILTER (WHERE desired_state IS NOT NULL"
    "   AND desired_state <> power_state) AS mismatched,"
    " count(*) FILTER (WHERE NOT responsive) AS nonresponsive,"
    " count(*) FILTER (WHERE drift_since IS NOT NULL) AS drifted"
    " FROM nodes GROUP BY cluster, power_state),"
    " running AS (SELECT n.cluster, count(*) AS n FROM power_ops o"
    f"  JOIN nodes n ON n.name = o.node WHERE o.state = '{OpState.RUNNING.value}'"
    "  GROUP BY n.cluster),"
    " pserv AS (SELECT " + PSERV_COLUMNS + ","
    "  (connected AND last_heartbeat > now() - make_interval(secs => %(hb)s)) AS live"
    "  FROM pservs)")
#: The status page's matching rows counted in one scan (read only when a
#: CASE of :data:`_OVERVIEW` needs it: a CTE is evaluated when first read).
_MATCHING_WITH = (
    ", matching AS (SELECT count(*) AS total,"
    "  count(*) FILTER (WHERE name <= %(after)s) AS before"
    f"  FROM nodes WHERE {_PAGE_WHERE})")
#: The fleet's counts and clusters, as fields of a json_build_object.
_FLEET_FIELDS = (
    " 'counts', (SELECT COALESCE(json_agg(g ORDER BY g.cluster, g.power_state), '[]')"
    "   FROM counts g),"
    " 'clusters', (SELECT COALESCE(json_agg(json_build_object("
    "   'name', c.name, 'created_at', c.created_at, 'drift_policy', c.drift_policy,"
    "   'nodes', (SELECT COALESCE(sum(g.nodes), 0)::bigint FROM counts g"
    "     WHERE g.cluster = c.name),"
    "   'drifted_nodes', (SELECT COALESCE(sum(g.drifted), 0)::bigint FROM counts g"
    "     WHERE g.cluster = c.name),"
    "   'running_ops', COALESCE((SELECT r.n FROM running r WHERE r.cluster = c.name), 0),"
    "   'pservs', (SELECT COALESCE(json_agg(p ORDER BY p.name), '[]') FROM pserv p"
    "     WHERE p.cluster = c.name)) ORDER BY c.name), '[]') FROM clusters c)")
_OVERVIEW = (
    _FLEET_WITH + _MATCHING_WITH + " SELECT json_build_object(" + _FLEET_FIELDS + ","
    " 'seq', CASE WHEN %(seq)s THEN (SELECT COALESCE(max(seq), 0) FROM events) END,"
    " 'page', json_build_object("
    "   'total', CASE WHEN %(name)s = '' AND NOT %(problems)s"
    "     THEN (SELECT COALESCE(sum(g.nodes), 0)::bigint FROM counts g"
    "       WHERE %(cluster)s::text IS NULL OR g.cluster = %(cluster)s)"
    "     ELSE (SELECT total FROM matching) END,"
    "   'before', CASE WHEN %(after)s = '' THEN 0 ELSE (SELECT before FROM matching) END,"
    "   'nodes', (SELECT COALESCE(json_agg(r ORDER BY r.name), '[]') FROM ("
    f"     SELECT {_PAGE_COLUMNS} FROM nodes WHERE {_PAGE_WHERE} AND name > %(after)s"
    "     ORDER BY name LIMIT %(limit)s) r)),"
    " 'open', (SELECT COALESCE(json_agg(x.op ORDER BY x.i, x.id DESC), '[]') FROM ("
    " @OPEN@) x),"
    " 'finished', (SELECT COALESCE(json_agg(x.op ORDER BY x.finished_at DESC NULLS LAST,"
    "   x.id DESC), '[]') FROM (SELECT * FROM (@FINISHED@) u"
    "   ORDER BY u.finished_at DESC NULLS LAST, u.id DESC LIMIT %(finished_limit)s) x))")
#: What /metrics reads, as one JSON document (:meth:`NodeStore.fleet`).
_FLEET = (
    _FLEET_WITH + " SELECT json_build_object(" + _FLEET_FIELDS + ","
    " 'ops', (SELECT COALESCE(json_object_agg(state, n), '{}') FROM ("
    "   SELECT state, count(*) AS n FROM power_ops GROUP BY state) o))")


def _cluster_status(clusters):
    """Each cluster's ``actions_in_flight`` and ``status``, from its pservs (as ``list``)."""
    for c in clusters:
        mine = c["pservs"]
        c["actions_in_flight"] = sum(p["actions_in_flight"] for p in mine if p["connected"])
        c["status"] = "online" if any(p["live"] for p in mine) else "offline"


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
