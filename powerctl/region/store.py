"""
The region's data layer: nodes, the power-operation journal, pod managers,
clusters and pservs in PostgreSQL, through txpostgres.

Every public method runs in one transaction and returns a Deferred.  Rows
come back as plain dicts (ISO 8601 timestamps, uuids as text) so that the
REST API and the AMP side can pass them on without knowing psycopg2.

Coordination between several region processes is PostgreSQL's: a power
request locks its node row (``SELECT ... FOR UPDATE``) so concurrent
requests serialise and the last one to commit sets ``desired_state`` (last
writer wins), and announces itself with ``NOTIFY power_ops, '<id>'``, which
PostgreSQL delivers only once the transaction has committed.

Failures a caller can act on are :mod:`powerctl.region.errors`
(``NotFound``, ``Conflict``, ``InvalidInput``); a refused power
configuration is an ``InvalidPowerConfig``, a kind of ``InvalidInput``.
Passwords are never returned: pod managers show ``password_set``; node
power documents are returned as stored and must be passed through
:func:`powerctl.region.powerconfig.redact` before they are shown.
"""

import datetime
import functools
import re
import uuid as uuidlib

import attrs
import psycopg2.errors
from psycopg2.extras import Json
from twisted.internet import defer

from powerctl.power import Action, PowerState
from powerctl.region import drift, powerconfig
from powerctl.region.errors import Conflict, InvalidInput, NotFound, StaleEpoch

OP_STATES = ("pending", "running", "succeeded", "failed", "superseded", "cancelled")
OPEN_STATES = ("pending", "running")
TERMINAL_STATES = ("succeeded", "failed", "superseded", "cancelled")
POWER_STATES = tuple(s.value for s in PowerState)
POD_MANAGER_STATUSES = ("online", "offline")
MAX_PAGE = 1000  # for pages users ask for (the journal)
MAX_INTERNAL_PAGE = 100_000  # for the region's own recovery/re-dispatch reads
_MAX_BIGINT = 2**63 - 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$")

_NODE = """name, cluster, power, desired_state, power_state, responsive,
    failed_polls, last_error, last_queried_at, last_changed_at,
    last_good_poll_at, created_at, updated_at, drift_since, drift_observed,
    drift_polls"""
_OP = """id, node, action, state, coalesced_into, superseded_by, requester,
    requested_at, started_at, finished_at, pserv, agent, observed_state, error,
    cancelled_by, confirmed_by, epoch"""
_POD_MANAGER = """uuid::text AS uuid, name, driver, username,
    password <> '' AS password_set, url, status, description, created_at,
    updated_at"""
_PSERV = """name, cluster, version, region, connected, connected_at,
    last_heartbeat, actions_in_flight"""


@attrs.frozen
class Recorded:
    """
    What a report about an operation did: the operation as it now stands
    and whether this report changed it (False: it was already terminal, or
    the report repeated what was recorded).
    """

    op: dict
    changed: bool


def _plain(row):
    """A row with datetimes as ISO text and uuids as text: JSON- and AMP-ready."""
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime.datetime):
            value = value.isoformat()
        elif isinstance(value, uuidlib.UUID):
            value = str(value)
        out[key] = value
    return out


class _Tx:
    """A txpostgres cursor inside one transaction, answering dict rows."""

    def __init__(self, cursor):
        self._cursor = cursor

    async def rows(self, sql, args=None):
        await self._cursor.execute(sql, args)
        if self._cursor.description is None:
            return []
        columns = [c.name for c in self._cursor.description]
        return [dict(zip(columns, r)) for r in self._cursor.fetchall()]

    async def row(self, sql, args=None):
        rows = await self.rows(sql, args)
        return rows[0] if rows else None


def _transaction(method):
    """
    Run ``method(self, tx, ...)`` in one transaction on a pooled
    connection: committed if it returns, rolled back if it raises, so a
    refused input never leaves half a change behind.
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        def interaction(cursor):
            return defer.ensureDeferred(method(self, _Tx(cursor), *args, **kwargs))

        return self._pool.runInteraction(interaction)

    return run


def _name(field, value):
    """Refuse names that would not survive a URL path, a shell or a table."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInput(
            f"{field}: {value!r} is not a valid name (1-253 letters, digits, "
            "'.', '_', '-', ':', '@'; starting with a letter or digit)")
    return value


def _text(field, value, limit=4096):
    """A string field, bounded so one request cannot fill the database."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string")
    if len(value) > limit:
        raise InvalidInput(f"{field}: longer than {limit} characters")
    return value


def _limit(value, default, maximum=MAX_PAGE):
    """A page size between 1 and ``maximum``: no request reads a whole table by mistake."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit: must be an integer from 1 to {maximum}")
    return value


def _op_id(value):
    """An operation id as an int; anything else cannot name an operation."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"power operation {value!r} does not exist") from None
    if isinstance(value, bool) or not 1 <= number <= _MAX_BIGINT:
        raise NotFound(f"power operation {value!r} does not exist")
    return number


def _pm_uuid(value):
    """A pod manager uuid as canonical text; anything else names nothing."""
    try:
        return powerconfig.pod_manager_uuid(value)
    except ValueError:
        raise NotFound(f"pod manager {value!r} does not exist") from None


def _timestamp(value):
    """None (now), a datetime, an ISO 8601 string or epoch seconds, as a datetime."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"started_at: {value!r} is not a time") from None


def _fields(fields, allowed, what):
    """Refuse an update naming a field that cannot be changed."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{what}: unknown or read-only field {unknown[0]!r}; "
            f"can change {', '.join(allowed)}")


class Store:
    """
    The region's state in PostgreSQL.

    :param pool: a started txpostgres ``ConnectionPool`` (a ``Connection``
        works too, but then every request waits for the one before it).
    :param catalogue: the :class:`~powerctl.drivers.catalogue.DriverCatalogue`
        that power configurations are validated against.
    :param responsive_grace: seconds since a node's last good poll before
        failed polls may make it non-responsive.
    :param failed_polls_limit: a node becomes non-responsive only after
        *more than* this many consecutive failed polls.
    :param heartbeat_timeout: a connected pserv whose last heartbeat is
        older than this many seconds is not live.
    """

    def __init__(self, pool, catalogue, *, responsive_grace=60.0,
                 failed_polls_limit=2, heartbeat_timeout=90.0, vault):
        self._pool = pool
        self._catalogue = catalogue
        self._vault = vault  # issue 10: secrets sealed at rest (powerctl.region.vault)
        self.responsive_grace = float(responsive_grace)
        self.failed_polls_limit = int(failed_polls_limit)
        self.heartbeat_timeout = float(heartbeat_timeout)

    # -- power configurations -------------------------------------------

    async def _pod_managers(self, tx, uuids, lock=False):
        """Pod manager records (with credentials) by uuid, for validation."""
        if not uuids:
            return {}
        rows = await tx.rows(
            "SELECT uuid::text AS uuid, name, driver, url, username, password"
            " FROM pod_managers WHERE uuid = ANY(%s::uuid[])"
            + (" FOR SHARE" if lock else ""),
            (list(uuids),))
        return {r["uuid"]: dict(r, password=self._vault.open(r["password"])) for r in rows}

    async def _validated_power(self, tx, power, previous):
        """
        The normalised power document, with ``"(set)"`` secrets taken from
        ``previous`` and the pod managers it names locked against deletion
        until the transaction ends.
        """
        sealed_previous, previous = previous, self._vault.open_power(previous)
        power = powerconfig.restore_secrets(power, previous, self._catalogue)
        pods = await self._pod_managers(
            tx, powerconfig.referenced_pod_managers(power), lock=True)
        power = powerconfig.validate_power(power, self._catalogue, pods)
        return self._vault.seal_power(power, sealed_previous, self._catalogue)

    async def _link_pod_managers(self, tx, node, power):
        """Keep node_pod_managers equal to what ``power`` references."""
        await tx.rows("DELETE FROM node_pod_managers WHERE node = %s", (node,))
        uuids = powerconfig.referenced_pod_managers(power)
        if uuids:
            await tx.rows(
                "INSERT INTO node_pod_managers (node, pod_manager)"
                " SELECT %s, unnest(%s::uuid[])", (node, uuids))

    async def _resolve_many(self, tx, documents):
        """
        Resolve stored power documents for pservs, fetching every pod
        manager they name in one query.  Returns ``(power, error)`` pairs:
        a document that no longer resolves (a driver removed by an upgrade)
        gets ``None`` and the reason, so one bad node does not block the
        recovery of a whole cluster.
        """
        uuids = set()
        for power in documents:
            uuids.update(powerconfig.referenced_pod_managers(power))
        pods = await self._pod_managers(tx, sorted(uuids))
        results = []
        for power in documents:
            try:
                results.append((powerconfig.resolve_power(
                    self._vault.open_power(power), self._catalogue, pods), None))
            except InvalidInput as e:
                results.append((None, str(e)))
        return results

    # -- nodes ----------------------------------------------------------

    async def _node(self, tx, name, lock=False):
        row = await tx.row(
            f"SELECT {_NODE} FROM nodes WHERE name = %s" + (" FOR UPDATE" if lock else ""),
            (name,))
        if row is None:
            raise NotFound(f"node {name!r} does not exist")
        return row

    async def _ensure_cluster(self, tx, cluster):
        await tx.rows(
            "INSERT INTO clusters (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
            (cluster,))

    @_transaction
    async def create_node(self, tx, name, cluster, power):
        """Add a node (and its cluster, if new). Conflict if the name is taken."""
        _name("name", name)
        _name("cluster", cluster)
        power = await self._validated_power(tx, power, None)
        await self._ensure_cluster(tx, cluster)
        row = await tx.row(
            f"INSERT INTO nodes (name, cluster, power) VALUES (%s, %s, %s)"
            f" ON CONFLICT (name) DO NOTHING RETURNING {_NODE}",
            (name, cluster, Json(power)))
        if row is None:
            raise Conflict(f"node {name!r} already exists")
        await self._link_pod_managers(tx, name, power)
        return _plain(row)

    @_transaction
    async def get_node(self, tx, name):
        """One node; NotFound if there is none of that name."""
        return _plain(await self._node(tx, name))

    @_transaction
    async def list_nodes(self, tx, cluster=None, after_name="", limit=None):
        """Nodes by name, optionally of one cluster; pageable by name."""
        rows = await tx.rows(
            f"SELECT {_NODE} FROM nodes WHERE (%(cluster)s::text IS NULL"
            " OR cluster = %(cluster)s) AND name > %(after)s ORDER BY name"
            " LIMIT %(limit)s",
            {"cluster": cluster, "after": after_name or "", "limit": limit})
        return [_plain(r) for r in rows]

    @_transaction
    async def update_node(self, tx, name, quiesce=None, by=None, **fields):
        """
        Change a node's ``cluster`` and/or ``power``.  Secrets given as
        ``"(set)"`` keep their stored value.

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
        _fields(fields, ("cluster", "power"), "node")
        node = await self._node(tx, name, lock=True)
        cluster = _name("cluster", fields.get("cluster", node["cluster"]))
        power = node["power"]
        if "power" in fields:
            power = await self._validated_power(tx, fields["power"], node["power"])
        relevant = cluster != node["cluster"] or power != node["power"]
        if relevant and quiesce is not None:
            await self._quiesce(tx, node, quiesce, f"node {name} reconfigured", by)
        await self._ensure_cluster(tx, cluster)
        # Another cluster: its pservs, not the old owner, will drive it.
        row = await tx.row(
            f"UPDATE nodes SET cluster = %s, power = %s, updated_at = now(),"
            f" owner_epoch = CASE WHEN cluster = %s THEN owner_epoch END,"
            f" handoff_epoch = CASE WHEN cluster = %s THEN handoff_epoch END"
            f" WHERE name = %s RETURNING {_NODE}",
            (cluster, Json(power), cluster, cluster, name))
        await self._link_pod_managers(tx, name, power)
        return dict(_plain(row), changed_for_pserv=relevant)

    @_transaction
    async def delete_node(self, tx, name, by="", quiesce=None):
        """
        Remove a node; NotFound if there is none.  Its operation history
        stays in the journal; its open operations end ``cancelled``
        (``cancelled_by`` = ``by``).  ``quiesce(node)``, if given, is
        awaited first with the node's row locked (see :meth:`update_node`).
        Returns ``{"node": name, "cancelled": [operation ids]}``.
        """
        _text("by", by, 255)
        node = await self._node(tx, name, lock=True)
        reason = f"node {name} deleted"
        if quiesce is not None:
            await self._quiesce(tx, node, quiesce, reason, by)
        cancelled = await self._cancel_open(tx, name, reason, by)
        await tx.rows("DELETE FROM nodes WHERE name = %s", (name,))
        return {"node": name, "cancelled": sorted(cancelled)}

    async def _quiesce(self, tx, node, quiesce, reason, by):
        """
        Lock the node's open operations, await ``quiesce(node)`` and
        journal the ones it says the pservs cancelled.
        """
        await tx.rows("SELECT id FROM power_ops WHERE node = %s"
                      " AND state IN ('pending', 'running') FOR UPDATE", (node["name"],))
        cancelled = await quiesce(_plain(node))
        if cancelled:
            await self._cancel_open(tx, node["name"], reason, by, only=sorted(cancelled))

    async def _cancel_open(self, tx, node, reason, by, only=None):
        """Journal the node's open operations (or those of ``only``) cancelled."""
        rows = await tx.rows(
            "UPDATE power_ops SET state = 'cancelled', finished_at = now(),"
            " error = %(reason)s, cancelled_by = %(by)s"
            " WHERE node = %(node)s AND state IN ('pending', 'running')"
            " AND (%(only)s::bigint[] IS NULL OR id = ANY(%(only)s::bigint[])) RETURNING id",
            {"reason": f"{reason} by {by}" if by else reason, "by": by or None,
             "node": node, "only": only})
        return [r["id"] for r in rows]

    @_transaction
    async def node_open_ops(self, tx, name):
        """The node's pending and running operations, oldest first."""
        rows = await tx.rows(
            f"SELECT {_OP} FROM power_ops WHERE node = %s AND state IN ('pending', 'running')"
            " ORDER BY id", (name,))
        return [_plain(r) for r in rows]

    # -- power requests and the journal --------------------------------

    @_transaction
    async def request_power(self, tx, node, action, requester=""):
        """
        Journal a power request and set the node's desired state, in one
        transaction under the node's row lock, so concurrent requests
        serialise and the last to commit wins.  Announced on the
        ``power_ops`` channel once committed.
        """
        try:
            action = Action.parse(action)
        except ValueError as e:
            raise InvalidInput(f"action: {e}") from None
        _text("requester", requester, 255)
        await self._node(tx, node, lock=True)
        if action.target is not None:  # a new request: any drift is cleared
            await tx.rows(
                "UPDATE nodes SET desired_state = %s, drift_since = NULL,"
                " drift_observed = NULL, drift_polls = 0 WHERE name = %s",
                (action.target.value, node))
        op = await tx.row(
            f"INSERT INTO power_ops (node, action, requester) VALUES (%s, %s, %s)"
            f" RETURNING {_OP}", (node, action.value, requester))
        await tx.rows("SELECT pg_notify('power_ops', %s)", (str(op["id"]),))
        return _plain(op)

    async def _op(self, tx, op_id, lock=False):
        row = await tx.row(
            f"SELECT {_OP} FROM power_ops WHERE id = %s" + (" FOR UPDATE" if lock else ""),
            (_op_id(op_id),))
        if row is None:
            raise NotFound(f"power operation {op_id!r} does not exist")
        return row

    @_transaction
    async def get_op(self, tx, op_id):
        """One operation of the journal; NotFound if there is none."""
        return _plain(await self._op(tx, op_id))

    @_transaction
    async def count_ops_by_state(self, tx):
        """``{state: count}`` over the whole journal (for /metrics)."""
        rows = await tx.rows("SELECT state, count(*) AS n FROM power_ops GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    @_transaction
    async def list_ops(self, tx, node=None, state=None, limit=100, before_id=None):
        """The journal, newest first, filtered by node and/or state."""
        if state is not None and state not in OP_STATES:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(OP_STATES)}")
        before = _MAX_BIGINT if before_id is None else _op_id(before_id)
        rows = await tx.rows(
            f"SELECT {_OP} FROM power_ops WHERE (%(node)s::text IS NULL OR node = %(node)s)"
            " AND (%(state)s::text IS NULL OR state = %(state)s) AND id < %(before)s"
            " ORDER BY id DESC LIMIT %(limit)s",
            {"node": node, "state": state, "before": before, "limit": _limit(limit, 100)})
        return [_plain(r) for r in rows]

    # -- for the AMP side -----------------------------------------------

    @_transaction
    async def outstanding_ops(self, tx, cluster, after_id=0, limit=500, epoch=None):
        """
        A page of the cluster's non-terminal operations, oldest first, each
        with ``power``: its node's resolved configuration (``None`` plus
        ``power_error`` if it no longer resolves).  Page on with
        ``after_id`` = the last id seen.  With ``epoch``, only those of the
        nodes that lease owns (and is not handing over).
        """
        rows = await tx.rows(
            f"SELECT {', '.join('o.' + c.strip() for c in _OP.split(','))},"
            " n.power AS node_power FROM power_ops o JOIN nodes n ON n.name = o.node"
            " WHERE n.cluster = %s AND o.state IN ('pending', 'running') AND o.id > %s"
            " AND (%s::bigint IS NULL OR (n.owner_epoch = %s AND n.handoff_epoch IS NULL))"
            " ORDER BY o.id LIMIT %s",
            (cluster, int(after_id or 0), epoch, epoch,
             _limit(limit, 500, MAX_INTERNAL_PAGE)))
        resolved = await self._resolve_many(tx, [r.pop("node_power") for r in rows])
        return [_plain(dict(r, power=p, power_error=e)) for r, (p, e) in zip(rows, resolved)]

    @_transaction
    async def desired_states(self, tx, cluster, after_name="", limit=500, epoch=None):
        """
        A page of the cluster's nodes by name: ``node``, ``desired_state``,
        ``power_state`` and the resolved ``power`` (as in outstanding_ops).
        """
        rows = await tx.rows(
            "SELECT name AS node, desired_state, power_state, power FROM nodes"
            " WHERE cluster = %s AND name > %s"
            " AND (%s::bigint IS NULL OR (owner_epoch = %s AND handoff_epoch IS NULL))"
            " ORDER BY name LIMIT %s",
            (cluster, after_name or "", epoch, epoch, _limit(limit, 500, MAX_INTERNAL_PAGE)))
        resolved = await self._resolve_many(tx, [r.pop("power") for r in rows])
        return [dict(r, power=p, power_error=e) for r, (p, e) in zip(rows, resolved)]

    @_transaction
    async def node_power_config(self, tx, name):
        """A node's resolved power configuration; InvalidPowerConfig if it no longer resolves."""
        node = await self._node(tx, name)
        pods = await self._pod_managers(tx, powerconfig.referenced_pod_managers(node["power"]))
        return powerconfig.resolve_power(self._vault.open_power(node["power"]),
                                         self._catalogue, pods)

    @_transaction
    async def mark_running(self, tx, op_id, pserv, started_at=None, epoch=None):
        """
        Record that ``pserv`` started an operation.  A terminal operation is
        left alone; a running one handed to another pserv (re-dispatch
        after a pserv died) records the new pserv.
        """
        _text("pserv", pserv, 255)
        op = await self._op(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES or (op["state"] == "running" and op["pserv"] == pserv):
            return Recorded(_plain(op), False)
        op = await tx.row(
            f"UPDATE power_ops SET state = 'running', pserv = %s, epoch = %s,"
            f" started_at = COALESCE(%s, now()) WHERE id = %s RETURNING {_OP}",
            (pserv, epoch, _timestamp(started_at), op["id"]))
        return Recorded(_plain(op), True)

    @_transaction
    async def mark_running_many(self, tx, op_ids, pserv, epoch):
        """
        ``pserv`` took these operations in a ``Recover`` page under ``epoch``:
        the journal says they run there (terminal ones are left alone).
        """
        _text("pserv", pserv, 255)
        await tx.rows(
            "UPDATE power_ops SET state = 'running', pserv = %s, epoch = %s,"
            " started_at = COALESCE(started_at, now())"
            " WHERE id = ANY(%s) AND state IN ('pending', 'running')"
            " AND (pserv IS DISTINCT FROM %s OR epoch IS DISTINCT FROM %s)",
            (pserv, epoch, list(op_ids), pserv, epoch))

    async def _check_reference(self, tx, field, value, op_id):
        """An op id that ``coalesced_into``/``superseded_by`` may point at."""
        if value is None:
            return None
        try:
            other = _op_id(value)
            await self._op(tx, other)
        except NotFound:
            raise InvalidInput(f"{field}: power operation {value!r} does not exist") from None
        if other == op_id:
            raise InvalidInput(f"{field}: an operation cannot point at itself")
        return other

    @_transaction
    async def record_outcome(self, tx, op_id, state, observed_state=None, agent=None,
                             error=None, coalesced_into=None, superseded_by=None,
                             pserv=None, cancelled_by=None, epoch=None):
        """
        Record how an operation ended (terminal states only).  Idempotent:
        a report for an operation already terminal changes nothing and
        answers ``Recorded(op, changed=False)``.  With ``epoch`` (a pserv's
        report), only the current owner of the node may end it:
        :class:`StaleEpoch` otherwise, and nothing is written.
        """
        if state not in TERMINAL_STATES:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(TERMINAL_STATES)}")
        if observed_state is not None and observed_state not in POWER_STATES:
            raise InvalidInput(f"observed_state: {observed_state!r} is not one of "
                               + ", ".join(POWER_STATES))
        for field, value in (("agent", agent), ("error", error), ("pserv", pserv),
                             ("cancelled_by", cancelled_by)):
            if value is not None:
                _text(field, value)
        op = await self._op(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES:
            return Recorded(_plain(op), False)
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
            f" cancelled_by = COALESCE(%s, cancelled_by), finished_at = now()"
            f" WHERE id = %s RETURNING {_OP}",
            (state, observed_state, agent, error, coalesced_into, superseded_by, pserv,
             cancelled_by, op["id"]))
        return Recorded(_plain(op), True)

    @_transaction
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
            _text(field, by, 255)
        op = await self._op(tx, op_id, lock=True)
        if op["state"] in TERMINAL_STATES and not ended_ok:
            raise Conflict(f"power operation {op['id']} already ended {op['state']}")
        row = await tx.row(
            f"UPDATE power_ops SET {field} = %s WHERE id = %s RETURNING {_OP}",
            (by, op["id"]))
        return _plain(row)

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

    @_transaction
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
        if power_state not in POWER_STATES:
            raise InvalidInput(f"power_state: {power_state!r} is not one of "
                               + ", ".join(POWER_STATES))
        if error is not None:
            _text("error", error)
        row = await tx.row(
            "SELECT power_state, failed_polls, responsive, desired_state, drift_since,"
            " drift_observed, drift_polls, now() AS now,"
            " now() - COALESCE(last_good_poll_at, created_at) AS since_good,"
            " (SELECT drift_policy FROM clusters c WHERE c.name = nodes.cluster) AS policy,"
            " EXISTS (SELECT 1 FROM power_ops o WHERE o.node = nodes.name"
            "   AND o.state IN ('pending', 'running')) AS open_op"
            " FROM nodes WHERE name = %s FOR UPDATE", (node,))
        if row is None:
            raise NotFound(f"node {node!r} does not exist")
        failed = error is not None or power_state == PowerState.ERROR.value
        polls, responsive = self._responsiveness(row, failed, queried)
        state = row["power_state"] if failed and responsive else power_state
        last_error = (error or "the query failed") if failed else None
        updated = await tx.row(
            "UPDATE nodes SET power_state = %(state)s, failed_polls = %(polls)s,"
            " responsive = %(responsive)s, last_error = %(error)s,"
            " last_queried_at = CASE WHEN %(queried)s THEN now() ELSE last_queried_at END,"
            " last_good_poll_at = CASE WHEN %(good)s THEN now() ELSE last_good_poll_at END,"
            " last_changed_at = CASE WHEN power_state <> %(state)s THEN now()"
            "   ELSE last_changed_at END"
            f" WHERE name = %(node)s RETURNING {_NODE}",
            {"state": state, "polls": polls, "responsive": responsive, "error": last_error,
             "queried": bool(queried), "good": not failed, "node": node})
        reconcile = None
        if poll:
            updated, reconcile = await self._drift(tx, row, updated, power_state, failed)
        return dict(_plain(updated), reconcile=reconcile)

    async def _drift(self, tx, row, node, observed, failed):
        """
        Record what one poll says about drift (``row``: the node before the
        poll, ``node``: after it); journal the ``reconcile`` operation when
        enforced.  Answers the node and that operation (or None).
        """
        recent = ()
        if row["policy"] == "enforce" and not row["open_op"]:
            recent = tuple((r["requester"], r["state"]) for r in await tx.rows(
                "SELECT requester, state FROM power_ops WHERE node = %s AND action <> 'query'"
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
            op = await tx.row(
                f"INSERT INTO power_ops (node, action, requester) VALUES (%s, %s, %s)"
                f" RETURNING {_OP}", (node["name"], verdict.enforce, drift.RECONCILE_REQUESTER))
            await tx.rows("SELECT pg_notify('power_ops', %s)", (str(op["id"]),))
            op = _plain(op)
            verdict = drift.NO_DRIFT
        fields = (verdict.since, verdict.observed, verdict.polls)
        if fields != (node["drift_since"], node["drift_observed"], node["drift_polls"]):
            node = await tx.row(
                "UPDATE nodes SET drift_since = %s, drift_observed = %s, drift_polls = %s"
                f" WHERE name = %s RETURNING {_NODE}", fields + (node["name"],))
        return node, op

    # -- clusters and pservs ---------------------------------------------

    @_transaction
    async def register_pserv(self, tx, name, cluster, version, region):
        """A pserv connected (or reconnected) to ``region``: record it, live."""
        _name("pserv", name)
        _name("cluster", cluster)
        _text("version", version, 255)
        if region is not None:
            _text("region", region, 255)
        await self._ensure_cluster(tx, cluster)
        row = await tx.row(
            "INSERT INTO pservs (name, cluster, version, region, connected, connected_at,"
            " last_heartbeat) VALUES (%s, %s, %s, %s, true, now(), now())"
            " ON CONFLICT (name) DO UPDATE SET cluster = EXCLUDED.cluster,"
            " version = EXCLUDED.version, region = EXCLUDED.region, connected = true,"
            " connected_at = now(), last_heartbeat = now(), actions_in_flight = 0"
            f" RETURNING {_PSERV}", (name, cluster, version, region))
        return _plain(row)

    @_transaction
    async def heartbeat(self, tx, name, actions_in_flight):
        """A pserv is alive, with this many actions under way."""
        if isinstance(actions_in_flight, bool) or not isinstance(actions_in_flight, int) \
                or actions_in_flight < 0:
            raise InvalidInput("actions_in_flight: must be a non-negative integer")
        row = await tx.row(
            "UPDATE pservs SET last_heartbeat = now(), actions_in_flight = %s,"
            f" connected = true WHERE name = %s RETURNING {_PSERV}",
            (actions_in_flight, name))
        if row is None:
            raise NotFound(f"pserv {name!r} is not registered")
        return _plain(row)

    @_transaction
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

    @_transaction
    async def live_pservs(self, tx, cluster):
        """The cluster's pservs that are connected and heartbeating, by name."""
        rows = await tx.rows(
            f"SELECT {_PSERV} FROM pservs WHERE cluster = %s AND {self._live()} ORDER BY name",
            (cluster, self.heartbeat_timeout))
        return [_plain(r) for r in rows]

    @_transaction
    async def list_clusters(self, tx):
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
            "   WHERE n.cluster = c.name AND o.state = 'running') AS running_ops"
            " FROM clusters c ORDER BY c.name")
        pservs = await tx.rows(
            f"SELECT {_PSERV}, {self._live()} AS live FROM pservs ORDER BY name",
            (self.heartbeat_timeout,))
        result = []
        for cluster in clusters:
            mine = [_plain(p) for p in pservs if p["cluster"] == cluster["name"]]
            result.append(_plain(dict(
                cluster, pservs=mine,
                actions_in_flight=sum(p["actions_in_flight"] for p in mine if p["connected"]),
                status="online" if any(p["live"] for p in mine) else "offline")))
        return result

    @_transaction
    async def set_cluster_policy(self, tx, name, drift_policy):
        """Set a cluster's ``drift_policy`` (report or enforce); NotFound if no such cluster."""
        if drift_policy not in drift.POLICIES:
            raise InvalidInput(f"drift_policy: {drift_policy!r} is not one of "
                               + ", ".join(drift.POLICIES))
        row = await tx.row("UPDATE clusters SET drift_policy = %s WHERE name = %s"
                           " RETURNING name, drift_policy", (drift_policy, name))
        if row is None:
            raise NotFound(f"cluster {name!r} does not exist")
        return row

    # -- pod managers ---------------------------------------------------

    async def _pod_manager(self, tx, uuid, lock=False):
        row = await tx.row(
            f"SELECT {_POD_MANAGER}, password FROM pod_managers WHERE uuid = %s"
            + (" FOR UPDATE" if lock else ""), (_pm_uuid(uuid),))
        if row is None:
            raise NotFound(f"pod manager {uuid!r} does not exist")
        row["password"] = self._vault.open(row["password"])
        return row

    def _check_pod_manager(self, fields):
        """Validate pod manager fields before they are written."""
        if not isinstance(fields.get("name"), str) or not 1 <= len(fields["name"]) <= 255:
            raise InvalidInput("name: must be a non-empty string of at most 255 characters")
        for field in ("url", "username", "password", "description", "driver"):
            _text(field, fields[field])
        powerconfig.check_pod_manager(
            self._catalogue, fields["driver"], fields["url"], fields["username"],
            fields["password"])

    @_transaction
    async def create_pod_manager(self, tx, name, url, username="", password="",
                                 description="", driver="redfish"):
        """Add a pod manager (offline until probed); Conflict if the name is taken."""
        fields = dict(name=name, url=url, username=username, password=password,
                      description=description, driver=driver)
        self._check_pod_manager(fields)
        row = await tx.row(
            "INSERT INTO pod_managers (uuid, name, driver, username, password, url,"
            " description) VALUES (%(uuid)s, %(name)s, %(driver)s, %(username)s,"
            " %(password)s, %(url)s, %(description)s) ON CONFLICT (name) DO NOTHING"
            f" RETURNING {_POD_MANAGER}", dict(fields, uuid=str(uuidlib.uuid4()),
                                               password=self._vault.seal(password)))
        if row is None:
            raise Conflict(f"a pod manager named {name!r} already exists")
        return _plain(row)

    @_transaction
    async def get_pod_manager(self, tx, uuid):
        """One pod manager, without its password; NotFound if none."""
        row = await self._pod_manager(tx, uuid)
        del row["password"]
        return _plain(row)

    @_transaction
    async def list_pod_managers(self, tx):
        """Every pod manager by name, without passwords."""
        rows = await tx.rows(f"SELECT {_POD_MANAGER} FROM pod_managers ORDER BY name")
        return [_plain(r) for r in rows]

    @_transaction
    async def update_pod_manager(self, tx, uuid, **fields):
        """
        Change name, url, username, password and/or description (the driver
        is fixed: the nodes using it were validated for it); bumps updated_at.
        """
        _fields(fields, ("name", "url", "username", "password", "description"), "pod manager")
        current = await self._pod_manager(tx, uuid, lock=True)
        merged = {k: current[k] for k in
                  ("name", "url", "username", "password", "description", "driver")}
        merged.update(fields)
        self._check_pod_manager(merged)
        try:
            row = await tx.row(
                "UPDATE pod_managers SET name = %(name)s, url = %(url)s,"
                " username = %(username)s, password = %(password)s,"
                " description = %(description)s, updated_at = now()"
                f" WHERE uuid = %(uuid)s RETURNING {_POD_MANAGER}",
                dict(merged, uuid=current["uuid"],
                     password=self._vault.seal(merged["password"])))
        except psycopg2.errors.UniqueViolation:
            raise Conflict(f"a pod manager named {merged['name']!r} already exists") from None
        return _plain(row)

    @_transaction
    async def delete_pod_manager(self, tx, uuid):
        """Remove a pod manager; Conflict while any node's agent uses it."""
        current = await self._pod_manager(tx, uuid, lock=True)
        users = await tx.rows(
            "SELECT node FROM node_pod_managers WHERE pod_manager = %s ORDER BY node LIMIT 6",
            (current["uuid"],))
        try:
            if not users:
                await tx.rows("DELETE FROM pod_managers WHERE uuid = %s", (current["uuid"],))
                return
        except psycopg2.errors.ForeignKeyViolation:
            pass  # a node started using it meanwhile: the database said no
        names = ", ".join(repr(u["node"]) for u in users[:5]) or "a node"
        more = " and others" if len(users) > 5 else ""
        raise Conflict(f"pod manager {current['name']!r} is used by {names}{more}; "
                       "change those nodes first")

    @_transaction
    async def set_pod_manager_status(self, tx, uuid, status):
        """Record a probe's verdict (does not bump updated_at: no one edited it)."""
        if status not in POD_MANAGER_STATUSES:
            raise InvalidInput(f"status: {status!r} is not one of online, offline")
        row = await tx.row(
            f"UPDATE pod_managers SET status = %s WHERE uuid = %s RETURNING {_POD_MANAGER}",
            (status, _pm_uuid(uuid)))
        if row is None:
            raise NotFound(f"pod manager {uuid!r} does not exist")
        return _plain(row)
