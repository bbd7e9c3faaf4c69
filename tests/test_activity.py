"""
What runs now (issue 8): a real pserv -- ``Pserv``, ``PowerActionRegistry``,
``DriverExecutor`` with ``PrioritySlots`` and devices that never finish on a
``Clock`` -- answering ``ListActions``/``ListSlots`` over AMP (in memory with
``twisted.test.iosim``, or on 127.0.0.1), the region's collection
(:mod:`powerctl.region.activity`), ``GET /v1/activity``, ``powerctl
activity`` and the status page's "Running now" panel.
"""

import datetime
import json
import re

import treq
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from powerctl.cli import activity as cli_activity
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.pserv.core import Pserv
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.link import PservProtocol, RegionLink
from powerctl.pserv.slots import PrioritySlots, priority_of
from powerctl.region import web
from powerctl.region.activity import LiveActivity, shape
from powerctl.region.api import Api, api_root
from powerctl.region.guard import protect_web
from powerctl.registry import PowerActionRegistry
from powerctl.rpc import commands
from tests.test_executor import FakeType
from tests.test_multiagent import FakeDriver
from tests.test_powerconfig import fake_catalogue
from tests.pg import DatabaseMixin
from tests import tokens
from tests.system import SystemMixin, wait_until
from tests.test_store import StoreTestCase

HOSTILE = '<script>alert("x")</script>'
#: The region's clock during the live view test: a fixed instant, so "since" is exact.
REGION_NOW = 1_700_000_000.0
FOREVER = 10 ** 6  # seconds a device call takes: never, in a test


class HeldType(FakeType):
    """Devices whose every call stays open on the test's Clock."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def bind(self, settings):
        return self.drivers.setdefault(settings.get("id"),
                                       FakeDriver(clock=self.clock, delay=FOREVER))


def power(node):
    return {"mode": "single", "agents": [{"driver": "fake", "params": {"id": node}}]}


class PservSide:
    """A whole pserv but its connection: registry, executor, slots on ``clock``."""

    def __init__(self, clock, slots=1):
        self.clock = clock
        self.slots = PrioritySlots(slots, clock)
        self.executor = DriverExecutor(DriverCatalogue([HeldType(clock)]), slots=self.slots)
        self.registry = PowerActionRegistry(self.executor, clock)
        self.reports = []
        self.pserv = Pserv(self.registry, self.executor, self.reports.append)
        self.pserv.epoch = 1  # as if it held a lease

    def dispatch(self, op, node, action):
        return self.pserv.dispatch(op, node, action, power(node))

    def protocol(self):
        return QuietPserv(self.pserv, RegionLink(), None, b"", self.clock)

    def stop(self):
        self.registry.cancel_all("test over")


class QuietPserv(PservProtocol):
    """The pserv's responders without the hand-shake: the test plays the region."""

    def connectionMade(self):
        amp.AMP.connectionMade(self)
        self.gate.open = True


class RegionEnd(amp.AMP):
    """The region's end of one pserv connection, as the directory holds it."""

    def __init__(self, pserv="p1", cluster="c1"):
        super().__init__()
        self.pserv = pserv
        self.cluster = cluster


class Silent(protocol.Protocol):
    """A pserv that accepts the connection and never answers."""


def scenario(side):
    """
    On a pserv with one slot (Clock at 100):

    * n1: ``cycle`` 1 runs and holds the slot from t=100; 2 joined it;
      ``on`` 3 waits behind it in the registry;
    * n2: ``off`` 4 runs from t=103 but waits for the slot (first in line);
    * n3: ``query`` 5 runs from t=103, waits for the slot (second: queries
      come after changes).

    The Clock ends at t=105.
    """
    clock = side.clock
    clock.advance(100)
    assert side.dispatch(1, "n1", "cycle") == ("started", 0)
    assert side.dispatch(2, "n1", "cycle") == ("coalesced", 1)
    assert side.dispatch(3, "n1", "on") == ("waiting", 0)
    clock.advance(3)
    side.dispatch(4, "n2", "off")
    side.dispatch(5, "n3", "query")
    clock.advance(2)


class InMemoryTestCase(unittest.TestCase):
    """Pservs connected to region ends through ``iosim`` pumps, all on one Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.pumps = []

    def connect(self, side, name="p1", cluster="c1"):
        client, server, pump = iosim.connectedServerAndClient(
            side.protocol, lambda: RegionEnd(name, cluster), clock=self.clock)
        self.pumps.append(pump)
        self.addCleanup(side.stop)
        return client, pump

    def call(self, pump, d):
        pump.flush()
        return self.successResultOf(d)


class ListActionsTests(InMemoryTestCase):
    """The pserv's answers, through real AMP boxes."""

    def test_running_waiting_joined_and_since(self):
        side = PservSide(self.clock)
        client, pump = self.connect(side)
        scenario(side)
        page = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=10))
        self.assertTrue(page["done"])
        self.assertEqual(page["now"], 105)
        n1, n2, n3 = page["nodes"]
        self.assertEqual(n1["node"], "n1")
        self.assertEqual(n1["running"], {"operation_id": "1", "action": "cycle", "joined": ["2"],
                                         "joined_total": 1, "started_at": 100,
                                         "queued_at": 100, "stopping": False})
        self.assertEqual(n1["waiting"]["operation_id"], "3")
        self.assertIsNone(n1["waiting"]["started_at"])
        self.assertEqual(n1["waiting"]["queued_at"], 100)  # waiting since
        self.assertIsNone(n1["query"])
        self.assertEqual((n2["running"]["action"], n2["running"]["started_at"]), ("off", 103))
        self.assertEqual((n3["query"]["action"], n3["running"]), ("query", None))

    def test_one_node(self):
        side = PservSide(self.clock)
        client, pump = self.connect(side)
        scenario(side)
        page = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=10,
                                                 node="n2"))
        self.assertEqual([n["node"] for n in page["nodes"]], ["n2"])
        self.assertTrue(page["done"])
        page = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=10,
                                                 node="idle"))
        self.assertEqual(page["nodes"], [])

    def test_paged_by_node_and_cut_to_fit_one_amp_value(self):
        side = PservSide(self.clock, slots=4)
        client, pump = self.connect(side)
        names = sorted(f"{i:03d}-" + "x" * 400 for i in range(450))  # ~600 bytes a node
        for i, name in enumerate(names):
            side.dispatch(i + 1, name, "on")
        seen, after, pages = [], "", 0
        while True:
            page = self.call(pump, client.callRemote(commands.ListActions, after_node=after,
                                                     limit=500))
            pages += 1
            self.assertLessEqual(len(page["nodes"]), 200)  # the limit is capped
            self.assertLessEqual(len(json.dumps(page["nodes"], separators=(",", ":"))),
                                 commands.MAX_VALUE)
            seen.extend(n["node"] for n in page["nodes"])
            if page["done"]:
                break
            after = page["nodes"][-1]["node"]
        self.assertEqual(seen, names)  # each once, in order
        self.assertGreater(pages, 450 // 200 + 1)  # pages were cut to fit, not only capped

    def test_a_walk_reads_one_snapshot(self):
        side = PservSide(self.clock, slots=4)
        client, pump = self.connect(side)
        for i in range(5):
            side.dispatch(i + 1, f"n{i}", "on")
        first = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=2))
        side.dispatch(10, "n00-new", "on")  # sorts before the cursor: not this walk's
        side.dispatch(11, "n9-new", "on")   # after the cursor, but after the snapshot too
        rest, after = [], first["nodes"][-1]["node"]
        while True:
            page = self.call(pump, client.callRemote(commands.ListActions, after_node=after,
                                                     limit=2))
            rest.extend(n["node"] for n in page["nodes"])
            if page["done"]:
                break
            after = page["nodes"][-1]["node"]
        self.assertEqual([n["node"] for n in first["nodes"]] + rest,
                         ["n0", "n1", "n2", "n3", "n4"])
        fresh = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=10))
        self.assertIn("n9-new", [n["node"] for n in fresh["nodes"]])

    def test_many_joined_are_capped_and_counted(self):
        side = PservSide(self.clock)
        client, pump = self.connect(side)
        for op in range(1, 82):
            side.dispatch(op, "n1", "cycle")
        page = self.call(pump, client.callRemote(commands.ListActions, after_node="", limit=10))
        running = page["nodes"][0]["running"]
        self.assertEqual(len(running["joined"]), 50)
        self.assertEqual(running["joined_total"], 80)
        self.assertEqual(running["joined"][:2], ["2", "3"])


class ListSlotsTests(InMemoryTestCase):
    def test_holders_and_queue_in_serve_order(self):
        side = PservSide(self.clock)
        client, pump = self.connect(side)
        scenario(side)
        answer = self.call(pump, client.callRemote(commands.ListSlots, after_priority=0,
                                                   after_seq=-1, limit=10))
        self.assertEqual((answer["size"], answer["busy"], answer["waiting"], answer["now"]),
                         (1, 1, 2, 105))
        self.assertTrue(answer["done"])
        self.assertEqual(answer["holding"], [{"node": "n1", "operation_id": "1",
                                              "action": "cycle",
                                              "priority": priority_of("cycle"),
                                              "since": 100}])
        self.assertEqual([(w["node"], w["operation_id"], w["action"], w["position"],
                           w["since"]) for w in answer["queue"]],
                         [("n2", "4", "off", 1, 103), ("n3", "5", "query", 2, 103)])
        one = self.call(pump, client.callRemote(commands.ListSlots, after_priority=0,
                                                after_seq=-1, limit=10, node="n3"))
        self.assertEqual([(w["node"], w["position"]) for w in one["queue"]], [("n3", 2)])
        self.assertEqual(one["holding"], [])

    def test_paged_and_cancelled_waiters_left_out(self):
        side = PservSide(self.clock)
        client, pump = self.connect(side)
        for i in range(450):
            side.dispatch(i + 1, f"n{i:03d}", "on" if i % 2 else "off")
        side.pserv.registry.cancel_node("n007", "operator")  # an 'on' waiting for a slot
        queue, after = [], (0, -1)
        while True:
            page = self.call(pump, client.callRemote(
                commands.ListSlots, after_priority=after[0], after_seq=after[1], limit=200))
            self.assertLessEqual(len(page["queue"]), 200)
            queue.extend(page["queue"])
            if page["done"]:
                break
            after = (page["queue"][-1]["priority"], page["queue"][-1]["seq"])
        self.assertEqual(len(queue), 448)  # 450 - the one holding the slot - the cancelled
        self.assertNotIn("n007", [w["node"] for w in queue])
        self.assertEqual([w["position"] for w in queue], list(range(1, 449)))
        actions = [w["action"] for w in queue]
        self.assertEqual(actions, sorted(actions, key=lambda a: -priority_of(a)))  # offs first

    def test_a_pserv_without_slots(self):
        side = PservSide(self.clock)
        side.executor._slots = None
        client, pump = self.connect(side)
        answer = self.call(pump, client.callRemote(commands.ListSlots, after_priority=0,
                                                   after_seq=-1, limit=10))
        self.assertEqual((answer["size"], answer["queue"], answer["done"]), (0, [], True))


class CollectionTests(InMemoryTestCase):
    """The region's side: every pserv at once, each within its own deadline."""

    def live(self, *ends, timeout=2.0):
        return LiveActivity(lambda: list(ends), self.clock, timeout=timeout)

    def flush(self):
        for pump in self.pumps:
            pump.flush()

    def test_the_view_of_running_waiting_joined_since_and_slots(self):
        side = PservSide(self.clock)
        end, _ = self.connect(side)
        scenario(side)
        d = self.live(end)()
        self.flush()
        doc = self.successResultOf(d)
        self.assertEqual(doc["generated_at"], "1970-01-01T00:01:45.000+00:00")
        [p] = doc["pservs"]
        self.assertEqual((p["pserv"], p["cluster"], p["error"], p["complete"]),
                         ("p1", "c1", None, True))
        n1, n2, n3 = p["nodes"]
        self.assertEqual(n1["running"], {
            "operation_id": 1, "action": "cycle", "joined": [2], "joined_total": 1,
            "since": "1970-01-01T00:01:40.000+00:00", "age": 5, "stopping": False,
            "queued_since": "1970-01-01T00:01:40.000+00:00", "queued_age": 5,
            "slot": "held"})
        self.assertEqual(n1["waiting"], {
            "operation_id": 3, "action": "on", "joined": [], "joined_total": 0,
            "since": None, "age": None, "stopping": False,
            "queued_since": "1970-01-01T00:01:40.000+00:00", "queued_age": 5, "slot": None})
        self.assertIsNone(n1["query"])
        self.assertEqual((n2["running"]["operation_id"], n2["running"]["age"],
                          n2["running"]["slot"], n2["running"]["slot_position"]),
                         (4, 2, "waiting", 1))
        self.assertEqual((n3["query"]["slot"], n3["query"]["slot_position"]), ("waiting", 2))
        slots = p["slots"]
        self.assertEqual((slots["size"], slots["busy"], slots["free"], slots["waiting"]),
                         (1, 1, 0, 2))
        self.assertEqual(slots["holding"][0]["operation_id"], 1)
        self.assertEqual(slots["queue"], [
            {"node": "n2", "operation_id": 4, "action": "off", "priority": priority_of("off"),
             "since": "1970-01-01T00:01:43.000+00:00", "age": 2, "position": 1},
            {"node": "n3", "operation_id": 5, "action": "query", "priority": 0,
             "since": "1970-01-01T00:01:43.000+00:00", "age": 2, "position": 2}])
        self.assertEqual(doc["totals"], {"pservs": 1, "errors": 0, "nodes": 3, "running": 2,
                                         "waiting": 1, "queries": 1, "joined": 1,
                                         "slot_waiting": 2})

    def test_one_node_and_one_cluster(self):
        side, other = PservSide(self.clock), PservSide(self.clock)
        end, _ = self.connect(side, "p1", "c1")
        end2, _ = self.connect(other, "p2", "c2")
        scenario(side)
        other.dispatch(9, "m1", "on")
        d = self.live(end, end2)(node="n2")
        self.flush()
        doc = self.successResultOf(d)
        self.assertEqual(doc["node"], "n2")
        by = {p["pserv"]: p for p in doc["pservs"]}
        self.assertEqual([n["node"] for n in by["p1"]["nodes"]], ["n2"])
        self.assertEqual([w["node"] for w in by["p1"]["slots"]["queue"]], ["n2"])
        self.assertEqual(by["p1"]["slots"]["waiting"], 2)  # in all, on that pserv
        self.assertEqual(by["p2"]["nodes"], [])
        d = self.live(end, end2)(cluster="c2")
        self.flush()
        doc = self.successResultOf(d)
        self.assertEqual([p["pserv"] for p in doc["pservs"]], ["p2"])
        self.assertEqual([n["node"] for n in doc["pservs"][0]["nodes"]], ["m1"])

    def test_a_pserv_that_does_not_answer_is_shown_failed_and_blocks_nobody(self):
        side, stuck = PservSide(self.clock), PservSide(self.clock)
        end, _ = self.connect(side, "p1")
        stuck_end, stuck_pump = self.connect(stuck, "p2")
        scenario(side)
        stuck.dispatch(7, "s1", "on")
        d = self.live(end, stuck_end)()
        self.pumps[0].flush()  # p1 answers; p2's questions stay unanswered
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        doc = self.successResultOf(d)
        by = {p["pserv"]: p for p in doc["pservs"]}
        self.assertEqual((by["p1"]["error"], by["p1"]["complete"], len(by["p1"]["nodes"])),
                         (None, True, 3))
        self.assertEqual(by["p2"]["error"], "timeout: no complete answer within 2 s")
        self.assertFalse(by["p2"]["complete"])
        self.assertEqual(doc["totals"]["errors"], 1)
        # Its late answers are dropped, and the connection still works.
        stuck_pump.flush()
        page = self.call(stuck_pump, stuck_end.callRemote(commands.ListActions, after_node="",
                                                          limit=10))
        self.assertEqual([n["node"] for n in page["nodes"]], ["s1"])

    def test_a_pserv_that_fails_is_shown_with_its_error(self):
        side = PservSide(self.clock)
        end, pump = self.connect(side)
        pump.server.gate.open = False  # as if it had not authenticated the region
        d = self.live(end)()
        self.flush()
        doc = self.successResultOf(d)
        self.assertEqual(doc["pservs"][0]["error"], "not authenticated")

    def test_a_pserv_older_than_list_slots_still_says_what_it_runs(self):
        side = PservSide(self.clock)

        class Older(QuietPserv):
            def locateResponder(self, name):
                return None if name == b"ListSlots" else super().locateResponder(name)

        client, server, pump = iosim.connectedServerAndClient(
            lambda: Older(side.pserv, RegionLink(), None, b"", self.clock),
            lambda: RegionEnd("p1", "c1"), clock=self.clock)
        self.pumps.append(pump)
        self.addCleanup(side.stop)
        scenario(side)
        d = self.live(client)()
        self.flush()
        [p] = self.successResultOf(d)["pservs"]
        self.assertEqual((p["error"], p["slots"], len(p["nodes"])), (None, None, 3))
        self.assertNotIn("slot", p["nodes"][0]["running"])

    def test_paging_through_many_busy_nodes(self):
        side = PservSide(self.clock, slots=10)
        end, _ = self.connect(side)
        for i in range(1000):
            side.dispatch(i + 1, f"node{i:04d}", "on")
        d = self.live(end)()
        self.flush()
        doc = self.successResultOf(d)
        [p] = doc["pservs"]
        self.assertEqual([n["node"] for n in p["nodes"]], [f"node{i:04d}" for i in range(1000)])
        self.assertEqual(len(p["slots"]["queue"]), 990)
        self.assertEqual(sum(1 for n in p["nodes"] if n["running"]["slot"] == "held"), 10)
        self.assertEqual(doc["totals"]["slot_waiting"], 990)


    def test_at_most_so_many_nodes_and_waiters_per_pserv(self):
        side = PservSide(self.clock)
        end, _ = self.connect(side)
        for i in range(30):
            side.dispatch(i + 1, f"node{i:02d}", "on")
        asked = []
        call = end.callRemote
        end.callRemote = lambda command, **kw: (asked.append((command, kw["limit"])),
                                                 call(command, **kw))[1]
        d = self.live(end)(most=12)
        self.flush()
        [p] = self.successResultOf(d)["pservs"]
        self.assertEqual([n["node"] for n in p["nodes"]], [f"node{i:02d}" for i in range(12)])
        self.assertEqual([w["position"] for w in p["slots"]["queue"]], list(range(1, 13)))
        self.assertEqual(p["slots"]["waiting"], 29)  # counted in all, all the same
        self.assertEqual(sorted(set(asked), key=str), [(commands.ListActions, 12),
                                                       (commands.ListSlots, 12)])


class ShapeTests(unittest.TestCase):
    """The pure half: raw pserv answers in, the API's document out."""

    def raw(self, **extra):
        entry = {"pserv": "p1", "cluster": "c1", "error": None, "complete": True,
                 "now": 5000.0, "slots": None,
                 "nodes": [{"node": "b", "running": {
                     "operation_id": "12", "action": "off", "joined": ["13", "x"],
                     "started_at": 4990.5, "stopping": True}, "waiting": None, "query": None},
                     {"node": "a", "running": None, "waiting": None, "query": {
                         "operation_id": "7", "action": "query", "joined": [],
                         "joined_total": 0, "started_at": 5001.0, "stopping": False}}]}
        entry.update(extra)
        return entry

    def test_ages_on_the_pserv_clock_since_on_the_region_clock(self):
        region_now = 1_700_000_000.0  # the pserv's clock says 5000: skew does not matter
        doc = shape([self.raw()], region_now)
        a, b = doc["pservs"][0]["nodes"]
        self.assertEqual((a["node"], b["node"]), ("a", "b"))  # sorted
        self.assertEqual(b["running"]["age"], 9.5)
        self.assertEqual(b["running"]["since"],
                         datetime.datetime.fromtimestamp(region_now - 9.5, datetime.timezone.utc)
                         .isoformat(timespec="milliseconds"))
        self.assertEqual(b["running"]["operation_id"], 12)
        self.assertEqual(b["running"]["joined"], [13, "x"])
        self.assertEqual(b["running"]["joined_total"], 2)
        self.assertTrue(b["running"]["stopping"])
        self.assertNotIn("started_at", b["running"])
        self.assertNotIn("slot", b["running"])  # no slots on that pserv
        self.assertEqual(a["query"]["age"], 0)  # never negative
        self.assertEqual(doc["totals"]["queries"], 1)

    def test_node_filter_errors_and_order(self):
        doc = shape([self.raw(pserv="z", cluster="c1"),
                     self.raw(pserv="y", cluster="c2", error="timeout: x", complete=False,
                              nodes=[], now=None)],
                    0.0, node="b", timeout=2.0)
        self.assertEqual([(p["pserv"], [n["node"] for n in p["nodes"]]) for p in doc["pservs"]],
                         [("z", ["b"]), ("y", [])])
        self.assertEqual(doc["pservs"][1]["error"], "timeout: x")
        self.assertEqual((doc["node"], doc["timeout"]), ("b", 2.0))
        self.assertEqual(doc["totals"]["errors"], 1)

    def test_nothing_connected(self):
        doc = shape([], 0.0)
        self.assertEqual(doc["pservs"], [])
        self.assertEqual(doc["totals"]["pservs"], 0)


class RegionTime:
    """
    The region's clock for :class:`LiveActivity`: the reactor's timers (its
    pserv deadlines run for real), but ``seconds()`` reads a fixed instant.
    """

    def __init__(self, reactor, now):
        self.reactor = reactor
        self.now = now

    def seconds(self):
        return self.now

    def callLater(self, delay, f, *args, **kwargs):
        return self.reactor.callLater(delay, f, *args, **kwargs)


def api_pserv(test, side, name="p1", cluster="c1"):
    """Serve ``side`` on 127.0.0.1 and connect a region end to it (real TCP)."""

    async def connect():
        factory = protocol.Factory.forProtocol(side.protocol)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            factory)
        test.addCleanup(port.stopListening)
        end = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            RegionEnd(name, cluster))
        test.addCleanup(end.transport.loseConnection)
        test.addCleanup(side.stop)
        return end

    return connect()


async def silent_pserv(test, name):
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Silent))
    test.addCleanup(port.stopListening)
    end = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        RegionEnd(name, "c1"))
    test.addCleanup(end.transport.loseConnection)
    return end


class RestTests(StoreTestCase):
    """``GET /v1/activity`` on a served API, pservs on 127.0.0.1, a real store."""

    async def serve(self, ends, timeout=2.0, live=True, clock=reactor):
        self.live = LiveActivity(lambda: ends, clock, timeout=timeout)
        guard = tokens.make_guard(self.pool)
        api = Api(self.store, fake_catalogue(), log=Logger(observer=lambda e: None),
                  live_activity=self.live if live else None, guard=guard)
        root = api_root(self.store, fake_catalogue(), guard=guard)
        root.putChild(b"v1", api)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = tokens.AuthClient(treq.client.HTTPClient(Agent(reactor, pool=pool)),
                                        await tokens.create(self.pool))
        return f"http://127.0.0.1:{port.getHost().port}/v1"

    async def get(self, url):
        response = await self.client.get(url)
        return response.code, json.loads(await response.content())

    async def nodes(self):
        ipmi = {"mode": "single", "agents": [{"driver": "ipmi", "params": {
            "host": "10.0.0.5", "password": "pw"}}]}
        for name, cluster in (("n1", "c1"), ("n2", "c1"), ("n3", "c1"), ("m1", "c2")):
            await self.store.nodes.create(name, cluster, ipmi)

    async def test_the_live_view_and_its_node_filter(self):
        await self.nodes()
        clock = task.Clock()
        side = PservSide(clock)
        end = await api_pserv(self, side)
        scenario(side)
        base = await self.serve([end], clock=RegionTime(reactor, REGION_NOW))
        status, doc = await self.get(base + "/activity")
        self.assertEqual(status, 200)
        [p] = doc["pservs"]
        self.assertEqual([n["node"] for n in p["nodes"]], ["n1", "n2", "n3"])
        n1 = p["nodes"][0]
        self.assertEqual((n1["running"]["operation_id"], n1["running"]["joined"],
                          n1["running"]["age"], n1["running"]["slot"]), (1, [2], 5, "held"))
        self.assertEqual(n1["waiting"]["operation_id"], 3)
        # since = the region's clock minus the age on the pserv's clock
        self.assertEqual(datetime.datetime.fromisoformat(n1["running"]["since"]),
                         datetime.datetime.fromtimestamp(REGION_NOW - 5, datetime.timezone.utc))
        self.assertEqual([w["operation_id"] for w in p["slots"]["queue"]], [4, 5])

        status, doc = await self.get(base + "/activity?node=n3")
        self.assertEqual(status, 200)
        self.assertEqual(doc["node"], "n3")
        self.assertEqual([n["node"] for n in doc["pservs"][0]["nodes"]], ["n3"])
        self.assertEqual(doc["pservs"][0]["nodes"][0]["query"]["slot_position"], 2)

        status, doc = await self.get(base + "/activity?node=m1")  # cluster c2: p1 not asked
        self.assertEqual((status, doc["pservs"]), (200, []))

        status, doc = await self.get(base + "/activity?node=nope")
        self.assertEqual((status, doc["error"]["code"]), (404, "not_found"))
        status, doc = await self.get(base + "/activity?nod=n1")
        self.assertEqual((status, doc["error"]["code"]), (400, "unknown_parameter"))

    async def test_a_silent_pserv_shows_an_error_and_does_not_hold_up_the_others(self):
        clock = task.Clock()
        side = PservSide(clock)
        end = await api_pserv(self, side, "p1")
        silent = await silent_pserv(self, "p0-silent")
        scenario(side)
        base = await self.serve([silent, end], timeout=0.5)
        status, doc = await self.get(base + "/activity")
        self.assertEqual(status, 200)
        by = {p["pserv"]: p for p in doc["pservs"]}
        self.assertEqual(by["p0-silent"]["error"], "timeout: no complete answer within 0.5 s")
        self.assertEqual((by["p0-silent"]["complete"], by["p0-silent"]["nodes"]), (False, []))
        self.assertEqual((by["p1"]["error"], len(by["p1"]["nodes"])), (None, 3))
        self.assertEqual(doc["totals"]["errors"], 1)

    async def test_without_a_live_view_the_answer_is_503(self):
        base = await self.serve([], live=False)
        status, doc = await self.get(base + "/activity")
        self.assertEqual((status, doc["error"]["code"]), (503, "unavailable"))


def _document():
    """The view of :func:`scenario` through AMP, plus a pserv that did not answer."""
    side = PservSide(task.Clock())
    scenario(side)
    client, server, pump = iosim.connectedServerAndClient(
        side.protocol, lambda: RegionEnd("p1", "c1"), clock=side.clock)
    shown = []
    LiveActivity(lambda: [client], side.clock)().addCallback(shown.append)
    pump.flush()
    side.stop()
    [doc] = shown
    doc["pservs"].append({"pserv": HOSTILE, "cluster": "c1", "error": "timeout: no complete "
                          "answer within 2 s", "complete": False, "nodes": [], "slots": None})
    doc["totals"]["errors"] = 1
    doc["totals"]["pservs"] = 2
    return doc


class CliTests(unittest.TestCase):
    def test_the_table(self):
        text = cli_activity.render(_document())
        lines = text.splitlines()
        self.assertEqual(lines[0].split(), ["PSERV", "NODE", "RUNNING", "SINCE", "AGE", "SLOT",
                                            "JOINED", "WAITING", "WAITED", "QUERY"])
        n1 = next(line for line in lines if " n1 " in line)
        for cell in ("1 cycle", "1970-01-01 00:01:40+00:00", "5.0s", "held", "3 on"):
            self.assertIn(cell, n1)
        self.assertRegex(n1, r"\bheld\s+2\s+3 on")
        n2 = next(line for line in lines if " n2 " in line)
        self.assertIn("waiting #1", n2)
        self.assertIn("p1 (c1): slots 1/1 busy, 2 waiting for a slot", text)
        queue = lines[lines.index("p1 (c1): slots 1/1 busy, 2 waiting for a slot") + 1:]
        self.assertEqual(queue[0].split()[:5], ["#", "NODE", "OP", "ACTION", "PRIORITY"])
        self.assertEqual(queue[1].split()[:4], ["1", "n2", "4", "off"])
        self.assertEqual(queue[2].split()[:4], ["2", "n3", "5", "query"])
        self.assertIn(f"{HOSTILE} (c1): no complete answer: timeout", text)
        self.assertIn("2 running, 1 waiting, 1 joined, 2 waiting for a slot on 2 pserv(s); "
                      "1 did not answer", text)

    def test_nothing_running_and_long_queues(self):
        self.assertIn("nothing runs or waits on any connected pserv",
                      cli_activity.render({"pservs": [], "totals": {}}))
        self.assertIn("nothing runs or waits on node n9",
                      cli_activity.render({"node": "n9", "pservs": [], "totals": {}}))
        queue = [{"position": i, "node": f"n{i}", "operation_id": i, "action": "on",
                  "priority": 1, "since": None, "age": 1.0} for i in range(1, 31)]
        text = cli_activity.render({"pservs": [{"pserv": "p", "cluster": "c", "nodes": [],
                                                "slots": {"size": 2, "busy": 2, "waiting": 30,
                                                          "queue": queue}}]})
        self.assertIn("... and 10 more (--json lists them all)", text)
        self.assertIn(" n20 ", text)
        self.assertNotIn(" n21 ", text)

    def test_ages(self):
        self.assertEqual([cli_activity.age(s) for s in (None, 4.24, 185, 7620)],
                         [None, "4.2s", "3m05s", "2h07m"])


class StatusPageTests(StoreTestCase):
    def panel(self, page):
        start = page.index("<h2>Running now</h2>")
        end = page.index("<h2>", start + 1)
        return page[start:end]

    def test_the_panel_escaped(self):
        page = web.StatusPage(None).render_page({}, [], [], [], False, [], live=_document())
        panel = self.panel(page)
        self.assertNotIn("<script", panel)
        self.assertIn(web._e(HOSTILE), panel)
        self.assertIn("no complete answer: timeout: no complete answer within 2 s", panel)
        self.assertIn("slots: 1 of 1 busy, 2 waiting for a slot", panel)
        rows = {m[0]: m[1] for m in re.findall(r"<tr><td>(n\d)</td>(.*?)</tr>", panel)}
        self.assertEqual(set(rows), {"n1", "n2", "n3"})
        self.assertIn("<td>#1 cycle</td>", rows["n1"])
        self.assertIn('datetime="1970-01-01T00:01:40.000+00:00"', rows["n1"])
        self.assertIn("<td>5.0 s</td><td>held</td><td>2</td><td>#3 on</td>", rows["n1"])
        self.assertIn("waiting (#1 in the queue)", rows["n2"])
        self.assertIn("<td>#5 query</td>", rows["n3"])
        queue = re.findall(r"<tr><td>(\d)</td><td>(n\d)</td><td>(\d)</td><td>(\w+)</td>", panel)
        self.assertEqual(queue, [("1", "n2", "4", "off"), ("2", "n3", "5", "query")])

    def test_the_panel_when_the_pservs_cannot_be_asked_or_none_is_connected(self):
        page = web.StatusPage(None)
        self.assertIn("could not ask the pservs",
                      page.render_page({}, [], [], [], False, [], live={"failed": True}))
        self.assertIn("no pserv connected",
                      page.render_page({}, [], [], [], False, [], live=shape([], 0.0)))
        self.assertNotIn("Running now", page.render_page({}, [], [], [], False, []))

    def test_a_long_view_is_cut_short_on_the_page(self):
        clock = task.Clock()
        side = PservSide(clock)
        client, server, pump = iosim.connectedServerAndClient(
            side.protocol, lambda: RegionEnd("p1", "c1"), clock=clock)
        self.addCleanup(side.stop)
        for i in range(300):
            side.dispatch(i + 1, f"node{i:03d}", "on")
        page = web.StatusPage(None, live_activity=LiveActivity(lambda: [client], clock))
        d = defer.ensureDeferred(page._live())
        pump.flush()
        live = self.successResultOf(d)
        self.assertEqual(len(live["pservs"][0]["nodes"]), web.LIVE_NODES_SHOWN + 1)
        panel = self.panel(page.render_page({}, [], [], [], False, [], live=live))
        self.assertEqual(len(re.findall(r"<tr><td>node\d+</td>", panel)), web.LIVE_NODES_SHOWN)
        self.assertIn("showing the first 200 busy nodes", panel)
        self.assertIn("201+ running", panel)
        self.assertIn("299 waiting for a slot", panel)
        self.assertIn("waiting for a slot, most urgent first (the first 50 of 299)", panel)

    async def test_the_served_page_asks_the_pservs(self):
        clock = task.Clock()
        side = PservSide(clock)
        end = await api_pserv(self, side, HOSTILE)
        scenario(side)
        guard = tokens.make_guard(self.pool)
        root = api_root(self.store, fake_catalogue(), guard=guard)
        web.add_to(root, self.store, live_activity=LiveActivity(lambda: [end], reactor),
                   log=Logger(observer=lambda e: None))
        protect_web(root, guard)
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = tokens.AuthClient(treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(
            reactor, persistent=False))), await tokens.create(self.pool))
        response = await client.get(f"http://127.0.0.1:{port.getHost().port}/")
        page = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        panel = self.panel(page)
        self.assertNotIn("<script", page)
        self.assertIn(f"pserv {web._e(HOSTILE)}", panel)
        self.assertIn("waiting (#1 in the queue)", panel)
        self.assertIn("<td>#1 cycle</td>", panel)


class WholeSystemTests(SystemMixin, DatabaseMixin, unittest.TestCase):
    """The region service wires the live view into the API, the CLI and the page."""

    timeout = 60
    switch_delay = 3.0
    async def test_a_slow_power_on_is_seen_running_on_its_pserv(self):
        await self.start_region()
        await self.start_pserv()
        await wait_until(self.connected_pservs)
        await self.add_node("node1")
        op = await self.power("node1", "on")

        async def running():
            doc = await self.get("/v1/activity")
            nodes = [n for p in doc["pservs"] for n in p["nodes"] if n["running"]]
            return doc if nodes else None

        doc = await wait_until(running, timeout=20)
        [p] = doc["pservs"]
        self.assertEqual((p["pserv"], p["cluster"], p["error"]), ("pserv-a", "c1", None))
        [node] = p["nodes"]
        self.assertEqual((node["node"], node["running"]["operation_id"],
                          node["running"]["action"]), ("node1", op["id"], "on"))
        self.assertIsNotNone(node["running"]["since"])
        self.assertEqual(p["slots"]["size"], self.pservs[0].settings.max_actions)
        one = await self.get("/v1/activity?node=node1")
        self.assertEqual([n["node"] for n in one["pservs"][0]["nodes"]], ["node1"])
        code, out, err = await self.cli("activity")
        self.assertEqual(code, 0, err)
        self.assertIn(f"{op['id']} on", out)
        response = await treq.get(self.api + "/", pool=self.http, headers=self.auth_headers())
        page = (await response.content()).decode()
        self.assertIn("<h2>Running now</h2>", page)
        self.assertIn(f"<td>#{op['id']} on</td>", page)
        await self.wait_op(op["id"])
