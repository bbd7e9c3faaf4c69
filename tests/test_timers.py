"""
The periodic jobs are ``TimerService``\\ s on an injected clock: they run
every interval while their parent service runs, and stopping one waits for
the round under way (the region's database pool must outlive it).  With
``task.Clock`` and fakes: no sockets, no database.
"""

from twisted.internet import defer, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from powerctl.config import PservConfig
from powerctl.pserv.poller import Poller
from powerctl.pserv.service import PservService
from powerctl.region.coordination import Coordinator
from powerctl.region.podprobe import PodManagerProber


class Link:
    """A region link whose refresh (the start of each poll round) we hold."""

    connected = True
    epoch = None  # no lease: a round ends after its refresh

    def __init__(self):
        self.refreshes = []

    def refresh(self):
        d = defer.Deferred()
        self.refreshes.append(d)
        return d


class PollerServiceTests(unittest.TestCase):
    def test_a_round_every_interval_and_stop_waits_for_the_one_under_way(self):
        clock, link = task.Clock(), Link()
        poller = Poller(registry=None, executor=None, link=link, clock=clock,
                        interval=60, concurrency=1)
        poller.startService()
        self.assertEqual(len(link.refreshes), 1)
        link.refreshes[0].callback(None)
        clock.advance(59)
        self.assertEqual(len(link.refreshes), 1)
        clock.advance(1)
        self.assertEqual(len(link.refreshes), 2)
        stopped = poller.stopService()
        self.assertNoResult(stopped)
        link.refreshes[1].callback(None)
        self.successResultOf(stopped)
        clock.advance(600)
        self.assertEqual(len(link.refreshes), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_poller_starts_and_stops_with_the_pserv(self):
        class Catalogue:
            def close(self):
                pass

        settings = PservConfig(name="p1", regions=("tcp:host=127.0.0.1:port=5250",))
        pserv = PservService(settings, b"0123456789abcdef", MemoryReactorClock(), Catalogue())
        self.assertIn(pserv.poller, list(pserv))
        pserv.startService()
        self.assertTrue(pserv.poller.running)
        self.successResultOf(pserv.stopService())
        self.assertFalse(pserv.poller.running)


class Store:
    """Pod managers whose listing (the start of each probe round) we hold."""

    def __init__(self):
        self.listings = []

    @property
    def pod_managers(self):
        """The store's pod-manager part (this double is both)."""
        return self

    def list(self):
        d = defer.Deferred()
        self.listings.append(d)
        return d


class ProberServiceTests(unittest.TestCase):
    def test_stop_waits_for_the_round_under_way(self):
        clock, store = task.Clock(), Store()
        prober = PodManagerProber(store, clock, interval=30.0)
        prober.startService()
        self.assertEqual(len(store.listings), 1)  # at once, then every 30 s
        store.listings[0].callback([])
        clock.advance(30)
        self.assertEqual(len(store.listings), 2)
        stopped = prober.stopService()
        self.assertNoResult(stopped)
        store.listings[1].callback([])
        self.successResultOf(stopped)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_prober_never_started_stops_at_once(self):
        self.successResultOf(PodManagerProber(Store(), task.Clock()).stopService())


class Connection:
    closed = False

    def close(self):
        self.closed = True


class CoordinatorServiceTests(unittest.TestCase):
    def test_stop_waits_for_the_tick_then_gives_up_the_connection(self):
        clock, ticks = task.Clock(), []
        coordinator = Coordinator("dbname=x", clock, on_notify=None, jobs=None, interval=10.0)

        def tick():
            ticks.append(defer.Deferred())
            return ticks[-1]

        coordinator._tick = tick
        coordinator.startService()
        coordinator._conn, coordinator.leader = Connection(), True
        conn = coordinator._conn
        ticks[0].callback(None)
        clock.advance(10)
        self.assertEqual(len(ticks), 2)
        stopped = coordinator.stopService()
        self.assertNoResult(stopped)
        self.assertFalse(conn.closed)
        ticks[1].callback(None)
        self.successResultOf(stopped)
        self.assertTrue(conn.closed)
        self.assertFalse(coordinator.leader)
        self.assertEqual(clock.getDelayedCalls(), [])
