"""
The power-operation journal: requests, the operations a pserv must run,
and how each ended.

Coordination between several region processes is PostgreSQL's: a power
request locks its node row (``SELECT ... FOR UPDATE``) so concurrent
requests serialise and the last one to commit sets ``desired_state`` (last
writer wins), and announces itself with ``NOTIFY power_ops, '<id>'``, which
PostgreSQL delivers only once the transaction has committed.
"""

import json

import attrs
from twisted.internet import defer

from powerctl.power import OP_STATES, POWER_STATES, TERMINAL_STATES, Action, OpState
from powerctl.region import auditing, bulk, fencing
from powerctl.region.errors import Conflict, FenceRefused, InvalidInput, NotFound, StaleEpoch
from powerctl.region.store.base import (
    MAX_BIGINT, MAX_INTERNAL_PAGE, MAX_PAGE, OP_COLUMNS, OPEN_SQL, KindStore, Prepared,
    check_text, node_row, op_number, op_row, page_limit, plain, run_prepared, timestamp,
    transaction)
from powerctl.region.store.pod_managers import resolve_many
from powerctl.region.store.clusters import CIRCUIT_JOIN, CIRCUIT_SQL, circuit_of
from powerctl.region.store.deadlocks import retried_once
from powerctl.region.store.lockouts import for_nodes as lockouts_for_nodes


_OP_NAMES = [c.strip() for c in OP_COLUMNS.split(",")]
#: A power request that sets a desired state, in one statement: the UPDATE
#: locks the node row (any drift is cleared: a new request decides), the
#: INSERT journals the operation only if the node exists, and the NOTIFY is
#: delivered once the statement's transaction commits.
_REQUEST_CHANGE = f"""
WITH node AS (
    UPDATE nodes SET desired_state = %(target)s, drift_since = NULL,
        drift_observed = NULL, drift_polls = 0
    WHERE name = %(node)s RETURNING name, cluster
), op AS (
    INSERT INTO power_ops (node, action, requester)
    SELECT name, %(action)s, %(requester)s FROM node RETURNING {OP_COLUMNS}
){{audit}}
SELECT {OP_COLUMNS}, pg_notify('power_ops', id::text){{serving}} FROM op{{serving_from}}"""
#: A query request: the node row locked FOR UPDATE, nothing else changed.
_REQUEST_QUERY = f"""
WITH node AS (
    SELECT name, cluster FROM nodes WHERE name = %(node)s FOR UPDATE
), op AS (
    INSERT INTO power_ops (node, action, requester)
    SELECT name, %(action)s, %(requester)s FROM node RETURNING {OP_COLUMNS}
){{audit}}
SELECT {OP_COLUMNS}, pg_notify('power_ops', id::text){{serving}} FROM op{{serving_from}}"""
#: The API request's audit record (issue 10), in the same statement: written
#: only with the operation, and the operation only with it.
_REQUEST_AUDIT = """, audit AS (
    INSERT INTO audit (actor, source, method, path, status, outcome)
    SELECT %(a_actor)s, %(a_source)s, %(a_method)s, %(a_path)s, %(a_status)s, %(a_outcome)s
    FROM op
)"""
#: Who will run it (issue 14: the API's answer says so), read by the same
#: statement rather than by a transaction of its own after it: the node's
#: cluster and its live pservs' names.
_REQUEST_SERVING = (
    ", target.cluster, ARRAY(SELECT p.name FROM pservs p WHERE p.cluster = target.cluster"
    " AND p.connected AND p.last_heartbeat > now() - make_interval(secs => %(live_within)s)"
    " ORDER BY p.name)")
_REQUEST_SERVING_FROM = " CROSS JOIN node AS target"


def _request_statement(change, audit, serving):
    """One of the request statement's eight forms, prepared per connection (issue 14)."""
    sql = (_REQUEST_CHANGE if change else _REQUEST_QUERY).format(
        audit=_REQUEST_AUDIT if audit else "",
        serving=_REQUEST_SERVING if serving else "",
        serving_from=_REQUEST_SERVING_FROM if serving else "")
    name = "powerctl_request_" + "".join(
        flag if on else "x" for flag, on in (("c", change), ("a", audit), ("s", serving)))
    return Prepared(name, sql)


_REQUEST_STATEMENTS = {(change, audit, serving): _request_statement(change, audit, serving)
                       for change in (False, True) for audit in (False, True)
                       for serving in (False, True)}


@attrs.frozen
class Recorded:
    """
    What a report about an operation did: the operation as it now stands
    and whether this report changed it (False: it was already terminal, or
    the report repeated what was recorded).  See the glossary of result
    types in :mod:`powerctl.power`.
    """

    op: dict
    changed: bool


async def journal(tx, node, action, requester):
    """
    Insert one operation and announce it (``NOTIFY power_ops``, delivered
    once the transaction commits); answers its row.
    """
    op = await tx.row(
        f"INSERT INTO power_ops (node, action, requester) VALUES (%s, %s, %s)"
        f" RETURNING {OP_COLUMNS}", (node, action, requester))
    await tx.rows("SELECT pg_notify('power_ops', %s)", (str(op["id"]),))
    return op


async def lock_open(tx, node):
    """Lock the node's open operations until the transaction ends (in id order, as all do)."""
    await tx.rows(f"SELECT id FROM power_ops WHERE node = %s"
                  f" AND state IN {OPEN_SQL} ORDER BY id FOR UPDATE", (node,))


async def cancel_open(tx, node, reason, by, only=None):
    """
    Journal the node's open operations (or those of ``only``) cancelled,
    their rows locked in id order first (the order of every multi-row
    writer of the journal).
    """
    rows = await tx.rows(
        "WITH locked AS MATERIALIZED (SELECT id FROM power_ops"
        f" WHERE node = %(node)s AND state IN {OPEN_SQL}"
        " AND (%(only)s::bigint[] IS NULL OR id = ANY(%(only)s::bigint[]))"
        " ORDER BY id FOR UPDATE)"
        f" UPDATE power_ops o SET state = '{OpState.CANCELLED.value}', finished_at = now(),"
        " error = %(reason)s, cancelled_by = %(by)s"
        f" FROM locked WHERE o.id = locked.id AND o.state IN {OPEN_SQL} RETURNING o.id",
        {"reason": f"{reason} by {by}" if by else reason, "by": by or None,
         "node": node, "only": only})
    return [r["id"] for r in rows]


class OperationStore(KindStore):
    """
    The journal of power operations.

    :param catalogue: the driver catalogue the nodes' power documents are
        resolved with for the pservs.
    """

    def __init__(self, pool, catalogue, vault, fence_reuse_seconds=fencing.DEFAULT_FENCE_REUSE,
                 clock=None):
        super().__init__(pool)
        self._catalogue = catalogue
        self._vault = vault  # opens the secret parameters handed to pservs
        #: a fence within this many seconds of the last one that succeeded
        #: (nothing switched on since) joins it (0: never)
        self.fence_reuse_seconds = fence_reuse_seconds
        self._clock = clock  # seconds() for fence reuse; None: the database's clock

    @transaction
    async def open_of_node(self, tx, name):
        """The node's pending and running operations, oldest first."""
        rows = await tx.rows(
            f"SELECT {OP_COLUMNS} FROM power_ops WHERE node = %s AND state IN {OPEN_SQL}"
            " ORDER BY id", (name,))
        return [plain(r) for r in rows]

    def request(self, node, action, requester=""):
        """
        Journal a power request and set the node's desired state: one SQL
        statement, so one round trip and one transaction (autocommit).  The
        statement locks the node row (the UPDATE of the desired state; FOR
        UPDATE for a query, which sets none), so concurrent requests
        serialise and the last to commit wins; the operation is announced on
        the ``power_ops`` channel once committed.  NotFound if there is no
        such node (nothing written).  A Deferred, as every store method.
        """
        return defer.ensureDeferred(self._request(node, action, requester))

    def request_serving(self, node, action, requester="", live_within=90.0):
        """
        :meth:`request`, answering ``(op, serving)``: ``serving`` is
        ``(cluster, [live pserv name, ...])`` as
        :meth:`~powerctl.region.store.clusters.ClusterStore.serving` would
        answer it (a pserv is live when connected and heard within
        ``live_within`` seconds), read by the request's own statement; None
        for a fence (a transaction of its own: ask ``serving`` after it).
        """
        return defer.ensureDeferred(self._request(node, action, requester, live_within))

    async def _request(self, node, action, requester, live_within=None):
        try:
            action = Action.parse(action)
        except ValueError as e:
            raise InvalidInput(f"action: {e}") from None
        check_text("requester", requester, 255)
        if action is Action.FENCE:
            op = await self._request_fence(node, requester)
            return op if live_within is None else (op, None)
        args = {"node": node, "action": action.value, "requester": requester,
                "target": None if action.target is None else action.target.value,
                "live_within": live_within}
        intent = auditing.current()
        if intent is not None:
            args.update(zip(("a_actor", "a_source", "a_method", "a_path", "a_status",
                             "a_outcome"), intent.values()))
            intent.claimed = True
        statement = _REQUEST_STATEMENTS[
            action.target is not None, intent is not None, live_within is not None]
        try:
            rows = await run_prepared(self._pool, statement, args)
        except BaseException:
            if intent is not None:
                intent.claimed = False
            raise
        if not rows:
            if intent is not None:
                intent.claimed = False  # nothing written: the refusal is recorded on its own
            raise NotFound(f"node {node!r} does not exist")
        if intent is not None:
            intent.written = True
        # (The statement journals one operation of one node: one row, so
        # make mutate's rows[-1] here and below is equivalent.)
        op = plain(dict(zip(_OP_NAMES, rows[0])))
        if live_within is None:
            return op
        cluster, live = rows[0][len(_OP_NAMES) + 1:]  # after pg_notify's column
        return op, (cluster, list(live))

    @transaction
    async def request_many(self, tx, action, nodes=None, cluster=None, requester="",
                           share=bulk.DEFAULT_SHARE, confirm=False, dry_run=False):
        """
        A bulk power request (:mod:`powerctl.region.bulk`): the ``nodes``
        named, or every node of ``cluster``, one operation each, journalled
        in this one transaction with their desired states (rows locked in
        name order, so two bulk requests cannot deadlock).  A guarded action
        over more than ``share`` of a cluster raises Conflict unless
        ``confirm``.  ``dry_run`` writes nothing.  Answers ``(plan, ops)``:
        the :class:`~powerctl.region.bulk.Plan` and the operations journalled
        (by id; none for a dry run).
        """
        try:
            action = Action.parse(action)
        except ValueError as e:
            raise InvalidInput(f"action: {e}") from None
        check_text("requester", requester, 255)
        if action is Action.FENCE:
            # A fence is checked (can a level verify it?) and may join the
            # node's last one: node by node, POST /v1/nodes/<n>/power.
            raise InvalidInput("action: fence is requested node by node, not in bulk")
        lock = "" if dry_run else " FOR UPDATE"
        if nodes is not None:
            rows = await tx.rows(
                "SELECT name, cluster, power_state, desired_state FROM nodes"
                f" WHERE name = ANY(%s::text[]) ORDER BY name{lock}", (list(nodes),))
            missing = sorted(set(nodes) - {r["name"] for r in rows})
            if missing:
                raise NotFound(f"node {missing[0]!r} does not exist"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        else:
            if await tx.row("SELECT 1 FROM clusters WHERE name = %s", (cluster,)) is None:
                raise NotFound(f"cluster {cluster!r} does not exist")
            rows = await tx.rows(
                "SELECT name, cluster, power_state, desired_state FROM nodes"
                f" WHERE cluster = %s ORDER BY name{lock}", (cluster,))
        totals = dict((r["cluster"], r["n"]) for r in await tx.rows(
            "SELECT cluster, count(*) AS n FROM nodes WHERE cluster = ANY(%s::text[])"
            " GROUP BY cluster", (sorted({r["cluster"] for r in rows}),)))
        plan = bulk.plan(action, rows, totals, share)
        if plan.needs_confirm and not confirm and not dry_run:
            raise Conflict(plan.refusal())
        if dry_run or not rows:
            return plan, []
        names = [r["name"] for r in rows]
        if action.target is not None:  # a new request: any drift is cleared
            await tx.rows(
                "UPDATE nodes SET desired_state = %s, drift_since = NULL,"
                " drift_observed = NULL, drift_polls = 0 WHERE name = ANY(%s::text[])",
                (action.target.value, names))
        ops = await tx.rows(
            "INSERT INTO power_ops (node, action, requester)"
            " SELECT t.node, %s, %s FROM unnest(%s::text[]) WITH ORDINALITY AS t(node, i)"
            f" ORDER BY t.i RETURNING {OP_COLUMNS}", (action.value, requester, names))
        ops.sort(key=lambda o: o["id"])
        await tx.rows("SELECT pg_notify('power_ops', id::text) FROM unnest(%s::bigint[]) AS id",
                      ([o["id"] for o in ops],))
        return plan, [plain(o) for o in ops]

    @transaction
    async def _request_fence(self, tx, node, requester):
        """
        A fence request: refused when no level of the node can verify it
        (:class:`FenceRefused`, nothing written), joined to the node's last
        fence when that one can be reused, journalled otherwise -- under
        the node's row lock, in one transaction (several statements: fences
        are rare, and their checks read the node's power document).
        """
        row = await node_row(tx, node, lock=True)
        reason = fencing.fence_refusal(row["power"], self._catalogue)
        if reason is not None:
            raise FenceRefused(f"fence of {node} refused: {reason}")
        await tx.rows(
            "UPDATE nodes SET desired_state = %s, drift_since = NULL,"
            " drift_observed = NULL, drift_polls = 0 WHERE name = %s",
            (Action.FENCE.target.value, node))
        joined = await self._reusable_fence(tx, row, requester)
        if joined is not None:
            return plain(joined)
        return plain(await journal(tx, node, Action.FENCE.value, requester))

    async def _reusable_fence(self, tx, node, requester):
        """
        Journal a fence coalesced into the node's last one, if that one can
        be reused (:func:`powerctl.region.fencing.reusable_fence`); the new
        operation is already succeeded and names the one it joined; it is
        not announced (there is nothing to dispatch).
        """
        if not self.fence_reuse_seconds:
            return None
        last = await tx.row(
            "SELECT id, observed_state, agent, detail, extract(epoch FROM finished_at) AS at,"
            " EXISTS (SELECT 1 FROM power_ops s WHERE s.node = f.node AND s.id > f.id"
            "   AND s.action IN %s) AS switched_on,"
            " extract(epoch FROM now()) AS now"
            " FROM power_ops f WHERE f.node = %s AND f.action = 'fence'"
            " AND f.state = 'succeeded' AND f.coalesced_into IS NULL ORDER BY f.id DESC LIMIT 1",
            (fencing.SWITCHING_ON, node["name"]))
        if last is None:
            return None
        record = fencing.FenceRecord(
            last["id"], float(last["at"]) if last["at"] is not None else None,
            bool(last["switched_on"]) or node.get("power_state") == "on")
        now = self._clock.seconds() if self._clock is not None else float(last["now"])
        into = fencing.reusable_fence(record, now, self.fence_reuse_seconds)
        if into is None:
            return None
        detail = dict(last["detail"] or {}, coalesced_fence=into)
        return await tx.row(
            "INSERT INTO power_ops (node, action, requester, state, coalesced_into,"
            " observed_state, agent, detail, started_at, finished_at)"
            " VALUES (%s, 'fence', %s, 'succeeded', %s, %s, %s, %s::jsonb, now(), now())"
            f" RETURNING {OP_COLUMNS}",
            (node["name"], requester, into, last["observed_state"], last["agent"],
             json.dumps(detail)))

    @transaction
    async def get(self, tx, op_id):
        """One operation of the journal; NotFound if there is none."""
        return plain(await op_row(tx, op_id))

    @transaction
    async def count_by_state(self, tx):
        """``{state: count}`` over the whole journal (for /metrics)."""
        rows = await tx.rows("SELECT state, count(*) AS n FROM power_ops GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    @transaction
    async def list(self, tx, node=None, state=None, limit=100, before_id=None, cluster=None,
                   clusters=None):
        """
        The journal, newest first, filtered by node, state, the node's
        ``cluster`` and/or the ``clusters`` a scoped token covers (in SQL,
        before the limit: operations of a deleted node match no cluster).
        Page on with ``before_id`` = the last id seen.
        """
        if state is not None and state not in OP_STATES:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(OP_STATES)}")
        before = MAX_BIGINT if before_id is None else op_number(before_id)
        scoped = cluster is not None or clusters is not None
        rows = await tx.rows(
            f"SELECT {OP_COLUMNS} FROM power_ops o WHERE (%(node)s::text IS NULL OR node = %(node)s)"
            " AND (%(state)s::text IS NULL OR state = %(state)s) AND id < %(before)s"
            + (" AND EXISTS (SELECT 1 FROM nodes n WHERE n.name = o.node"
               "  AND (%(cluster)s::text IS NULL OR n.cluster = %(cluster)s)"
               "  AND (%(clusters)s::text[] IS NULL OR n.cluster = ANY(%(clusters)s::text[])))"
               if scoped else "")
            + " ORDER BY id DESC LIMIT %(limit)s",
            {"node": node, "state": state, "before": before,
             "limit": page_limit(limit, 100, MAX_PAGE + 1), "cluster": cluster,
             "clusters": None if clusters is None else sorted(clusters)})
        return [plain(r) for r in rows]

    @transaction
    async def newest_by_state(self, tx, states, limit):
        """
        The newest ``limit`` operations of each of ``states``, state by state
        in the order given, newest first within one: one query (an index
        range per state), for the status page's panels.
        """
        for state in states:
            if state not in OP_STATES:
                raise InvalidInput(f"state: {state!r} is not one of {', '.join(OP_STATES)}")
        columns = ", ".join("o." + c for c in _OP_NAMES)
        rows = await tx.rows(
            f"SELECT {columns} FROM unnest(%s::text[]) WITH ORDINALITY AS s(state, i)"
            f" CROSS JOIN LATERAL (SELECT {OP_COLUMNS} FROM power_ops p"
            "   WHERE p.state = s.state ORDER BY p.id DESC LIMIT %s) o"
            " ORDER BY s.i, o.id DESC",
            (list(states), page_limit(limit, 100, MAX_PAGE)))
        return [plain(r) for r in rows]

    # -- for the AMP side -----------------------------------------------

    # (Its only caller, rpc.recover, passes limit=PAGE: make mutate's +-1 on
    # either 500 here is equivalent.)
    @transaction
    async def outstanding(self, tx, cluster, after_id=0, limit=500, epoch=None):
        """
        A page of the cluster's non-terminal operations, oldest first, each
        with ``power``: its node's resolved configuration (``None`` plus
        ``power_error`` if it no longer resolves).  Page on with
        ``after_id`` = the last id seen.  With ``epoch``, only those of the
        nodes that lease owns (and is not handing over).
        """
        rows = await tx.rows(
            f"SELECT {', '.join('o.' + c.strip() for c in OP_COLUMNS.split(','))},"
            f" n.power AS node_power, {CIRCUIT_SQL}"
            f" FROM power_ops o JOIN nodes n ON n.name = o.node {CIRCUIT_JOIN}"
            f" WHERE n.cluster = %s AND o.state IN {OPEN_SQL} AND o.id > %s"
            " AND (%s::bigint IS NULL OR (n.owner_epoch = %s AND n.handoff_epoch IS NULL))"
            " ORDER BY o.id LIMIT %s",
            (cluster, int(after_id or 0), epoch, epoch,
             page_limit(limit, 500, MAX_INTERNAL_PAGE)))
        resolved = await resolve_many(tx, self._catalogue, self._vault,
                                      [r.pop("node_power") for r in rows])
        return [plain(dict(circuit_of(r), power=p, power_error=e))
                for r, (p, e) in zip(rows, resolved)]

    @transaction
    async def pending(self, tx, ids):
        """The operations of ``ids`` still pending, oldest first (what a batch of NOTIFYs names)."""
        numbers = []
        for value in ids:
            try:
                numbers.append(op_number(value))
            except NotFound:
                pass
        if not numbers:
            return []
        rows = await tx.rows(
            f"SELECT {OP_COLUMNS} FROM power_ops WHERE id = ANY(%s::bigint[])"
            f" AND state = '{OpState.PENDING.value}' ORDER BY id", (numbers,))
        return [plain(r) for r in rows]

    @transaction
    async def dispatch_view(self, tx, names):
        """
        What dispatching operations of ``names`` needs, for every node at
        once (issue 14: one transaction for a bulk request, not four reads
        per operation): ``{name: {"cluster", "owner_epoch",
        "handoff_epoch", "power", "power_error", "circuit", "lockouts"}}``
        -- ``power`` resolved as :meth:`outstanding` resolves it (None plus
        ``power_error`` when it no longer does), ``lockouts`` as
        ``Recover`` lists them.  Nodes that do not exist are absent.
        """
        if not names:
            return {}
        rows = await tx.rows(
            "SELECT n.name, n.cluster, n.owner_epoch, n.handoff_epoch, n.power,"
            f" {CIRCUIT_SQL} FROM nodes n {CIRCUIT_JOIN} WHERE n.name = ANY(%s::text[])",
            (sorted(set(names)),))
        resolved = await resolve_many(tx, self._catalogue, self._vault,
                                      [r.pop("power") for r in rows])
        locked = await lockouts_for_nodes(tx, [r["name"] for r in rows])
        return {r["name"]: dict(circuit_of(r), power=p, power_error=e,
                                lockouts=locked.get(r["name"], []))
                for r, (p, e) in zip(rows, resolved)}

    @transaction
    async def mark_running(self, tx, op_id, pserv, started_at=None, epoch=None):
        """
        Record that ``pserv`` started an operation.  A terminal operation is
        left alone; a running one handed to another pserv (re-dispatch
        after a pserv died) records the new pserv.
        """
        check_text("pserv", pserv, 255)
        op = await op_row(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES or (op["state"] == OpState.RUNNING and op["pserv"] == pserv):
            return Recorded(plain(op), False)
        op = await tx.row(
            f"UPDATE power_ops SET state = '{OpState.RUNNING.value}', pserv = %s, epoch = %s,"
            f" started_at = COALESCE(%s, now()) WHERE id = %s RETURNING {OP_COLUMNS}",
            (pserv, epoch, timestamp(started_at), op["id"]))
        return Recorded(plain(op), True)

    @retried_once
    @transaction
    async def mark_running_many(self, tx, op_ids, pserv, epoch):
        """
        ``pserv`` took these operations in a ``Recover`` page under ``epoch``:
        the journal says they run there (terminal ones are left alone).

        The rows are locked in id order first, the order :meth:`end_many`
        (a batch of the same pserv's outcomes, maybe about these very
        operations) takes: a bare ``UPDATE ... WHERE id = ANY`` locks them
        in the order its plan visits them (heap order for a bitmap scan),
        which could deadlock with it.
        """
        check_text("pserv", pserv, 255)
        await tx.rows(
            "WITH locked AS MATERIALIZED (SELECT id FROM power_ops"
            f" WHERE id = ANY(%(ids)s::bigint[]) AND state IN {OPEN_SQL}"
            " AND (pserv IS DISTINCT FROM %(pserv)s OR epoch IS DISTINCT FROM %(epoch)s)"
            " ORDER BY id FOR UPDATE)"
            f" UPDATE power_ops o SET state = '{OpState.RUNNING.value}', pserv = %(pserv)s,"
            " epoch = %(epoch)s, started_at = COALESCE(o.started_at, now())"
            f" FROM locked WHERE o.id = locked.id AND o.state IN {OPEN_SQL}",
            {"ids": sorted(int(i) for i in op_ids), "pserv": pserv, "epoch": epoch})

    async def _check_reference(self, tx, field, value, op_id):
        """An op id that ``coalesced_into``/``superseded_by`` may point at."""
        if value is None:
            return None
        try:
            other = op_number(value)
            await op_row(tx, other)
        except NotFound:
            raise InvalidInput(f"{field}: power operation {value!r} does not exist") from None
        if other == op_id:
            raise InvalidInput(f"{field}: an operation cannot point at itself")
        return other

    @transaction
    async def record_outcome(self, tx, op_id, state, **kwargs):
        """How an operation ended, in its own transaction: see :meth:`end`."""
        return await self.end(tx, op_id, state, **kwargs)

    async def end(self, tx, op_id, state, observed_state=None, agent=None,
                  error=None, coalesced_into=None, superseded_by=None,
                  pserv=None, cancelled_by=None, epoch=None, detail=None):
        """
        Inside ``tx``: record how an operation ended (terminal states only).  Idempotent:
        a report for an operation already terminal changes nothing and
        answers ``Recorded(op, changed=False)``.  With ``epoch`` (a pserv's
        report), only the current owner of the node may end it:
        :class:`StaleEpoch` otherwise, and nothing is written.  ``detail``
        (a JSON object or None): what the topology said beside the state
        (acting level, devices and their states, a warning).
        """
        if detail is not None and not isinstance(detail, dict):
            raise InvalidInput("detail: must be an object")
        if state not in TERMINAL_STATES:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(TERMINAL_STATES)}")
        if observed_state is not None and observed_state not in POWER_STATES:
            raise InvalidInput(f"observed_state: {observed_state!r} is not one of "
                               + ", ".join(POWER_STATES))
        for field, value in (("agent", agent), ("error", error), ("pserv", pserv),
                             ("cancelled_by", cancelled_by)):
            if value is not None:
                check_text(field, value)
        op = await op_row(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES:
            return Recorded(plain(op), False)
        if epoch is not None:
            owner = await tx.row("SELECT owner_epoch FROM nodes WHERE name = %s FOR SHARE",
                                 (op["node"],))
            if owner is not None and owner["owner_epoch"] != epoch:
                raise StaleEpoch(
                    f"epoch {epoch} does not own node {op['node']} (its owner's epoch is "
                    f"{owner['owner_epoch']}): the outcome of operation {op['id']} is refused")
        coalesced_into = await self._check_reference(tx, "coalesced_into", coalesced_into, op["id"])
        superseded_by = await self._check_reference(tx, "superseded_by", superseded_by, op["id"])
        op = await tx.row(
            f"UPDATE power_ops SET state = %s, observed_state = %s, agent = %s, error = %s,"
            f" coalesced_into = %s, superseded_by = %s, pserv = COALESCE(%s, pserv),"
            f" cancelled_by = COALESCE(%s, cancelled_by), finished_at = now(),"
            f" detail = %s::jsonb WHERE id = %s RETURNING {OP_COLUMNS}",
            (state, observed_state, agent, error, coalesced_into, superseded_by, pserv,
             cancelled_by, json.dumps(detail) if detail is not None else None, op["id"]))
        return Recorded(plain(op), True)

    async def end_many(self, tx, reports):
        """
        Inside ``tx``: :meth:`end` for a batch of a pserv's reports (each a
        dict of :meth:`end`'s arguments, ``op_id`` and ``state`` included),
        with one read of the operations and their nodes' owners, one of
        the operations they point at and one write for the whole batch
        (issue 14).  Each report is judged as :meth:`end` judges it, in
        order (a second report of one operation finds it terminal); a
        report it refuses is answered with the exception :meth:`end` would
        raise, and costs the others nothing.  Answers one
        :class:`Recorded` or exception per report, in order.  The caller
        locks the nodes first (the order every writer of both takes).
        """
        results = [None] * len(reports)
        ids = {}
        for index, report in enumerate(reports):
            try:
                ids[index] = self._check_end(report)
            except (InvalidInput, NotFound) as e:
                results[index] = e
        rows = {r["id"]: r for r in await tx.rows(
            f"SELECT {', '.join('o.' + c for c in _OP_NAMES)}, n.owner_epoch AS node_owner,"
            " n.name IS NOT NULL AS node_exists"
            " FROM power_ops o LEFT JOIN nodes n ON n.name = o.node"
            " WHERE o.id = ANY(%s::bigint[]) ORDER BY o.id FOR UPDATE OF o",
            (sorted(set(ids.values())),))} if ids else {}
        references = set()
        for index, op_id in ids.items():
            for field in ("coalesced_into", "superseded_by"):
                value = reports[index].get(field)
                if value is not None:
                    try:
                        references.add(op_number(value))
                    except NotFound:
                        pass
        existing = {r["id"] for r in await tx.rows(
            "SELECT id FROM power_ops WHERE id = ANY(%s::bigint[])",
            (sorted(references),))} if references else set()
        updates = {}  # op id -> (index, the columns it ends with)
        for index, op_id in ids.items():
            report = reports[index]
            row = rows.get(op_id)
            if row is None:
                results[index] = NotFound(f"power operation {report['op_id']!r} does not exist")
                continue
            if row["state"] in TERMINAL_STATES or op_id in updates:
                results[index] = ("unchanged", op_id)
                continue
            epoch = report.get("epoch")
            if epoch is not None and row["node_exists"] and row["node_owner"] != epoch:
                results[index] = StaleEpoch(
                    f"epoch {epoch} does not own node {row['node']} (its owner's epoch is "
                    f"{row['node_owner']}): the outcome of operation {op_id} is refused")
                continue
            try:
                pointed = {f: self._reference(f, report.get(f), op_id, existing)
                           for f in ("coalesced_into", "superseded_by")}
            except InvalidInput as e:
                results[index] = e
                continue
            updates[op_id] = (index, dict(report, **pointed))
        written = {}
        if updates:
            columns = list(zip(*[
                (op_id, u["state"], u.get("observed_state"), u.get("agent"), u.get("error"),
                 u["coalesced_into"], u["superseded_by"], u.get("pserv"),
                 json.dumps(u["detail"]) if u.get("detail") is not None else None)
                for op_id, (_, u) in sorted(updates.items())]))
            returned = ", ".join("o." + c for c in _OP_NAMES)
            written = {r["id"]: r for r in await tx.rows(
                "UPDATE power_ops o SET state = u.state, observed_state = u.observed,"
                " agent = u.agent, error = u.error, coalesced_into = u.coalesced,"
                " superseded_by = u.superseded, pserv = COALESCE(u.pserv, o.pserv),"
                " finished_at = now(), detail = u.detail::jsonb"
                " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],"
                "  %s::bigint[], %s::bigint[], %s::text[], %s::text[])"
                "  AS u(id, state, observed, agent, error, coalesced, superseded, pserv, detail)"
                f" WHERE o.id = u.id RETURNING {returned}", tuple(list(c) for c in columns))}
        for index, result in enumerate(results):
            if isinstance(result, tuple):  # already terminal: the row as it stands
                row = written.get(result[1]) or {
                    k: v for k, v in rows[result[1]].items() if k in _OP_NAMES}
                results[index] = Recorded(plain(row), False)
        for op_id, (index, _) in updates.items():
            results[index] = Recorded(plain(written[op_id]), True)
        return results

    @staticmethod
    def _check_end(report):
        """What :meth:`end` checks before it reads anything; the operation's id."""
        detail = report.get("detail")
        if detail is not None and not isinstance(detail, dict):
            raise InvalidInput("detail: must be an object")
        state = report.get("state")
        if state not in TERMINAL_STATES:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(TERMINAL_STATES)}")
        observed = report.get("observed_state")
        if observed is not None and observed not in POWER_STATES:
            raise InvalidInput(f"observed_state: {observed!r} is not one of "
                               + ", ".join(POWER_STATES))
        for field in ("agent", "error", "pserv"):
            if report.get(field) is not None:
                check_text(field, report[field])
        if report.get("cancelled_by") is not None:
            raise InvalidInput("cancelled_by: an operator's, never in a pserv's report")
        return op_number(report.get("op_id"))

    @staticmethod
    def _reference(field, value, op_id, existing):
        """As :meth:`_check_reference`, against the ids ``existing`` read for the batch."""
        if value is None:
            return None
        try:
            other = op_number(value)
        except NotFound:
            other = None
        if other is None or other not in existing:
            raise InvalidInput(f"{field}: power operation {value!r} does not exist")
        if other == op_id:
            raise InvalidInput(f"{field}: an operation cannot point at itself")
        return other

    @transaction
    async def mark_operator(self, tx, op_id, field, by, ended_ok=False):
        """
        Attribute an operator's cancel (``cancelled_by``) or confirmation
        (``confirmed_by``) to an open operation before it is carried out
        (``by=None`` takes the attribution back when it could not be).
        Conflict when the operation already ended, unless ``ended_ok``;
        answers the operation.
        """
        if field not in ("cancelled_by", "confirmed_by"):
            raise InvalidInput(f"field: {field!r} cannot be marked")
        if by is not None:
            check_text(field, by, 255)
        op = await op_row(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES and not ended_ok:
            raise Conflict(f"power operation {op['id']} already ended {op['state']}")
        row = await tx.row(
            f"UPDATE power_ops SET {field} = %s WHERE id = %s RETURNING {OP_COLUMNS}",
            (by, op["id"]))
        return plain(row)

    @transaction
    async def prune(self, tx, keep_days, limit=10_000):
        """
        Delete up to ``limit`` ended operations that finished more than
        ``keep_days`` days ago, oldest first; answers how many.  Open
        operations are never pruned, whatever their age; references to a
        pruned operation (``coalesced_into``, ``superseded_by``) become
        null.  Bounded per call so that one round never holds a long
        transaction over a large journal.
        """
        if not (isinstance(keep_days, (int, float)) and keep_days > 0):
            raise InvalidInput(f"keep_days: must be a positive number, got {keep_days!r}")
        terminal = ", ".join(f"'{s}'" for s in TERMINAL_STATES)
        rows = await tx.rows(
            "DELETE FROM power_ops WHERE id IN (SELECT id FROM power_ops"
            f" WHERE state IN ({terminal})"
            "   AND finished_at < now() - %s * interval '1 day' ORDER BY id LIMIT %s)"
            " RETURNING id", (float(keep_days), int(limit)))
        return len(rows)

