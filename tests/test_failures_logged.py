"""
Failures are trapped only where they are expected; anything else -- a bug --
is logged once with its traceback instead of being mistaken for something
ordinary (a pod manager gone, a lost connection) or dropped.

Each test makes a bug happen and looks for it in the log
(``flushLoggedErrors``); each also checks that the expected failure next to
it stays a quiet warning, so that the trap is not simply widened to
everything.  No sockets, no database: fakes and a ``task.Clock``.
"""

import attrs
import psycopg2
from twisted.internet import defer, error, task
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from powerctl.config import PservConfig
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.pserv.service import PservService
from powerctl.region import coordination
from powerctl.region.coordination import Coordinator
from powerctl.region.core import Region
from powerctl.region.podprobe import PodManagerProber
from powerctl.rpc import commands
from powerctl.testing.region import FakeLockouts


class Bug(Exception):
    """What a programming error raises in these tests."""


def warnings_during(testcase):
    """The warning texts logged from now until the end of ``testcase``."""
    seen = []

    def observe(event):
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            seen.append(event.get("log_format", ""))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return seen


# -- region: pod manager probes ------------------------------------------------


class PodManagers:
    """A store holding pod managers; records status changes."""

    def __init__(self, *urls, failure=None):
        self.rows = [{"uuid": f"u{i}", "name": f"pm{i}", "url": url, "status": "online"}
                     for i, url in enumerate(urls)]
        self.failure = failure
        self.changes = []
        self.rounds = 0

    @property
    def pod_managers(self):
        """The store's pod-manager part (this double is both)."""
        return self

    async def list(self):
        self.rounds += 1
        if self.failure is not None:
            raise self.failure
        return self.rows

    async def set_status(self, uuid, status):
        self.changes.append((uuid, status))


class Agent:
    """An ``IAgent`` whose requests fail with ``failure``."""

    def __init__(self, failure):
        self.failure = failure

    def request(self, method, uri, headers=None, bodyProducer=None):
        return defer.fail(self.failure)


class ProbeFailureTests(unittest.TestCase):
    def prober(self, store, failure):
        prober = PodManagerProber(store, task.Clock(), interval=60.0)
        prober._agent = Agent(failure)
        return prober

    def test_a_bug_is_logged_and_not_taken_for_offline(self):
        store = PodManagers("http://pm.example/redfish/v1")
        self.successResultOf(self.prober(store, Bug("probe bug")).probe_all())
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)
        self.assertEqual(store.changes, [])  # not "offline": we could not tell

    def test_nothing_answering_is_offline_and_no_error(self):
        store = PodManagers("http://pm.example/redfish/v1")
        self.successResultOf(self.prober(store, error.ConnectionRefusedError()).probe_all())
        self.assertEqual(store.changes, [("u0", "offline")])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_failed_round_is_logged_and_the_next_one_runs(self):
        store = PodManagers(failure=Bug("store bug"))
        prober = self.prober(store, Bug("unused"))
        prober.startService()
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)
        prober.clock.advance(60)
        self.assertEqual(store.rounds, 2)
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)
        self.successResultOf(prober.stopService())

    def test_a_round_without_the_database_is_a_warning(self):
        warned = warnings_during(self)
        store = PodManagers(failure=psycopg2.OperationalError("the database system is "
                                                              "shutting down"))
        prober = self.prober(store, Bug("unused"))
        prober.startService()
        prober.clock.advance(60)
        self.assertEqual(store.rounds, 2)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(warned), 2)
        self.successResultOf(prober.stopService())


# -- region: the coordinator's listening connection ------------------------------


class Listening:
    """A listening connection whose check fails with ``failure``."""

    def __init__(self, failure):
        self.failure = failure
        self.closed = False

    def runQuery(self, query, args=None):
        return defer.fail(self.failure)

    def close(self):
        self.closed = True


class NoServer:
    """A txpostgres connection that cannot connect: PostgreSQL is down."""

    def __init__(self, reactor=None):
        pass

    def connect(self, dsn):
        return defer.fail(psycopg2.OperationalError("could not connect to server"))

    def close(self):
        pass


class CoordinatorFailureTests(unittest.TestCase):
    def tick(self, failure):
        self.patch(coordination.txpostgres, "Connection", NoServer)
        coordinator = Coordinator("dbname=x", task.Clock(), on_notify=None, jobs=None)
        coordinator._conn = conn = Listening(failure)
        coordinator.leader = True
        self.successResultOf(coordinator.tick())
        self.assertTrue(conn.closed)  # dropped (and re-opening tried) whatever the cause
        self.assertEqual((coordinator._conn, coordinator.leader), (None, False))

    def test_a_bug_checking_the_connection_is_logged(self):
        self.tick(Bug("check bug"))
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)

    def test_a_lost_database_is_a_warning(self):
        warned = warnings_during(self)
        self.tick(psycopg2.OperationalError("server closed the connection"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(warned), 2)  # lost it; cannot open it again


# -- region: dispatch to a pserv -----------------------------------------------


class Leases:
    async def owner(self, node):
        return {"owner_epoch": 7, "handoff_epoch": None, "cluster": "c"}


class PowerStore:
    #: issue 10: no node locked out
    lockouts = FakeLockouts()

    @property
    def nodes(self):
        """The store's node part (this double is both)."""
        return self

    async def power_config(self, node):
        return {"mode": "single", "agents": []}

    async def circuit_config(self, node):
        return None  # on no circuit


@attrs.define(eq=False)
class Pserv:
    """A pserv connection whose calls fail with ``failure``."""

    failure: Exception
    pserv: str = "p1"
    cluster: str = "c"
    epoch: int = 7
    in_flight: int = 0

    def callRemote(self, command, **kwargs):
        return defer.fail(self.failure)


class RegionFailureTests(unittest.TestCase):
    def region(self, failure):
        region = Region("r1", PowerStore(), b"secret", task.Clock(), leases=Leases())
        region.directory.add(Pserv(failure))
        return region

    def dispatch(self, region):
        op = {"id": 1, "node": "n1", "action": "on"}
        return self.successResultOf(defer.ensureDeferred(region.dispatch(op)))

    def test_a_bug_in_dispatch_is_logged_not_taken_for_a_lost_connection(self):
        self.assertEqual(self.dispatch(self.region(Bug("dispatch bug"))), "pending")
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)

    def test_a_lost_connection_or_a_declared_refusal_is_a_warning(self):
        warned = warnings_during(self)
        for failure in (error.ConnectionLost(), commands.InternalError("pserv bug")):
            self.assertEqual(self.dispatch(self.region(failure)), "pending")
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len([w for w in warned if w.startswith("dispatch of")]), 2)

    def test_a_bug_behind_a_refresh_is_logged(self):
        self.region(Bug("refresh bug")).refresh_cluster("c")
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)

    def test_a_bug_behind_a_command_to_every_pserv_is_logged(self):
        region = self.region(Bug("forget bug"))
        node = {"name": "n1", "cluster": "c"}
        cancelled = self.successResultOf(defer.ensureDeferred(
            region.quiesce_node(node, "deleted")))
        self.assertEqual(cancelled, set())
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)


# -- pserv: heartbeat and refresh ------------------------------------------------


class BrokenPserv:
    """A pserv core whose ``in_flight`` has a bug."""

    epoch = None

    def in_flight(self):
        raise Bug("in_flight bug")


class LinkFailureTests(unittest.TestCase):
    def test_a_bug_that_stops_the_heartbeat_is_logged(self):
        clock = task.Clock()
        protocol = PservProtocol(BrokenPserv(), RegionLink(), PservConfig(name="p1"),
                                 b"secret", clock)
        protocol._start_heartbeat()
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)
        self.assertEqual(clock.getDelayedCalls(), [])  # stopped, and said so

    def test_a_bug_behind_a_refresh_is_logged_a_lost_connection_is_not(self):
        class Connection:
            def __init__(self, failure):
                self.failure = failure

            async def recover(self):
                raise self.failure

        warned = warnings_during(self)
        for failure in (Bug("recover bug"), error.ConnectionDone(), commands.LeaseExpired()):
            link = RegionLink()
            link.ready(Connection(failure))
            self.successResultOf(link.refresh())
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        self.assertEqual(len([w for w in warned if w.startswith("{what} failed")]), 2)


# -- pserv: stopping -----------------------------------------------------------


class Catalogue:
    """A driver catalogue whose ``close`` has a bug."""

    def close(self):
        raise Bug("close bug")


class StopFailureTests(unittest.TestCase):
    def test_a_failure_while_closing_is_logged(self):
        reactor = MemoryReactorClock()
        settings = PservConfig(name="p1", regions=("tcp:host=127.0.0.1:port=5250",))
        pserv = PservService(settings, b"0123456789abcdef", reactor, Catalogue())
        pserv.startService()
        self.successResultOf(pserv.stopService())
        self.assertEqual(len(self.flushLoggedErrors(Bug)), 1)
        self.assertFalse(pserv.running)
