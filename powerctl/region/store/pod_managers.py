"""
Pod managers (shared PDUs, chassis managers, Redfish services) and the
links from power documents to them.

Passwords are never returned: pod managers show ``password_set``.  The
tx-level functions here validate and resolve node power documents against
the pod managers they name, for the node and journal stores.
"""

import uuid as uuidlib

import psycopg2.errors

from powerctl.region import powerconfig
from powerctl.region.errors import Conflict, InvalidInput, NotFound
from powerctl.region.store.base import (
    POD_MANAGER_COLUMNS, KindStore, check_fields, check_text, plain, pod_manager_key,
    transaction)
from powerctl.region.store.lockouts import forget_for_pod_manager

POD_MANAGER_STATUSES = ("online", "offline")


async def fetch_for_power(tx, vault, uuids, lock=False):
    """Pod manager records (with credentials, opened by ``vault``) by uuid, for validation."""
    if not uuids:
        return {}
    rows = await tx.rows(
        "SELECT uuid::text AS uuid, name, driver, url, username, password"
        " FROM pod_managers WHERE uuid = ANY(%s::uuid[])"
        + (" FOR SHARE" if lock else ""),
        (list(uuids),))
    return {r["uuid"]: dict(r, password=vault.open(r["password"])) for r in rows}


async def validated_power(tx, catalogue, vault, power, previous):
    """
    The normalised power document, with ``"(set)"`` secrets taken from
    ``previous`` and the pod managers it names locked against deletion
    until the transaction ends.  ``previous`` is as stored (sealed by
    ``vault``), and so is the answer.
    """
    sealed_previous, previous = previous, vault.open_power(previous)
    power = powerconfig.restore_secrets(power, previous, catalogue)
    pods = await fetch_for_power(
        tx, vault, powerconfig.referenced_pod_managers(power), lock=True)
    power = powerconfig.validate_power(power, catalogue, pods)
    return vault.seal_power(power, sealed_previous, catalogue)


async def link_to_node(tx, node, power):
    """Keep node_pod_managers equal to what ``power`` references."""
    await tx.rows("DELETE FROM node_pod_managers WHERE node = %s", (node,))
    uuids = powerconfig.referenced_pod_managers(power)
    if uuids:
        await tx.rows(
            "INSERT INTO node_pod_managers (node, pod_manager)"
            " SELECT %s, unnest(%s::uuid[])", (node, uuids))


async def resolve_many(tx, catalogue, vault, documents):
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
    pods = await fetch_for_power(tx, vault, sorted(uuids))
    results = []
    for power in documents:
        try:
            results.append((powerconfig.resolve_power(
                vault.open_power(power), catalogue, pods), None))
        except InvalidInput as e:
            results.append((None, str(e)))
    return results


class PodManagerStore(KindStore):
    """
    Pod managers: uuid, name, driver, url, credentials, status.

    :param catalogue: the driver catalogue their url and credentials are
        checked against.
    :param vault: seals passwords at rest (:mod:`powerctl.region.vault`).
    """

    def __init__(self, pool, catalogue, vault):
        super().__init__(pool)
        self._catalogue = catalogue
        self._vault = vault

    async def _pod_manager(self, tx, uuid, lock=False):
        row = await tx.row(
            f"SELECT {POD_MANAGER_COLUMNS}, password FROM pod_managers WHERE uuid = %s"
            + (" FOR UPDATE" if lock else ""), (pod_manager_key(uuid),))
        if row is None:
            raise NotFound(f"pod manager {uuid!r} does not exist")
        row["password"] = self._vault.open(row["password"])
        return row

    def _check_pod_manager(self, fields):
        """Validate pod manager fields before they are written."""
        if not isinstance(fields.get("name"), str) or not 1 <= len(fields["name"]) <= 255:
            raise InvalidInput("name: must be a non-empty string of at most 255 characters")
        for field in ("url", "username", "password", "description", "driver"):
            check_text(field, fields[field])
        powerconfig.check_pod_manager(
            self._catalogue, fields["driver"], fields["url"], fields["username"],
            fields["password"])

    @transaction
    async def create(self, tx, name, url, username="", password="",
                                 description="", driver="redfish"):
        """Add a pod manager (offline until probed); Conflict if the name is taken."""
        fields = dict(name=name, url=url, username=username, password=password,
                      description=description, driver=driver)
        self._check_pod_manager(fields)
        row = await tx.row(
            "INSERT INTO pod_managers (uuid, name, driver, username, password, url,"
            " description) VALUES (%(uuid)s, %(name)s, %(driver)s, %(username)s,"
            " %(password)s, %(url)s, %(description)s) ON CONFLICT (name) DO NOTHING"
            f" RETURNING {POD_MANAGER_COLUMNS}", dict(fields, uuid=str(uuidlib.uuid4()),
                                                      password=self._vault.seal(password)))
        if row is None:
            raise Conflict(f"a pod manager named {name!r} already exists")
        return plain(row)

    @transaction
    async def get(self, tx, uuid):
        """One pod manager, without its password; NotFound if none."""
        row = await self._pod_manager(tx, uuid)
        del row["password"]
        return plain(row)

    @transaction
    async def list(self, tx, after_name="", limit=None):
        """Pod managers by name, without passwords; pageable by name (keyset)."""
        rows = await tx.rows(f"SELECT {POD_MANAGER_COLUMNS} FROM pod_managers WHERE name > %s"
                             " ORDER BY name LIMIT %s", (after_name or "", limit))
        return [plain(r) for r in rows]

    @transaction
    async def update(self, tx, uuid, **fields):
        """
        Change name, url, username, password and/or description (the driver
        is fixed: the nodes using it were validated for it); bumps updated_at.
        """
        check_fields(fields, ("name", "url", "username", "password", "description"), "pod manager")
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
                f" WHERE uuid = %(uuid)s RETURNING {POD_MANAGER_COLUMNS}",
                dict(merged, uuid=current["uuid"],
                     password=self._vault.seal(merged["password"])))
        except psycopg2.errors.UniqueViolation:
            raise Conflict(f"a pod manager named {merged['name']!r} already exists") from None
        if any(merged[k] != current[k] for k in ("url", "username", "password")):
            # issue 10: the nodes using it have new credentials now
            await forget_for_pod_manager(tx, current["uuid"])
        return plain(row)

    @transaction
    async def delete(self, tx, uuid):
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
            # A second line of defence, never reached while the row is held
            # FOR UPDATE above: a node's link takes KEY SHARE on it, so it
            # either committed before the users query (which sees it) or
            # waits for this DELETE and fails on the node's side.  (make
            # mutate: catching another exception here is an equivalent mutant;
            # tests/test_store_locks.py pins the lock itself.)
            pass  # a node started using it meanwhile: the database said no
        names = ", ".join(repr(u["node"]) for u in users[:5]) or "a node"
        more = " and others" if len(users) > 5 else ""
        raise Conflict(f"pod manager {current['name']!r} is used by {names}{more}; "
                       "change those nodes first")

    @transaction
    async def set_status(self, tx, uuid, status):
        """Record a probe's verdict (does not bump updated_at: no one edited it)."""
        if status not in POD_MANAGER_STATUSES:
            raise InvalidInput(f"status: {status!r} is not one of online, offline")
        row = await tx.row(
            f"UPDATE pod_managers SET status = %s WHERE uuid = %s RETURNING {POD_MANAGER_COLUMNS}",
            (status, pod_manager_key(uuid)))
        if row is None:
            raise NotFound(f"pod manager {uuid!r} does not exist")
        return plain(row)
