"""
The region's data layer in PostgreSQL, through txpostgres: one store per
kind of record, composed by :class:`Store`.

* ``store.nodes`` (:class:`~.nodes.NodeStore`): nodes, their power
  documents, desired and observed power state, responsiveness, drift;
* ``store.ops`` (:class:`~.operations.OperationStore`): the journal of
  power operations;
* ``store.clusters`` (:class:`~.clusters.ClusterStore`): clusters and pservs;
* ``store.pod_managers`` (:class:`~.pod_managers.PodManagerStore`);
* ``store.lockouts`` (:class:`~.lockouts.LockoutStore`): BMC lock-outs.

Leases and node owners are :class:`powerctl.region.leases.Leases`, on the
same pool and the same transaction helper (:mod:`.base`).

Every public method runs in one transaction and returns a Deferred; a change
that spans kinds (deleting a node cancels its open operations; a poll may
journal a reconcile operation) is one transaction too, through the tx-level
functions each kind's module offers the others.  Failures a caller can act
on are :mod:`powerctl.region.errors` (``NotFound``, ``Conflict``,
``InvalidInput``; a refused power document is a ``PowerDocumentRefused``, a
kind of ``InvalidInput``).
"""

from powerctl.region.store.autofence import AutoFenceStore
from powerctl.region.store.clusters import ClusterStore
from powerctl.region.store.events import EventStore
from powerctl.region.store.lockouts import LockoutStore
from powerctl.region.store.nodes import NodeStore
from powerctl.region.store.operations import OperationStore, Recorded
from powerctl.region.store.pod_managers import PodManagerStore

__all__ = ["ClusterStore", "LockoutStore", "NodeStore", "OperationStore", "PodManagerStore", "Recorded",
           "Store"]


class Store:
    """
    The region's state in PostgreSQL: one attribute per kind of record.

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
    :param vault: seals secrets at rest (BMC and pod manager passwords;
        :mod:`powerctl.region.vault`).
    """

    def __init__(self, pool, catalogue, *, responsive_grace=60.0,
                 failed_polls_limit=2, heartbeat_timeout=90.0, vault,
                 fence_reuse_seconds=60.0):
        self.ops = OperationStore(pool, catalogue, vault,
                                  fence_reuse_seconds=fence_reuse_seconds)
        self.nodes = NodeStore(pool, catalogue, vault, responsive_grace=responsive_grace,
                               failed_polls_limit=failed_polls_limit, ops=self.ops)
        self.clusters = ClusterStore(pool, heartbeat_timeout=heartbeat_timeout)
        self.pod_managers = PodManagerStore(pool, catalogue, vault)
        self.lockouts = LockoutStore(pool)  # issue 10: BMC lock-outs
        self.auto_fence = AutoFenceStore(pool)  # issue 13: automatic fencing
        self.events = EventStore(pool)  # the journal of events (issue 14)
