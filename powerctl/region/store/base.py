"""
What every store of the region shares: one transaction per public method,
rows as plain dicts, and the checks of names, texts and page sizes.

Every public method of a store runs in one transaction and returns a
Deferred.  Rows come back as plain dicts (ISO 8601 timestamps, uuids as
text) so that the REST API and the AMP side can pass them on without knowing
psycopg2.  The tx-level helpers here (``node_row``, ``op_row``) let one
kind's store read another kind's row inside its own transaction.
"""

import datetime
import functools
import re
import uuid as uuidlib

import attrs
from twisted.internet import defer

from powerctl.power import OPEN_STATES
from powerctl.region import auditing
from powerctl.powerdoc import pod_manager_uuid
from powerctl.region.errors import InvalidInput, NotFound

MAX_PAGE = 1000  # for pages users ask for (the journal)
MAX_INTERNAL_PAGE = 100_000  # for the region's own recovery/re-dispatch reads
MAX_BIGINT = 2**63 - 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}$")
#: ``state IN (...)`` of the open states, as SQL literals: a literal list (not a
#: parameter) lets PostgreSQL match it against partial indexes.
OPEN_SQL = "(" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"

NODE_COLUMNS = """name, cluster, power, desired_state, power_state, responsive,
    failed_polls, last_error, last_queried_at, last_changed_at,
    last_good_poll_at, created_at, updated_at, drift_since, drift_observed,
    drift_polls, circuit"""
OP_COLUMNS = """id, node, action, state, coalesced_into, superseded_by, requester,
    requested_at, started_at, finished_at, pserv, agent, observed_state, error,
    cancelled_by, confirmed_by, epoch, detail"""
POD_MANAGER_COLUMNS = """uuid::text AS uuid, name, driver, username,
    password <> '' AS password_set, url, status, description, created_at,
    updated_at"""
PSERV_COLUMNS = """name, cluster, version, region, connected, connected_at,
    last_heartbeat, actions_in_flight"""


def plain(row):
    """A row with datetimes as ISO text and uuids as text: JSON- and AMP-ready."""
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime.datetime):
            value = value.isoformat()
        elif isinstance(value, uuidlib.UUID):
            value = str(value)
        out[key] = value
    return out


class Tx:
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
        # (Every row() query gives one row at most (a key, an aggregate):
        # make mutate's rows[-1] is equivalent.)
        return rows[0] if rows else None


def transaction(method):
    """
    Run ``method(self, tx, ...)`` in one transaction on a pooled
    connection: committed if it returns, rolled back if it raises, so a
    refused input never leaves half a change behind.  Called while an API
    write request is handled, the first such transaction that writes
    anything also writes the request's audit record
    (:mod:`powerctl.region.auditing`).
    """

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        # issue 10: an API change's audit record commits with the change
        intent = auditing.current()

        async def body(cursor):
            result = await method(self, Tx(cursor), *args, **kwargs)
            await auditing.write_if_changed(cursor, intent)
            return result

        def interaction(cursor):
            return defer.ensureDeferred(body(cursor))

        return auditing.settle(self._pool.runInteraction(interaction), intent)

    return run


@attrs.frozen
class Prepared:
    """
    A statement PREPAREd on each pooled connection the first time it runs
    there, then EXECUTEd: PostgreSQL parses and plans it once per
    connection instead of once per call.  Issue 14: the power request's
    statement (a CTE of four parts) cost its backend 0.47 ms a call as
    plain text and 0.19-0.32 ms prepared, most of it planning.

    ``sql`` is written with named parameters (``%(node)s``), as everywhere
    else in the stores; :func:`run_prepared` runs it.
    """

    name: str
    sql: str
    #: SQL run just before each EXECUTE, in the same implicit transaction
    #: (``SET LOCAL ...``: a setting for this statement's planning and
    #: execution only; the node page keeps JIT off with it)
    local: str = ""
    #: the parameter names in ``$n`` order
    params: tuple = attrs.field(init=False)
    prepare: str = attrs.field(init=False)
    execute: str = attrs.field(init=False)

    def __attrs_post_init__(self):
        if not re.match(r"^[a-z_][a-z0-9_]*$", self.name):
            raise ValueError(f"{self.name!r} is not a statement name")
        names = []

        def number(match):
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = _NAMED.sub(number, self.sql).replace("%%", "%")
        object.__setattr__(self, "params", tuple(names))
        object.__setattr__(self, "prepare", f"PREPARE {self.name} AS {text}".replace("%", "%%"))
        object.__setattr__(self, "execute", (f"{self.local}; " if self.local else "")
                           + f"EXECUTE {self.name}(" + ", ".join(f"%({n})s" for n in names)
                           + ")")


_NAMED = re.compile(r"%\((\w+)\)s")


def run_prepared(pool, statement, args):
    """
    A Deferred of the rows of ``statement`` (a :class:`Prepared`) run with
    ``args`` (a dict) in one round trip, autocommit, on one connection of
    ``pool`` (a txpostgres ``ConnectionPool``, or one ``Connection``).

    Each connection remembers the statements it prepared, for the session
    it has now (a connection re-opened after a database restart starts
    with none).  An unprepared statement goes as ``PREPARE ...; EXECUTE
    ...`` in one query.  A bare ``EXECUTE`` of a statement the session
    lacks would fail with an error txpostgres's dead-connection detector
    takes for a lost connection, so it is only sent once the session is
    known to have it: after a success, or after PostgreSQL answered that it
    already exists (a PREPARE whose EXECUTE failed stays prepared).
    """
    semaphore = getattr(pool, "_semaphore", None)
    if semaphore is None:
        return defer.ensureDeferred(_run_prepared(pool, statement, args))

    def pooled():
        # as txpostgres's ConnectionPool.runQuery does: one free connection
        connection = pool.connections.pop()
        d = defer.ensureDeferred(_run_prepared(connection, statement, args))
        return d.addBoth(pool._putBackAndPassthrough, connection)

    return semaphore.run(pooled)


async def _run_prepared(connection, statement, args):
    import psycopg2.errors

    session = getattr(connection, "_connection", None)  # psycopg2's, new on re-connect
    known = getattr(connection, "_powerctl_prepared", None)
    if known is None or known[0] is not session:
        known = (session, set())
        connection._powerctl_prepared = known
    if statement.name not in known[1]:
        try:
            rows = await connection.runQuery(statement.prepare + "; " + statement.execute, args)
        except psycopg2.errors.DuplicatePreparedStatement:
            known[1].add(statement.name)  # prepared by a call that failed after it
        else:
            known[1].add(statement.name)
            return rows
    return await connection.runQuery(statement.execute, args)


def check_name(field, value):
    """Refuse names that would not survive a URL path, a shell or a table."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidInput(
            f"{field}: {value!r} is not a valid name (1-253 letters, digits, "
            "'.', '_', '-', ':', '@'; starting with a letter or digit)")
    return value


def check_text(field, value, limit=4096):
    """A string field, bounded so one request cannot fill the database."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: must be a string")
    if len(value) > limit:
        raise InvalidInput(f"{field}: longer than {limit} characters")
    return value


def page_limit(value, default, maximum=MAX_PAGE):
    """A page size between 1 and ``maximum``: no request reads a whole table by mistake."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"limit: must be an integer from 1 to {maximum}")
    return value


def op_number(value):
    """An operation id as an int; anything else cannot name an operation."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise NotFound(f"power operation {value!r} does not exist") from None
    if isinstance(value, bool) or not 1 <= number <= MAX_BIGINT:
        raise NotFound(f"power operation {value!r} does not exist")
    return number


def pod_manager_key(value):
    """A pod manager uuid as canonical text; anything else names nothing."""
    try:
        return pod_manager_uuid(value)
    except ValueError:
        raise NotFound(f"pod manager {value!r} does not exist") from None


def timestamp(value):
    """None (now), a datetime, an ISO 8601 string or epoch seconds, as a datetime."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"started_at: {value!r} is not a time") from None


def check_fields(fields, allowed, what):
    """Refuse an update naming a field that cannot be changed."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"{what}: unknown or read-only field {unknown[0]!r}; "
            f"can change {', '.join(allowed)}")


class KindStore:
    """
    Base of the store of one kind of record: holds the connection pool that
    :func:`transaction` runs each public method on.

    :param pool: a started txpostgres ``ConnectionPool`` (a ``Connection``
        works too, but then every request waits for the one before it).
    """

    def __init__(self, pool):
        self._pool = pool


async def node_row(tx, name, lock=False):
    """A node's row (locked FOR UPDATE with ``lock``); NotFound if none."""
    row = await tx.row(
        f"SELECT {NODE_COLUMNS} FROM nodes WHERE name = %s" + (" FOR UPDATE" if lock else ""),
        (name,))
    if row is None:
        raise NotFound(f"node {name!r} does not exist")
    return row


async def op_row(tx, op_id, lock=False):
    """An operation's row (locked FOR UPDATE with ``lock``); NotFound if none."""
    row = await tx.row(
        f"SELECT {OP_COLUMNS} FROM power_ops WHERE id = %s" + (" FOR UPDATE" if lock else ""),
        (op_number(op_id),))
    if row is None:
        raise NotFound(f"power operation {op_id!r} does not exist")
    return row

