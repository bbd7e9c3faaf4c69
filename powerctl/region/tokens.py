"""
API tokens and the audit trail in PostgreSQL (the I/O half of
:mod:`powerctl.region.auth`).

A token is ``pct_`` plus 32 random bytes (256 bits) in url-safe base64.  It
is shown once, when created; the database keeps only its SHA-256.

A region trusts a token it found live for :data:`~powerctl.region.auth.TOKEN_TTL`
seconds (1 s) without reading it again (:class:`~powerctl.region.auth.RecentTokens`;
issue 14: that read was a fifth of a power request's cost).  A revocation
is announced with ``NOTIFY tokens, '<id>'`` in its own statement: the region
that revoked forgets the token before it answers, every other region as
soon as the notification reaches it (:mod:`powerctl.region.coordination`
listens), and a region that missed it (its listening connection down)
within the TTL at the latest.

:func:`create_token_sync` is the same creation over a plain psycopg2
connection, for ``powerctl admin token create`` (bootstrap without a
running API) and for tests.
"""

import datetime
import re
import secrets

from twisted.internet import defer
from twisted.python import failure

from powerctl.region import auditing, auth
from powerctl.region.errors import Conflict, InvalidInput, NotFound

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_TOKEN_COLUMNS = "id, name, role, clusters, created_at, created_by, revoked_at, revoked_by"
_AUDIT_COLUMNS = "id, at, actor, source, method, path, status, outcome"
MAX_PAGE = 1000


def new_token():
    """A fresh secret token (256 random bits)."""
    return auth.TOKEN_PREFIX + secrets.token_urlsafe(32)


def checked(name, role, clusters):
    """``(name, role, clusters list or None)`` or InvalidInput."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput("name: 1-128 letters, digits or ._:@- starting with a letter "
                           "or digit")
    try:
        auth.check_role(role)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    if clusters is not None:
        if isinstance(clusters, str):
            clusters = [clusters]
        if (not isinstance(clusters, list) or not clusters
                or not all(isinstance(c, str) and _NAME.match(c) for c in clusters)):
            raise InvalidInput("clusters: a non-empty list of cluster names, or null for "
                               "every cluster")
        clusters = sorted(set(clusters))
    return name, role, clusters


def _plain(columns, row):
    out = {}
    for key, value in zip(columns.split(", "), row):
        if isinstance(value, datetime.datetime):
            value = value.isoformat()
        out[key] = value
    return out


def _token_row(row):
    shown = _plain(_TOKEN_COLUMNS, row)
    shown["revoked"] = shown["revoked_at"] is not None
    return shown


_INSERT = (f"INSERT INTO api_tokens (name, role, clusters, hash, created_by) "
           f"VALUES (%s, %s, %s, %s, %s) RETURNING {_TOKEN_COLUMNS}")
_DUPLICATE = "23505"


def create_token_sync(conn, name, role, clusters=None, created_by="admin-cli"):
    """
    Create a token over a psycopg2 connection (committed); ``(row, token)``.
    The token itself is returned here and nowhere else, ever.
    """
    import psycopg2

    name, role, clusters = checked(name, role, clusters)
    token = new_token()
    try:
        with conn.cursor() as cur:
            cur.execute(_INSERT, (name, role, clusters, auth.token_hash(token), created_by))
            row = cur.fetchone()
        conn.commit()
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
        raise Conflict(f"a token named {name!r} exists; revoke it first") from None
    return _token_row(row), token


class TokenStore:
    """Tokens, the audit trail and the scope look-ups of the guard, over a txpostgres pool."""

    def __init__(self, pool, clock=None, ttl=auth.TOKEN_TTL):
        """
        :param clock: gives ``seconds()`` (the reactor); None keeps no
            token between requests (every request reads its token).
        :param ttl: seconds a live token is trusted without a read.
        """
        self._pool = pool
        self._clock = clock
        self.recent = auth.RecentTokens(ttl=ttl) if clock is not None else None
        #: look-ups under way: (token hash, generation) -> waiting Deferreds
        self._looking = {}

    def notified(self, payload):
        """A ``tokens`` notification (a token id revoked anywhere): forget that token."""
        if self.recent is None:
            return
        try:
            self.recent.forget(int(payload))
        except (TypeError, ValueError):
            self.recent.forget()  # not ours to parse: forget them all

    def _write(self, sql, args):
        """
        One writing statement in its own transaction, with the API
        request's audit record (:mod:`powerctl.region.auditing`); its rows.
        """
        intent = auditing.current()

        async def body(cursor):
            await cursor.execute(sql, args)
            rows = cursor.fetchall()
            await auditing.write_if_changed(cursor, intent)
            return rows

        return auditing.settle(
            self._pool.runInteraction(lambda cursor: defer.ensureDeferred(body(cursor))),
            intent)

    async def authenticate(self, token):
        """The :class:`~powerctl.region.auth.Principal` of a live token, else None."""
        key = auth.token_hash(token)
        recent = self.recent
        if recent is None:
            return await self._read(key)
        started, generation = self._clock.seconds(), recent.generation
        principal = recent.get(key, started)
        if principal is not None:
            return principal
        # The requests of a token that arrive together (its entry just
        # expired) share one read.  A look-up begun before a revocation was
        # heard is never joined (the generation changed): a request after
        # it reads afresh.
        answer = defer.Deferred()
        waiters = self._looking.get((key, generation))
        if waiters is not None:
            waiters.append(answer)
        else:
            self._looking[key, generation] = [answer]
            defer.ensureDeferred(self._lookup(key, generation, started))
        return await answer

    async def _lookup(self, key, generation, started):
        """Read a token once for everybody waiting on ``(key, generation)``; keep it if live."""
        try:
            result = await self._read(key)
        except Exception:
            result = failure.Failure()
        waiters = self._looking.pop((key, generation), [])
        if isinstance(result, auth.Principal):
            self.recent.put(key, result, started, generation)
        for waiter in waiters:
            if isinstance(result, failure.Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _read(self, key):
        rows = await self._pool.runQuery(
            "SELECT id, name, role, clusters FROM api_tokens "
            "WHERE hash = %s AND revoked_at IS NULL", (key,))
        if not rows:
            return None
        token_id, name, role, clusters = rows[0]
        return auth.Principal(name=name, role=role, token_id=token_id,
                              clusters=None if clusters is None else frozenset(clusters))

    async def create(self, name, role, clusters=None, created_by=""):
        """``(row, token)``; Conflict if a live token has that name."""
        import psycopg2

        name, role, clusters = checked(name, role, clusters)
        token = new_token()
        try:
            rows = await self._write(
                _INSERT, (name, role, clusters, auth.token_hash(token), created_by))
        except psycopg2.errors.UniqueViolation:
            raise Conflict(f"a token named {name!r} exists; revoke it first") from None
        return _token_row(rows[0]), token

    async def list(self, include_revoked=False, after_id=0, limit=None):
        """Tokens by id, pageable (keyset: ``after_id`` is the last id seen)."""
        where = "" if include_revoked else "AND revoked_at IS NULL"
        rows = await self._pool.runQuery(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id > %s {where} ORDER BY id"
            " LIMIT %s", (after_id or 0, limit))
        return [_token_row(r) for r in rows]

    async def revoke(self, token_id, by):
        try:
            token_id = int(token_id)
        except ValueError:
            raise NotFound(f"no token {token_id!r}") from None
        # every region forgets it on this NOTIFY (delivered once committed)
        rows = await self._write(
            f"WITH t AS (UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()), "
            f"revoked_by = coalesce(revoked_by, %s) WHERE id = %s RETURNING {_TOKEN_COLUMNS})"
            f" SELECT {_TOKEN_COLUMNS}, pg_notify('tokens', id::text) FROM t",
            (by, token_id))
        if not rows:
            raise NotFound(f"no token {token_id}")
        if self.recent is not None:
            self.recent.forget(token_id)  # here: before the answer says it is revoked
        return _token_row(rows[0])

    # -- the audit trail ------------------------------------------------

    async def audit(self, actor, source, method, path, status, outcome):
        """A record on its own: a refusal (nothing changed), or what followed a change."""
        await self._pool.runOperation(auditing.INSERT, (actor, source, method, path[:2048],
                                                        status, outcome[:1024]))

    async def list_audit(self, before=None, limit=100, actor=None):
        limit = max(1, min(int(limit or 100), MAX_PAGE + 1))  # + 1: "is there more?"
        clauses, args = [], []
        if before is not None:
            clauses.append("id < %s")
            args.append(before)
        if actor is not None:
            clauses.append("actor = %s")
            args.append(actor)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = await self._pool.runQuery(
            f"SELECT {_AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT %s",
            (*args, limit))
        return [_plain(_AUDIT_COLUMNS, r) for r in rows]

    # -- what a request touches (for cluster scopes) --------------------

    async def cluster_of_node(self, name):
        rows = await self._pool.runQuery("SELECT cluster FROM nodes WHERE name = %s", (name,))
        return rows[0][0] if rows else None

    async def cluster_of_op(self, op_id):
        """The cluster of an operation's node; '' if the node is gone, None if no such op."""
        try:
            op_id = int(op_id)
        except ValueError:
            return None
        if not 0 < op_id < 2**63:
            return None
        rows = await self._pool.runQuery(
            "SELECT coalesce(n.cluster, '') FROM power_ops o "
            "LEFT JOIN nodes n ON n.name = o.node WHERE o.id = %s", (op_id,))
        return rows[0][0] if rows else None

    async def clusters_of_nodes(self, names):
        names = sorted({n for n in names if isinstance(n, str)})
        if not names:
            return {}
        rows = await self._pool.runQuery(
            "SELECT name, cluster FROM nodes WHERE name = ANY(%s)", (names,))
        return dict(rows)
