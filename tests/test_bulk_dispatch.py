"""
A bulk request's operations dispatched as one batch, and a pserv's
outcomes reported in batches (issue 14), without PostgreSQL or TCP: the
real region, its AMP responder and a real pserv connected in memory, the
journal and lease table in memory (``powerctl.testing``), on a ``Clock``.

``Region.dispatch_many`` reads every node once, sends each owner one
``PowerMany`` per page and journals each page ``running`` in one write;
every operation ends where ``Region.dispatch`` would leave it.  The
pserv's outbox sends ``ReportOutcomes`` batches, at most two calls in
flight, and a report the region refuses costs the rest of its batch
nothing.
"""

import json
import types

from twisted.internet import defer, task
from twisted.trial import unittest

from powerctl.region import core
from powerctl.region.core import Region
from powerctl.rpc import commands
from powerctl.testing.region import FakeLeases, FakeRegionStore
from tests.system import SECRET
from tests.test_pserv_duplicates import InMemoryFleet, power


class BatchDispatchTests(InMemoryFleet, unittest.TestCase):
    def add_nodes(self, count, cluster="c1", first=3):
        names = []
        for i in range(first, first + count):
            self.store.add_node(f"n{i}", cluster, power(f"bmc{i}"))
            self.store.node_rows[f"n{i}"]["owner_epoch"] = 1 if cluster == "c1" else None
            names.append(f"n{i}")
        return names

    def dispatch_many(self, ops):
        d = defer.ensureDeferred(self.region.dispatch_many(ops))
        self.pair.flush()
        return self.successResultOf(d)

    def calls(self, name):
        return [c for c in self.store.calls if c[0] == name]

    def spy_power_many(self):
        """Every ``PowerMany`` box the pserv is sent: the ids it carried."""
        seen = []
        protocol = self.pair.client
        locate = protocol.locateResponder

        def spying(name):
            responder = locate(name)
            if name != commands.PowerMany.commandName or responder is None:
                return responder

            def respond(box):
                seen.append([op["id"] for op in json.loads(box[b"operations"])])
                return responder(box)

            return respond

        protocol.locateResponder = spying
        return seen

    def test_one_read_one_call_and_one_write_for_a_batch(self):
        names = ["n1", "n2"] + self.add_nodes(8)
        ops = [self.store.add_op(n, "on") for n in names]
        seen = self.spy_power_many()
        results = self.dispatch_many(ops)
        self.assertEqual(results, {op["id"]: "started" for op in ops})
        self.assertEqual(seen, [[op["id"] for op in ops]])
        self.assertEqual(len(self.calls("dispatch_view")), 1)
        self.assertEqual(self.calls("mark_running_many"),
                         [("mark_running_many", [op["id"] for op in ops], "p1", 1)])
        self.assertEqual(self.calls("mark_running"), [])
        for i, name in enumerate(names):
            self.assertEqual(self.drivers.device(f"bmc{i + 1}").calls, ["on"], name)
            self.assertEqual(self.state(ops[i]), "running")

    def test_a_pserv_without_power_many_gets_one_command_per_operation(self):
        """A pserv older than PowerMany (a rolling upgrade) still runs a bulk request at once."""
        protocol = self.pair.client
        locate, asked = protocol.locateResponder, []

        def older(name):
            if name == commands.PowerMany.commandName:
                asked.append(name)
                return None  # AMP answers UNHANDLED
            return locate(name)

        protocol.locateResponder = older
        names = ["n1", "n2"] + self.add_nodes(3)
        # One refused configuration and one bug on the pserv mid-page cost
        # only their own operations: the ones after them still go.
        self.store.add_node("bad", "c1", {"mode": "single", "agents": [{"driver": "nope"}]})
        self.store.node_rows["bad"]["owner_epoch"] = 1
        self.store.add_node("buggy", "c1", power("bmc99"))
        self.store.node_rows["buggy"]["owner_epoch"] = 1
        dispatch = self.pserv.dispatch

        def broken_for_buggy(operation_id, node, *args, **kwargs):
            if node == "buggy":
                raise ZeroDivisionError("bug")
            return dispatch(operation_id, node, *args, **kwargs)

        self.pserv.dispatch = broken_for_buggy
        # (Their ids come first: a page goes oldest first.)
        bad, buggy = self.store.add_op("bad", "on"), self.store.add_op("buggy", "on")
        ops = [bad, buggy] + [self.store.add_op(n, "on") for n in names]
        results = self.dispatch_many(ops)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # the pserv's log
        self.assertEqual(results.pop(bad["id"]), "failed")
        self.assertEqual(results.pop(buggy["id"]), "pending")
        self.assertEqual(self.state(bad), "failed")
        self.assertEqual(self.state(buggy), "pending")
        ops = [op for op in ops if op not in (bad, buggy)]
        self.assertEqual(results, {op["id"]: "started" for op in ops})
        for i, name in enumerate(names):
            self.assertEqual(self.drivers.device(f"bmc{i + 1}").calls, ["on"], name)
            self.assertEqual(self.state(ops[i]), "running")
        self.assertEqual(self.calls("mark_running_many"),
                         [("mark_running_many", [op["id"] for op in ops], "p1", 1)])
        again = [self.store.add_op(n, "off") for n in names[:2]]
        self.assertEqual(self.dispatch_many(again), {op["id"]: "started" for op in again})
        self.assertEqual(len(asked), 1)  # not asked again on this connection
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_pages_of_at_most_batch_operations_oldest_first(self):
        self.region.batch = 3
        names = self.add_nodes(7)
        ops = [self.store.add_op(n, "off") for n in names]
        seen = self.spy_power_many()
        self.dispatch_many(list(reversed(ops)))
        ids = [op["id"] for op in ops]
        self.assertEqual(seen, [ids[0:3], ids[3:6], ids[6:]])
        self.assertEqual([c[1] for c in self.calls("mark_running_many")],
                         [ids[0:3], ids[3:6], ids[6:]])

    def test_two_operations_of_one_node_arrive_in_journal_order(self):
        """The older one reaches the pserv first, so the newer one supersedes it, as one by one."""
        self.region.batch = 1  # even on different pages
        first, second = self.store.add_op("n1", "off"), self.store.add_op("n1", "on")
        results = self.dispatch_many([second, first])
        self.assertEqual(results, {first["id"]: "started", second["id"]: "waiting"})

    def test_each_operation_ends_where_dispatch_would_leave_it(self):
        self.add_nodes(1, cluster="c2", first=9)  # no pserv of c2 here: pending
        self.store.add_node("moving", "c1", power("bmc7"))
        self.store.node_rows["moving"].update(owner_epoch=1, handoff_epoch=4)
        self.store.add_node("far", "c1", power("bmc8"))
        self.store.node_rows["far"]["owner_epoch"] = 7  # connected to another region
        self.store.add_node("bad", "c1", {"mode": "single", "agents": [{"driver": "nope"}]})
        self.store.node_rows["bad"]["owner_epoch"] = 1
        ops = {name: self.store.add_op(name, "on") for name in
               ("n1", "n9", "moving", "far", "bad")}
        ghost = {"id": 99, "node": "ghost", "action": "on"}
        results = self.dispatch_many(list(ops.values()) + [ghost])
        self.assertEqual(results, {ops["n1"]["id"]: "started", ops["n9"]["id"]: "pending",
                                   ops["moving"]["id"]: "pending",
                                   ops["far"]["id"]: "elsewhere", ops["bad"]["id"]: "failed",
                                   99: "gone"})
        bad = self.store.op_rows[ops["bad"]["id"]]
        self.assertEqual((bad["state"], bad["pserv"]), ("failed", "p1"))
        self.assertTrue(bad["error"].startswith("config: "), bad["error"])
        self.assertIn("unknown driver 'nope'", bad["error"])
        for name in ("n9", "moving", "far"):
            self.assertEqual(self.state(ops[name]), "pending", name)
        self.assertEqual(self.calls("mark_running_many"),
                         [("mark_running_many", [ops["n1"]["id"]], "p1", 1)])
        self.assertEqual([self.drivers.device(d).calls for d in ("bmc1", "bmc7", "bmc8")],
                         [["on"], [], []])

    def test_a_new_node_s_cluster_is_assigned_once_before_the_batch(self):
        names = self.add_nodes(3)
        for name in names:
            self.store.node_rows[name]["owner_epoch"] = None
        ops = [self.store.add_op(n, "on") for n in names]
        results = self.dispatch_many(ops)
        self.assertEqual(set(results.values()), {"started"})
        self.assertEqual([self.store.node_rows[n]["owner_epoch"] for n in names], [1, 1, 1])
        self.assertEqual(len(self.calls("dispatch_view")), 2)  # read again after assigning

    def test_an_epoch_the_pserv_no_longer_holds_leaves_the_batch_pending(self):
        self.pserv.epoch = 2  # it registered again meanwhile; the region is behind
        ops = [self.store.add_op(n, "on") for n in ("n1", "n2")]
        results = self.dispatch_many(ops)
        self.assertEqual(set(results.values()), {"pending"})
        self.assertEqual([self.state(op) for op in ops], ["pending", "pending"])
        self.assertEqual(self.drivers.device("bmc1").calls, [])
        self.assertEqual(self.calls("mark_running_many"), [])

    def test_a_connection_lost_mid_call_leaves_the_batch_pending(self):
        ops = [self.store.add_op(n, "on") for n in ("n1", "n2")]
        d = defer.ensureDeferred(self.region.dispatch_many(ops))
        self.assertNoResult(d)
        self.pair.disconnect()
        self.assertEqual(set(self.successResultOf(d).values()), {"pending"})
        self.assertEqual([self.state(op) for op in ops], ["pending", "pending"])

    def test_lockouts_and_circuits_go_with_each_operation(self):
        self.successResultOf(defer.ensureDeferred(
            self.store.lockouts.record("n2", 0, 5, "refused", "p1")))
        self.store.node_rows["n1"]["circuit"] = "rack1"
        self.store.circuit_budgets[("c1", "rack1")] = (4, 0.5)
        sent = []
        dispatch = self.pserv.dispatch

        def spy(operation_id, node, action, power, epoch=None, lockouts=None, circuit=None):
            sent.append((node, lockouts, circuit))
            return dispatch(operation_id, node, action, power, epoch, lockouts=lockouts)

        self.pserv.dispatch = spy
        self.dispatch_many([self.store.add_op(n, "on") for n in ("n1", "n2")])
        self.assertEqual(sent, [("n1", [], {"name": "rack1", "max_on": 4, "spacing": 0.5}),
                                ("n2", [{"agent": 0, "id": 1}], None)])

    def test_a_fence_is_dispatched_on_its_own(self):
        seen = self.spy_power_many()
        fence, on = self.store.add_op("n1", "fence"), self.store.add_op("n2", "on")
        results = self.dispatch_many([fence, on])
        self.assertEqual(results[on["id"]], "started")
        self.assertEqual(seen, [[on["id"]]])
        self.assertIn(("mark_running", fence["id"], "p1", 1), self.store.calls)

    def test_the_api_s_later_dispatch_remembers_every_id_against_its_notify(self):
        ops = [self.store.add_op(n, "on") for n in ("n1", "n2")]
        d = self.region.dispatch_many_later(ops)
        self.pair.flush()
        self.successResultOf(d)
        for op in ops:
            self.successResultOf(defer.ensureDeferred(
                self.region.notified("power_ops", str(op["id"]))))
        self.pair.flush()
        self.assertEqual(len(self.calls("mark_running_many")), 1)
        self.assertEqual(self.drivers.device("bmc1").calls, ["on"])


    def test_notifies_that_pile_up_are_dispatched_as_one_batch(self):
        """Another region's bulk request: a NOTIFY per operation, read and sent together."""
        names = ["n1", "n2"] + self.add_nodes(8)
        ops = [self.store.add_op(n, "on") for n in names]
        seen = self.spy_power_many()
        heard = [defer.ensureDeferred(self.region.notified("power_ops", str(op["id"])))
                 for op in ops]
        self.pair.flush()
        for d in heard:
            self.successResultOf(d)
        ids = [op["id"] for op in ops]
        # the first went alone at once; the rest piled up meanwhile and went together
        self.assertEqual(seen, [ids[1:]])
        self.assertEqual(self.calls("pending"), [("pending", ids[1:])])
        self.assertEqual({self.state(op) for op in ops}, {"running"})
        self.assertEqual([self.drivers.device(f"bmc{i}").calls for i in range(1, 11)],
                         [["on"]] * 10)
        # a NOTIFY heard again later reads nothing more
        self.successResultOf(defer.ensureDeferred(
            self.region.notified("power_ops", str(ids[-1]))))
        self.assertEqual(len(self.calls("pending")), 1)


    def test_notifies_heard_before_the_api_hands_its_batch_out_are_not_sent_twice(self):
        """
        The NOTIFYs of this region's own bulk request can be read before
        the API, resuming after the commit, hands the operations out: they
        wait, then find the operations on their way and read nothing.
        Thousands of them at once must not recurse (they once did, through
        the semaphore of dispatch turns, and the region stopped dispatching).
        """
        busy = [self.store.add_op(n, "off") for n in ("n1", "n2")]
        for op in busy:  # every turn taken, the calls in flight
            self.region.dispatch_later(op)
        self.region.dispatch_later(self.store.add_op("n1", "on"))
        self.region.dispatch_later(self.store.add_op("n2", "on"))
        names = self.add_nodes(20)
        ops = [self.store.add_op(n, "on") for n in names]
        heard = [defer.ensureDeferred(self.region.notified("power_ops", str(op["id"])))
                 for op in ops for _ in range(100)]
        self.region.dispatch_many_later(ops)
        self.pair.flush()
        for d in heard:
            self.successResultOf(d)
        self.assertEqual(self.calls("pending"), [])  # all on their way when read
        self.assertEqual({self.state(op) for op in ops}, {"running"})
        self.assertEqual([self.drivers.device(f"bmc{i}").calls for i in range(3, 23)],
                         [["on"]] * 20)
        self.assertEqual(self.flushLoggedErrors(), [])


class BatchReportTests(InMemoryFleet, unittest.TestCase):
    def start(self, names):
        ops = [self.store.add_op(n, "on") for n in names]
        d = defer.ensureDeferred(self.region.dispatch_many(ops))
        self.pair.flush()
        self.successResultOf(d)
        return ops

    def test_outcomes_that_pile_up_go_in_one_call(self):
        names = ["n1", "n2"]
        for i in range(3, 8):
            self.store.add_node(f"n{i}", "c1", power(f"bmc{i}"))
            self.store.node_rows[f"n{i}"]["owner_epoch"] = 1
            names.append(f"n{i}")
        ops = self.start(names)
        for i in range(1, 8):  # every device answers before the region hears of any
            self.drivers.device(f"bmc{i}").release()
        self.pair.flush()
        batches = [c[1] for c in self.store.calls if c[0] == "record_outcomes"]
        ids = [op["id"] for op in ops]
        # two calls at once: the first two go alone, the rest in one batch
        self.assertEqual(batches, [ids[0:1], ids[1:2], ids[2:]])
        self.assertEqual({self.state(op) for op in ops}, {"succeeded"})
        self.assertEqual({self.store.node_rows[n]["power_state"] for n in names}, {"on"})

    def test_a_refused_report_costs_the_rest_of_its_batch_nothing(self):
        ops = self.start(["n1", "n2"])
        self.store.node_rows["n1"]["owner_epoch"] = 9  # handed over meanwhile
        self.drivers.device("bmc1").release()
        self.drivers.device("bmc2").release()
        self.pair.flush()
        self.assertEqual([self.state(op) for op in ops], ["running", "succeeded"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_the_region_refuses_malformed_reports_one_by_one(self):
        ops = self.start(["n1"])
        answer = self.pair.answer(self.pair.client.callRemote(
            commands.ReportOutcomes, epoch=1, reports=[
                {"operation_id": ops[0]["id"], "outcome": "succeeded", "observed_state": "on"},
                {"operation_id": "7", "outcome": "succeeded"},
                {"operation_id": 8, "outcome": "bogus"},
                {"operation_id": 9, "outcome": "failed", "detail": []},
                ["not", "a", "report"]]))
        self.assertEqual(answer["recorded"], 1)
        self.assertEqual([(r["operation_id"], r["code"]) for r in answer["refused"]],
                         [(0, "BAD_ARGUMENTS"), (8, "BAD_ARGUMENTS"), (9, "BAD_ARGUMENTS"),
                          (0, "BAD_ARGUMENTS")])
        self.assertEqual(self.state(ops[0]), "succeeded")

    def test_a_report_batch_under_another_epoch_is_refused_whole(self):
        ops = self.start(["n1"])
        failure = self.pair.answer(self.pair.client.callRemote(
            commands.ReportOutcomes, epoch=5, reports=[
                {"operation_id": ops[0]["id"], "outcome": "succeeded"}]))
        self.assertTrue(failure.check(commands.StaleEpoch), failure)
        self.assertEqual(self.state(ops[0]), "running")


class PagesTests(unittest.TestCase):
    def test_pages_are_cut_by_count_and_by_size(self):
        items = [{"id": i, "pad": "x" * 100} for i in range(10)]
        self.assertEqual([len(p) for p in core.pages(items, 4)], [4, 4, 2])
        one = len(json.dumps(items[0], separators=(",", ":"))) + 1
        self.assertEqual([len(p) for p in core.pages(items, 100, size=2 + 3 * one)],
                         [3, 3, 3, 1])
        for page in core.pages(items, 100, size=2 + 3 * one):
            self.assertLessEqual(len(json.dumps(page, separators=(",", ":"))), 2 + 3 * one)

    def test_an_item_too_large_alone_goes_alone(self):
        items = [{"id": 1}, {"id": 2, "pad": "x" * 500}, {"id": 3}]
        self.assertEqual([[i["id"] for i in p] for p in core.pages(items, 100, size=100)],
                         [[1], [2], [3]])

    def test_a_bulk_request_of_5000_ipmi_nodes_pages_within_amp_s_limit(self):
        items = [{"id": i, "node": f"n{i:06d}", "action": "on", "lockouts": [],
                  "power": {"mode": "single", "agents": [{"driver": "ipmi", "params": {
                      "host": "127.0.0.1", "port": 40000 + i, "username": "admin",
                      "password": "password", "privilege": "administrator"}}]}}
                 for i in range(5000)]
        pages = list(core.pages(items))
        self.assertEqual(sum(len(p) for p in pages), 5000)
        for page in pages:
            commands.JSON().toString(page)  # TooLong if it did not fit


class QueuedLeases(FakeLeases):
    """
    The lease table behind a database pool of ``size`` connections, first
    come first served, each query taking one tick of ``clock``: what the
    region's dispatches and a pserv's heartbeat share.
    """

    def __init__(self, store, clock, size=2):
        super().__init__(store)
        self.clock = clock
        self.pool = defer.DeferredSemaphore(size)

    def _query(self, method, *args):
        async def run():
            await task.deferLater(self.clock, 1, lambda: None)
            return await method(self, *args)

        return self.pool.run(lambda: defer.ensureDeferred(run()))

    def owner(self, node):
        return self._query(FakeLeases.owner, node)

    def renew(self, epoch):
        return self._query(FakeLeases.renew, epoch)


class DispatchTurnTests(unittest.TestCase):
    """
    Dispatches take turns: a storm of them cannot starve a pserv's lease
    renewal (5,000 IPMI power-ons in one request made the pserv's lease
    run out, and it dropped everything at every reconnection).
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = FakeRegionStore()
        self.leases = QueuedLeases(self.store, self.clock)
        self.region = Region("r1", self.store, SECRET, self.clock, leases=self.leases)
        self.epoch = self.successResultOf(defer.ensureDeferred(
            FakeLeases.grant(self.leases, "p1", "c1", "i")))["epoch"]
        # A pserv of c1 is connected here: with none at all, a dispatch
        # answers "pending" without reading anything (the POST path's
        # short-circuit) and these tests would see no reads to bound.
        self.region.directory.add(types.SimpleNamespace(
            pserv="p1", cluster="c1", epoch=self.epoch, in_flight=0))

    def test_a_heartbeat_is_not_queued_behind_a_storm_of_dispatches(self):
        for i in range(400):
            self.store.add_node(f"n{i}", "c2", power(f"bmc{i}"))  # nobody serves c2 here
            self.region.dispatch_later(self.store.add_op(f"n{i}", "on"))
        renewed = self.leases.renew(self.epoch)
        answered = []
        renewed.addCallback(lambda result: answered.append(result) or result)
        ticks = 0
        while not answered and ticks < 1000:
            self.clock.advance(1)
            ticks += 1
        self.successResultOf(renewed)
        # unbounded, the 400 dispatches' reads came first: 200 ticks on 2
        # connections; in turns of 4, at most 4 reads are ahead of it
        self.assertEqual(self.region.dispatch_concurrency, 4)
        self.assertLessEqual(ticks, 3)
        while self.region._busy:
            self.clock.advance(1)
        self.assertEqual({o["state"] for o in self.store.op_rows.values()}, {"pending"})

    def test_the_region_setting_sets_how_many_dispatches_read_at_once(self):
        region = Region("r2", self.store, SECRET, self.clock, leases=self.leases,
                        dispatch_concurrency=2)
        self.assertEqual((region.dispatch_concurrency, region._dispatching.limit), (2, 2))
        self.assertEqual(self.region._dispatching.limit, 4)  # the default

    def test_at_most_dispatch_concurrency_dispatches_read_at_once(self):
        reading = []
        held = []

        def owner(node):
            reading.append(node)
            d = defer.Deferred()
            held.append(d)
            return d

        self.leases.owner = owner
        for i in range(50):
            self.store.add_node(f"n{i}", "c2", power(f"bmc{i}"))
            self.region.dispatch_later(self.store.add_op(f"n{i}", "on"))
        self.assertEqual(len(reading), self.region.dispatch_concurrency)
        while held:
            held.pop(0).callback(None)  # gone: the next one starts
        self.assertEqual(len(reading), 50)
        self.assertEqual(self.region._busy, set())
