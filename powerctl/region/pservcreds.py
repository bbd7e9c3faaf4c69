"""
Per-cluster pserv credentials in PostgreSQL (issue 10), and the region's
decisions about them.

:class:`PservCredentials` (txpostgres, for the running region) finds the
cluster and HMAC key of a live credential and says whether one is still
live (checked at every heartbeat: a revoked credential's connections are
closed).  :func:`create_sync`, :func:`list_sync` and :func:`revoke_sync`
(psycopg2) are for ``powerctl admin pserv-credential``.  The secret is
stored sealed by the region's vault.
"""

import attrs

from powerctl.rpc.credentials import new_credential


@attrs.frozen
class Admission:
    """What an authenticated connection may do: ``cluster`` None is every cluster."""

    key: bytes = attrs.field(repr=False)
    cluster: str = None
    credential: str = None


def admits(admission, cluster):
    """Whether a connection admitted as ``admission`` may register for ``cluster``."""
    return admission is None or admission.cluster is None or admission.cluster == cluster


class PservCredentials:
    def __init__(self, pool, vault):
        self._pool = pool
        self._vault = vault

    async def admission(self, credential_id):
        """The :class:`Admission` of a live credential, else None."""
        rows = await self._pool.runQuery(
            "SELECT cluster, secret FROM pserv_credentials WHERE id = %s AND revoked_at IS NULL",
            (credential_id,))
        if not rows:
            return None
        cluster, sealed = rows[0]
        return Admission(self._vault.open(sealed).encode("ascii"), cluster, credential_id)

    async def live(self, credential_id):
        rows = await self._pool.runQuery(
            "SELECT 1 FROM pserv_credentials WHERE id = %s AND revoked_at IS NULL",
            (credential_id,))
        return bool(rows)


def create_sync(conn, vault, cluster, created_by="powerctl admin"):
    """A new credential for ``cluster`` (committed); the :class:`Credential`."""
    credential = new_credential()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO pserv_credentials (id, cluster, secret, created_by) "
                    "VALUES (%s, %s, %s, %s)",
                    (credential.id, cluster, vault.seal(credential.secret.decode("ascii")),
                     created_by))
    conn.commit()
    return credential


def list_sync(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT id, cluster, created_at, created_by, revoked_at "
                    "FROM pserv_credentials ORDER BY created_at, id")
        columns = [c.name for c in cur.description]
        rows = [dict(zip(columns, r)) for r in cur.fetchall()]
    conn.rollback()
    return rows


def revoke_sync(conn, credential_id):
    """Revoke; whether a live credential of that id existed."""
    with conn.cursor() as cur:
        cur.execute("UPDATE pserv_credentials SET revoked_at = now() "
                    "WHERE id = %s AND revoked_at IS NULL RETURNING id", (credential_id,))
        found = cur.fetchone() is not None
    conn.commit()
    return found


async def admission_for(region, credential_id):
    """
    What a peer proving ``credential_id`` (None: the shared secret) would be
    admitted to, with the key to check its proof; None when unknown or revoked.
    """
    if credential_id is None:
        return Admission(region.secret)
    store = getattr(region, "pserv_credentials", None)
    if store is None:
        return None
    return await store.admission(credential_id)


async def still_admitted(region, admission):
    """False once the credential a connection authenticated with is revoked."""
    if admission is None or admission.credential is None:
        return True
    store = getattr(region, "pserv_credentials", None)
    return store is not None and await store.live(admission.credential)
