"""
The poller's decisions without SNMP or sockets: the real ``Poller``,
registry and executor with fake driver types (``powerctl.testing.drivers``)
on a ``Clock``.  ``tests/test_poller.py`` keeps one pass against the real
SNMP simulator.

Which nodes a round reads, and how: single-outlet SNMP nodes grouped per
PDU (host, port and credentials) into one request each, with every outlet
once; every other node (another driver, several agents) queried on its
own through the registry; nodes with a change in play, unqueryable
(manual) nodes and rounds without a lease left alone; a PDU that fails
reported as an error on each of its nodes only; at most ``concurrency``
reads at once; one batch to the region per round, under the epoch it was
polled under.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.drivers.bmclimit import BmcLimiter, BmcLimits, address_of
from powerctl.drivers.catalogue import DriverCatalogue
from powerctl.drivers.interface import Capabilities
from powerctl.drivers.schema import Param
from powerctl.power import PowerState
from powerctl.pserv.executor import DriverExecutor
from powerctl.pserv.lockout import LockoutGuard
from powerctl.pserv.poller import Poller
from powerctl.registry import PowerAction, PowerActionRegistry
from powerctl.testing.drivers import FakeDriverType, FakePduDriverType


class RecordingLink:
    """The poller's view of the region link: connected, under epoch 7, batches recorded."""

    def __init__(self, epoch=7):
        self.connected = True
        self.epoch = epoch
        self.batches = []  # (epoch, states)
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1
        return defer.succeed(None)

    def send_states(self, states, epoch):
        self.batches.append((epoch, states))
        return defer.succeed(None)


def outlet(host, n, community="public"):
    return {"mode": "single", "agents": [{"driver": "snmp", "params": {
        "host": host, "outlet": n, "community": community}}]}


def bmc(device):
    return {"mode": "single", "agents": [{"driver": "fake", "params": {"device": device}}]}


class PollerSetup:
    def setUp(self):
        self.clock = task.Clock()
        self.pdus = FakePduDriverType()
        self.bmcs = FakeDriverType()
        self.executor = DriverExecutor(DriverCatalogue([self.pdus, self.bmcs]))
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.link = RecordingLink()
        self.poller = Poller(self.registry, self.executor, self.link, self.clock,
                             interval=60, concurrency=4)

    def poll(self):
        """One round, run to completion; the one batch it reported, as {node: row}."""
        self.successResultOf(self.poller.poll_once())
        [(epoch, states)] = self.link.batches
        self.assertEqual(epoch, 7)
        return {s["node"]: s for s in states}


class GroupingTests(PollerSetup, unittest.TestCase):
    def test_the_outlets_of_one_pdu_are_read_in_one_request(self):
        for n in range(1, 6):
            self.executor.configure(f"node{n}", outlet("10.0.0.1", 6 - n))
        self.pdus.device(("10.0.0.1", 2)).state = PowerState.ON
        states = self.poll()
        self.assertEqual(self.pdus.outlet_queries, [("10.0.0.1", "public", [1, 2, 3, 4, 5])])
        self.assertEqual({n: s["state"] for n, s in states.items()},
                         {"node1": "off", "node2": "off", "node3": "off", "node4": "on",
                          "node5": "off"})
        # No outlet was queried on its own.
        self.assertEqual([d.calls for d in self.pdus.devices.values() if d.calls], [])

    def test_pdus_differ_by_host_and_by_credentials(self):
        self.executor.configure("a1", outlet("10.0.0.1", 1))
        self.executor.configure("a2", outlet("10.0.0.1", 2))
        self.executor.configure("b1", outlet("10.0.0.2", 1))
        self.executor.configure("c1", outlet("10.0.0.1", 3, community="other"))
        states = self.poll()
        self.assertEqual(sorted(self.pdus.outlet_queries), [
            ("10.0.0.1", "other", [3]), ("10.0.0.1", "public", [1, 2]),
            ("10.0.0.2", "public", [1])])
        self.assertEqual(sorted(states), ["a1", "a2", "b1", "c1"])

    def test_nodes_sharing_an_outlet_read_it_once(self):
        self.executor.configure("psu-a", outlet("10.0.0.1", 4))
        self.executor.configure("psu-b", outlet("10.0.0.1", 4))
        states = self.poll()
        self.assertEqual(self.pdus.outlet_queries, [("10.0.0.1", "public", [4])])
        self.assertEqual(sorted(states), ["psu-a", "psu-b"])

    def test_other_nodes_are_queried_one_by_one(self):
        self.executor.configure("bmc-node", bmc("bmc1"))
        self.executor.configure("dual", {"mode": "concurrent", "agents": [
            {"driver": "snmp", "params": {"host": "10.0.0.1", "outlet": 1}},
            {"driver": "snmp", "params": {"host": "10.0.0.2", "outlet": 1}}]})
        self.bmcs.device("bmc1").state = PowerState.ON
        states = self.poll()
        self.assertEqual(self.pdus.outlet_queries, [])  # two agents: not one outlet
        self.assertEqual(self.bmcs.device("bmc1").calls, ["query"])
        self.assertEqual(self.pdus.device(("10.0.0.1", 1)).calls, ["query"])
        self.assertEqual(self.pdus.device(("10.0.0.2", 1)).calls, ["query"])
        self.assertEqual({n: s["state"] for n, s in states.items()},
                         {"bmc-node": "on", "dual": "off"})

    def test_a_pdu_type_without_batched_reads_queries_each_outlet(self):
        plain = FakeDriverType(name="snmp")
        self.executor = DriverExecutor(DriverCatalogue([plain]))
        self.registry = PowerActionRegistry(self.executor, self.clock)
        self.poller = Poller(self.registry, self.executor, self.link, self.clock, 60, 4)
        self.executor.configure("n1", {"mode": "single", "agents": [
            {"driver": "snmp", "params": {"device": "outlet1"}}]})
        self.assertEqual(self.poll()["n1"]["state"], "off")
        self.assertEqual(plain.device("outlet1").calls, ["query"])


class SkipTests(PollerSetup, unittest.TestCase):
    def test_busy_and_unqueryable_nodes_are_left_alone(self):
        manual = FakeDriverType(name="manual", capabilities=Capabilities(queryable=False))
        self.executor = DriverExecutor(DriverCatalogue([self.pdus, self.bmcs, manual]))
        self.registry = PowerActionRegistry(self.executor, self.clock)
        self.poller = Poller(self.registry, self.executor, self.link, self.clock, 60, 4)
        self.bmcs.hold = True
        self.executor.configure("busy", bmc("bmc1"))
        self.executor.configure("idle", outlet("10.0.0.1", 1))
        self.executor.configure("by-hand", {"mode": "single", "agents": [
            {"driver": "manual", "params": {"device": "rack"}}]})
        self.registry.submit(PowerAction(node="busy", action="off", operation_id="op1"))
        states = self.poll()
        self.assertEqual(sorted(states), ["idle"])
        self.assertEqual(self.bmcs.device("bmc1").calls, ["off"])  # the change, no query
        self.assertEqual(manual.device("rack").calls, [])

    def test_without_a_lease_nothing_is_polled(self):
        self.link.epoch = None
        self.executor.configure("n1", bmc("bmc1"))
        self.successResultOf(self.poller.poll_once())
        self.assertEqual((self.link.batches, self.bmcs.device("bmc1").calls), ([], []))

    def test_without_a_region_nothing_is_polled(self):
        self.link.connected = False
        self.executor.configure("n1", bmc("bmc1"))
        self.successResultOf(self.poller.poll_once())
        self.assertEqual((self.link.refreshed, self.link.batches), (0, []))
        self.assertEqual(self.bmcs.device("bmc1").calls, [])

    def test_each_round_refreshes(self):
        self.successResultOf(self.poller.poll_once())
        self.assertEqual(self.link.refreshed, 1)

    def test_the_refresh_runs_beside_the_queries_and_the_round_waits_for_it(self):
        self.executor.configure("n1", outlet("10.0.0.1", 1))
        paging = defer.Deferred()
        self.link.refresh = lambda: paging  # the region is still paging
        round_ = self.poller.poll_once()
        # queried and reported without waiting for the refresh ...
        self.assertEqual(self.pdus.outlet_queries, [("10.0.0.1", "public", [1])])
        self.assertEqual([sorted(s["node"] for s in b) for _, b in self.link.batches], [["n1"]])
        # ... and the round is over once the refresh is too
        self.assertNoResult(round_)
        paging.callback(None)
        self.successResultOf(round_)

    def test_refreshes_take_at_most_a_tenth_of_the_time(self):
        paging = [defer.Deferred()]
        calls = []

        def refresh():
            calls.append(self.clock.seconds())
            return paging[-1]

        self.link.refresh = refresh
        first = self.poller.poll_once()
        self.clock.advance(7)  # a refresh of 10,000 nodes: 7 s
        paging[-1].callback(None)
        self.successResultOf(first)
        for _ in range(7):  # rounds every 10 s: none refreshes before 70 s
            paging.append(defer.succeed(None))
            self.clock.advance(10)
            self.successResultOf(self.poller.poll_once())
        self.assertEqual(calls, [0, 77])  # the one that refreshed took no time (Clock) ...
        self.successResultOf(self.poller.poll_once())
        self.assertEqual(calls, [0, 77, 77])  # ... so the next round refreshes again

    def test_a_refresh_is_due_every_five_minutes_however_slow_the_last(self):
        paging = defer.Deferred()
        calls = []
        self.link.refresh = lambda: (calls.append(self.clock.seconds()), paging)[1]
        first = self.poller.poll_once()
        self.clock.advance(120)  # a region stuck for two minutes
        paging.callback(None)
        self.successResultOf(first)
        paging = defer.succeed(None)
        for _ in range(5):  # rounds at 180 .. 420
            self.clock.advance(60)
            self.successResultOf(self.poller.poll_once())
        # not before 300 s (not 1,200), then every round again (a quick one)
        self.assertEqual(calls, [0, 300, 360, 420])

    def test_with_a_cursor_rounds_refresh_incrementally_and_fully_every_ten_minutes(self):
        """Issue 14: a full paging is the rare safety net once the region gives cursors."""
        calls = []

        def refresh(incremental=False):
            calls.append((self.clock.seconds(), "incremental" if incremental else "full"))
            if not incremental:
                self.clock.advance(7)  # a full refresh of 10,000 nodes: 7 s
            return defer.succeed(None)

        self.link.refresh = refresh
        self.successResultOf(self.poller.poll_once())  # no cursor yet: full
        self.link.incremental = True  # the hand-shake's recovery gave one
        for _ in range(10):  # rounds every 60 s from 67 s to 607 s
            self.clock.advance(60)
            self.successResultOf(self.poller.poll_once())
        self.assertEqual(calls, [(0, "full")] + [(67 + 60 * i, "incremental") for i in range(9)]
                         + [(607, "full")])

    def test_the_first_round_after_a_hand_shake_is_incremental(self):
        """The hand-shake recovered in full just before: no second full paging at once."""
        calls = []
        self.link.refresh = lambda incremental=False: (
            calls.append((self.clock.seconds(), incremental)), defer.succeed(None))[1]
        self.link.incremental = True
        for _ in range(11):  # rounds every 60 s from 0 to 600 s
            self.successResultOf(self.poller.poll_once())
            self.clock.advance(60)
        self.assertEqual(calls, [(60 * i, True) for i in range(10)] + [(600, False)])

    def test_a_node_forgotten_while_it_was_read_is_not_reported(self):
        self.executor.configure("n1", outlet("10.0.0.1", 1))
        self.executor.configure("n2", outlet("10.0.0.1", 2))
        reading = defer.Deferred()
        self.pdus.query_outlets = lambda settings, outlets: reading
        round_ = self.poller.poll_once()
        self.executor.forget("n2")  # e.g. the refresh handed it over
        reading.callback({1: PowerState.ON, 2: PowerState.OFF})
        self.successResultOf(round_)
        [(_, states)] = self.link.batches
        self.assertEqual([s["node"] for s in states], ["n1"])


class GroupingCacheTests(PollerSetup, unittest.TestCase):
    """Each node's SNMP settings are validated once per configuration, not each round."""

    def setUp(self):
        super().setUp()
        self.validated = []
        catalogue = self.executor.catalogue
        validate = catalogue.validate

        def counting(name, params):
            self.validated.append(params.get("outlet"))
            return validate(name, params)

        catalogue.validate = counting

    def round(self):
        self.link.batches.clear()
        return self.poll()

    def test_settings_are_validated_once_per_configuration(self):
        for n in (1, 2, 3):
            self.executor.configure(f"n{n}", outlet("10.0.0.1", n))
        self.round()
        self.assertEqual(sorted(self.validated), [1, 2, 3])
        self.validated.clear()
        self.assertEqual(sorted(self.round()), ["n1", "n2", "n3"])
        self.assertEqual(self.validated, [])  # nothing changed: nothing validated
        # a changed configuration is grouped afresh, under its new PDU
        self.executor.configure("n2", outlet("10.0.0.2", 7))
        self.assertEqual(sorted(self.round()), ["n1", "n2", "n3"])
        self.assertEqual(self.validated, [7])
        self.assertEqual(sorted(self.pdus.outlet_queries[-2:]), [
            ("10.0.0.1", "public", [1, 3]), ("10.0.0.2", "public", [7])])

    def test_forgotten_nodes_and_pdus_are_not_kept(self):
        self.executor.configure("n1", outlet("10.0.0.1", 1))
        self.executor.configure("n2", outlet("10.0.0.2", 1))
        self.round()
        self.executor.forget("n2")
        self.round()
        self.assertEqual(sorted(self.poller._grouped), ["n1"])
        self.assertEqual(len(self.poller._pdus), 1)


class FailureTests(PollerSetup, unittest.TestCase):
    def test_a_pdu_that_fails_costs_only_its_own_nodes(self):
        self.executor.configure("dead1", outlet("10.0.0.9", 1))
        self.executor.configure("dead2", outlet("10.0.0.9", 2))
        self.executor.configure("alive", outlet("10.0.0.1", 1))
        self.pdus.unreachable.add("10.0.0.9")
        states = self.poll()
        self.assertEqual(states["alive"], {"node": "alive", "state": "off", "error": ""})
        for node in ("dead1", "dead2"):
            self.assertEqual(states[node]["state"], "error")
            self.assertEqual((states[node]["error"], states[node]["error_kind"]),
                             ("PDU 10.0.0.9 does not answer", "unreachable"))

    def test_a_state_only_a_later_level_gave_is_a_failed_poll(self):
        # issue 13: level 1 (the BMC) dead, level 2 (the outlet) on: the
        # region must count a failed poll, or the node never turns
        # non-responsive and is never fenced automatically
        from powerctl.drivers.errors import UnreachableError

        self.executor.configure("n1", {"levels": [
            {"agents": [{"driver": "fake", "label": "bmc", "params": {"device": "bmc1"}}]},
            {"agents": [{"driver": "snmp", "label": "pdu",
                         "params": {"host": "10.0.0.1", "outlet": 1}}]}]})
        self.executor.configure("n2", {"levels": [
            {"agents": [{"driver": "fake", "params": {"device": "bmc2"}}]},
            {"agents": [{"driver": "snmp", "params": {"host": "10.0.0.1", "outlet": 2}}]}]})
        self.bmcs.device("bmc1").failure = UnreachableError("BMC bmc1 does not answer")
        self.pdus.device(("10.0.0.1", 1)).state = PowerState.ON
        self.bmcs.device("bmc2").state = PowerState.ON
        states = self.poll()
        self.assertEqual((states["n1"]["state"], states["n1"]["error_kind"]), ("on", "unreachable"))
        self.assertRegex(states["n1"]["error"],
                         r"^level 1 did not answer \(the state is level 2's\): .*bmc1 does not")
        self.assertEqual(states["n2"], {"node": "n2", "state": "on", "error": ""})

    def test_a_level_that_cannot_query_by_design_is_no_failed_poll(self):
        from powerctl.drivers.errors import UnsupportedError

        self.executor.configure("n1", {"levels": [
            {"agents": [{"driver": "fake", "params": {"device": "hook"}}]},
            {"agents": [{"driver": "snmp", "params": {"host": "10.0.0.1", "outlet": 1}}]}]})
        self.bmcs.device("hook").failure = UnsupportedError("no query_url, cannot query")
        self.pdus.device(("10.0.0.1", 1)).state = PowerState.ON
        self.assertEqual(self.poll()["n1"], {"node": "n1", "state": "on", "error": ""})

    def test_an_outlet_the_pdu_does_not_report_reads_unknown(self):
        self.executor.configure("n1", outlet("10.0.0.1", 1))
        self.pdus.query_outlets = lambda settings, outlets: defer.succeed({})
        self.assertEqual(self.poll()["n1"]["state"], "unknown")


class PacingTests(PollerSetup, unittest.TestCase):
    def test_at_most_concurrency_reads_run_at_once(self):
        self.bmcs.hold = True
        for n in range(6):
            self.executor.configure(f"n{n}", bmc(f"bmc{n}"))
        d = self.poller.poll_once()
        running = [n for n in range(6) if self.bmcs.device(f"bmc{n}").held]
        self.assertEqual(len(running), 4)
        for n in running:
            self.bmcs.device(f"bmc{n}").release()
        self.assertEqual(sum(len(self.bmcs.device(f"bmc{n}").held) for n in range(6)), 2)
        for n in range(6):
            while self.bmcs.device(f"bmc{n}").held:
                self.bmcs.device(f"bmc{n}").release()
        self.successResultOf(d)
        self.assertEqual(len(self.link.batches[0][1]), 6)

    def test_full_batches_go_out_while_the_round_still_reads(self):
        """
        Rows are sent 200 at a time as reads end, not held until the last
        read: a round of 10,000 nodes kept a Deferred, a result and a row
        per node until then (about 38 MB at 10,000 IPMI nodes).
        """
        self.bmcs.hold = True
        for n in range(205):
            self.executor.configure(f"n{n:03}", bmc(f"bmc{n:03}"))
        d = self.poller.poll_once()
        released = 0
        while released < 204:
            held = [n for n in range(205) if self.bmcs.device(f"bmc{n:03}").held]
            self.assertLessEqual(len(held), 4)  # never more reads than slots
            for n in held[: 204 - released]:
                self.bmcs.device(f"bmc{n:03}").release()
                released += 1
        self.assertNoResult(d)  # one read still held...
        self.assertEqual([len(states) for _, states in self.link.batches], [200])  # ...sent
        [last] = [n for n in range(205) if self.bmcs.device(f"bmc{n:03}").held]
        self.bmcs.device(f"bmc{last:03}").release()
        self.successResultOf(d)
        self.assertEqual([len(states) for _, states in self.link.batches], [200, 5])
        sent = [s["node"] for _, states in self.link.batches for s in states]
        self.assertEqual(sorted(sent), [f"n{n:03}" for n in range(205)])

    def test_a_round_runs_every_interval_once_started(self):
        self.executor.configure("n1", bmc("bmc1"))
        self.poller.startService()  # the first round at once, then every interval
        self.addCleanup(self.poller.stopService)
        self.assertEqual(self.bmcs.device("bmc1").calls, ["query"])
        self.clock.advance(59)
        self.assertEqual(self.bmcs.device("bmc1").calls, ["query"])
        self.clock.advance(1)
        self.assertEqual(self.bmcs.device("bmc1").calls, ["query", "query"])

    def test_a_large_round_goes_out_in_batches_of_two_hundred(self):
        for n in range(450):
            self.executor.configure(f"n{n:03}", outlet("10.0.0.1", n + 1))
        self.successResultOf(self.poller.poll_once())
        self.assertEqual([len(states) for _, states in self.link.batches], [200, 200, 50])
        self.assertEqual(len(self.pdus.outlet_queries), 1)


class BatchLockoutTests(PollerSetup, unittest.TestCase):
    """
    Issue 10: a PDU's batched read goes through the BMC lock-out guard under
    the PDU's credentials, like any driver call: a refused community is
    tried at most ``auth_failure_limit`` times, however many rounds run, and
    the lock-out is reported for every node on that PDU.
    """

    def setUp(self):
        super().setUp()
        self.reported = []
        self.guard = LockoutGuard(self.clock, limit=3,
                                  on_lockout=lambda *a: self.reported.append(a[:2]))
        self.executor = DriverExecutor(DriverCatalogue([self.pdus, self.bmcs]),
                                       lockout=self.guard)
        self.registry = PowerActionRegistry(self.executor, self.clock, cancel_timeout=5)
        self.poller = Poller(self.registry, self.executor, self.link, self.clock,
                             interval=60, concurrency=4)

    def test_a_refused_community_is_not_read_round_after_round(self):
        for n in (1, 2):
            self.executor.configure(f"node{n}", outlet("10.0.0.9", n, community="wrong"))
        self.executor.configure("other", outlet("10.0.0.1", 1))
        self.pdus.refusing.add("10.0.0.9")
        for _ in range(6):
            self.link.batches.clear()
            states = self.poll()
            self.assertEqual(states["node1"]["error_kind"], "auth")
            self.assertEqual(states["other"]["error"], "")
        reads = [q for q in self.pdus.outlet_queries if q[0] == "10.0.0.9"]
        self.assertEqual(len(reads), 3)
        self.assertIn("credentials rejected", states["node2"]["error"])
        self.assertEqual(sorted(self.reported), [("node1", 0), ("node2", 0)])
        # The operator clears it: read again.
        self.guard.release("node1")
        self.guard.release("node2")
        self.link.batches.clear()
        self.poll()
        self.assertEqual(len([q for q in self.pdus.outlet_queries if q[0] == "10.0.0.9"]), 4)


class LimitedDriverType(FakeDriverType):
    """
    Systems behind services that admit ``max_sessions`` calls at once: each
    call takes its service's slot of a real
    :class:`~powerctl.drivers.bmclimit.BmcLimiter` (keyed by ``host``, as
    the Redfish driver keys it by its URL's ``host:port``) before its
    device (which holds every call) sees it.
    """

    def __init__(self, clock, max_sessions):
        super().__init__("limited", hold=True)
        self.limiter = BmcLimiter(clock, BmcLimits(max_sessions=max_sessions))

    def _params(self):
        return (Param("host", "host", required=True), Param("system", required=True))

    def _key(self, settings):
        return (settings["host"], settings["system"])

    def bind(self, settings):
        return _Limited(self.device(self._key(settings)),
                        self.limiter.handle(address_of(settings["host"], 0)))


class _Limited:
    def __init__(self, device, bmc):
        self.device, self.bmc, self.capabilities = device, bmc, device.capabilities

    def query(self):
        def call(release):
            return self.device.query().addBoth(lambda r: (release(), r)[1])
        return self.bmc.acquire().addCallback(call)

    def quiesced(self):
        return defer.succeed(None)


class SpreadTests(unittest.TestCase):
    """
    Issue 14 item 4: a round's queries spread over services, so that no
    poll slot waits on one service's per-BMC limit while another service
    could take the call.
    """

    def test_poll_slots_are_spread_over_services_with_per_bmc_limits(self):
        clock = task.Clock()
        limited = LimitedDriverType(clock, max_sessions=2)
        executor = DriverExecutor(DriverCatalogue([limited]))
        registry = PowerActionRegistry(executor, clock, cancel_timeout=5)
        link = RecordingLink()
        poller = Poller(registry, executor, link, clock, interval=60, concurrency=6)
        # learnt service by service, as a recovery lists them (by name)
        for s in range(3):
            for n in range(4):
                executor.configure(f"svc{s}-n{n}", {"mode": "single", "agents": [
                    {"driver": "limited", "params": {"host": f"10.0.0.{s}", "system": str(n)}}]})
        d = poller.poll_once()
        running = [key for key, device in limited.devices.items() if device.held]
        # 6 slots, 3 services of 2 sessions each: every slot runs a call
        # (listed service by service, svc0's 4 systems took 4 slots and 2
        # of them waited on its limit: 4 running)
        self.assertEqual(len(running), 6, running)
        self.assertEqual(sorted({host for host, _ in running}),
                         ["10.0.0.0", "10.0.0.1", "10.0.0.2"])
        while any(device.held for device in limited.devices.values()):
            for device in limited.devices.values():
                if device.held:
                    device.release()
        self.successResultOf(d)
        self.assertEqual(len(link.batches[0][1]), 12)
