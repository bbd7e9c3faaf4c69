"""
A fleet of pservs and one region in memory, counting the journal's writes:
the numbers behind the scale model (``docs/scale.rst``, issue 14).

The real :class:`~powerctl.region.core.Region`, AMP responders, pservs,
registries, executors and pollers run on a ``Clock`` with in-memory AMP
(:mod:`powerctl.testing.amp`), fake devices (:mod:`powerctl.testing.drivers`)
and the in-memory journal (:mod:`powerctl.testing.region`).  Every call the
region makes on its store is counted by method; the ones that write are
transactions on the real store (one each: see ``WRITES``), so the counts
are the database's write transactions for the same traffic.
"""

import collections
import types

import attrs
from twisted.internet import defer, task

from powerctl.config import PservConfig
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.pserv.poller import Poller
from powerctl.region.core import Region
from powerctl.region.rpc import RegionProtocol
from powerctl.registry import PowerActionRegistry
from powerctl.testing.amp import connect
from powerctl.testing.drivers import FakeDriverType
from powerctl.testing.region import FakeLeases, FakeRegionStore

SECRET = b"scale model"

#: The store methods that are write transactions on the real store.
WRITES = frozenset({
    "nodes.record_power_state", "nodes.record_polls", "nodes.record_outcome",
    "nodes.record_outcomes", "ops.request", "ops.mark_running",
    "ops.mark_running_many", "ops.record_outcome", "clusters.register_pserv",
    "clusters.heartbeat", "clusters.pserv_disconnected"})


def _counted(namespace, prefix, counts):
    """``namespace`` with every method counting its calls in ``counts``."""
    def wrap(name, method):
        async def counting(*args, **kwargs):
            counts[f"{prefix}.{name}"] += 1
            return await method(*args, **kwargs)
        return counting
    return types.SimpleNamespace(**{
        name: wrap(name, method) for name, method in vars(namespace).items()})


@attrs.define
class _Member:
    pserv: Pserv
    poller: Poller
    pair: object


class Fleet:
    """
    ``pservs`` pservs, each alone in its own cluster of ``nodes_per_pserv``
    nodes, connected to one region.  :attr:`counts` counts the region's
    store calls by ``kind.method``.
    """

    def __init__(self, pservs, nodes_per_pserv, poll_concurrency=64):
        self.clock = task.Clock()
        self.store = FakeRegionStore()
        self.counts = collections.Counter()
        for kind in ("nodes", "ops", "clusters"):
            setattr(self.store, kind, _counted(getattr(self.store, kind), kind, self.counts))
        self.leases = FakeLeases(self.store)
        self.region = Region("r1", self.store, SECRET, self.clock, leases=self.leases)
        self.drivers = FakeDriverType()
        self.members = []
        for p in range(pservs):
            cluster = f"c{p}"
            for n in range(nodes_per_pserv):
                name = f"{cluster}-n{n:06d}"
                self.store.add_node(name, cluster, {"mode": "single", "agents": [
                    {"driver": "fake", "params": {"device": name}}]})
            self.members.append(self._pserv(f"p{p}", cluster, poll_concurrency))

    def _pserv(self, name, cluster, concurrency):
        executor = DriverExecutor(DriverCatalogue([self.drivers]))
        registry = PowerActionRegistry(executor, self.clock, cancel_timeout=5)
        link = RegionLink()
        pserv = Pserv(registry, executor, link.report)
        settings = PservConfig(name=name, cluster=cluster, heartbeat_interval=5.0)
        client = PservProtocol(pserv, link, settings, SECRET, self.clock, instance=name)
        pair = connect(RegionProtocol(self.region), client, self.clock)
        if not link.connected:
            raise AssertionError(f"{name}: the hand-shake did not complete")
        poller = Poller(registry, executor, link, self.clock, 10.0, concurrency)
        return _Member(pserv, poller, pair)

    def flush(self):
        """Pump every connection until all are quiet."""
        while any([m.pair.flush() for m in self.members]):
            pass

    def writes(self):
        """The write transactions counted so far, by method."""
        return {k: v for k, v in sorted(self.counts.items()) if k in WRITES}

    def measure(self, work):
        """
        Run ``work()`` (returns Deferreds or None), pump until quiet, and
        answer the write transactions it cost, by method.
        """
        before = collections.Counter(self.writes())
        results = work()
        self.flush()
        for d in results or ():
            if isinstance(d, defer.Deferred):
                d.addErrback(lambda f: f)  # surfaced through the counts
        return dict(collections.Counter(self.writes()) - before)

    def poll_round(self):
        """One poll round of every pserv: the write transactions it cost."""
        return self.measure(lambda: [m.poller.poll_once() for m in self.members])

    def storm(self, action):
        """``action`` on every node at once, as the API journals and dispatches it."""
        def work():
            names = sorted(self.store.node_rows)
            ops = [self.store.ops.request(name, action, "scale") for name in names]
            return [d.addCallback(lambda op: defer.ensureDeferred(self.region.dispatch(op)))
                    for d in map(defer.ensureDeferred, ops)]
        return self.measure(work)

    def states(self):
        """How many operations end in each state."""
        return collections.Counter(o["state"] for o in self.store.op_rows.values())
