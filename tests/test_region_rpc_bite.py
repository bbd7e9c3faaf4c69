"""
The region's side of AMP (:mod:`powerctl.region.rpc`) where mutation
testing (``make mutate``) showed no test would notice a small bug: the
authentication deadline, recovery's two cursors (operations, then nodes),
an operation page whose every configuration no longer resolves, the
halving of a page too big for one AMP value, and how report, heartbeat and
release errors reach the pserv.

No sockets and no database: a :class:`RegionProtocol` on a
:class:`StringTransport`, its responders called directly, a real
:class:`Region` over a store and leases that are small recording doubles,
and time is a :class:`twisted.internet.task.Clock`.
"""

import json

import attrs
from twisted.internet import address, defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from powerctl.region import rpc
from powerctl.region.core import Region
from powerctl.region.errors import InvalidInput, NotFound
from powerctl.region.leases import LeaseExpired
from powerctl.rpc import auth, commands
from powerctl.testing import amp as amppair
from powerctl.testing import region as fakes
from powerctl.testing.region import FakeLockouts
from tests.test_amp_hostile import Client

SECRET = b"bite-secret"
POWER = {"mode": "single", "agents": [{"driver": "manual", "params": {}}]}


@attrs.define
class Recorded:
    changed: bool
    op: dict


class FakeStore:
    """
    Open operations and nodes of one cluster, paged as the real store pages
    them (by id, by name, ``limit``); ``store.ops``, ``store.nodes`` and
    ``store.clusters`` are all this object.
    """

    def __init__(self, ops=(), nodes=()):
        self.ops = self.nodes = self.clusters = self
        self.lockouts = FakeLockouts()  # issue 10: none locked out
        self.op_rows = [dict(op) for op in ops]
        self.node_rows = sorted((dict(n) for n in nodes), key=lambda n: n["node"])
        self.outstanding_calls = []
        self.marked = []  # (op ids, pserv, epoch)
        self.outcomes = []  # (op id, outcome, error)
        self.heartbeats = []
        self.heartbeat_error = None

    async def outstanding(self, cluster, after_id=0, limit=500, epoch=None):
        self.outstanding_calls.append(after_id)
        return [dict(o) for o in self.op_rows
                if o["id"] > after_id and o["state"] in ("pending", "running")][:limit]

    async def mark_running_many(self, op_ids, pserv, epoch):
        self.marked.append((list(op_ids), pserv, epoch))
        for op in self.op_rows:
            if op["id"] in op_ids:
                op["state"] = "running"  # still open: recovered again next time

    async def record_outcome(self, op_id, outcome, error=None, **kwargs):
        if error is not None and len(error) > 4096:
            raise InvalidInput("error: longer than 4096 characters")
        op = next(o for o in self.op_rows if o["id"] == op_id)
        self.outcomes.append((op_id, outcome, error))
        op["state"] = outcome
        return Recorded(True, dict(op))

    async def record_power_state(self, node, state, **kwargs):
        return {}

    async def desired_states(self, cluster, after_name="", limit=500, epoch=None):
        return [dict(n) for n in self.node_rows if n["node"] > after_name][:limit]

    releasing_rows = ()
    releasing_calls = ()

    async def releasing(self, cluster, epoch, limit):
        self.releasing_calls = self.releasing_calls + ((cluster, epoch, limit),)
        return list(self.releasing_rows)[:limit]

    #: the cursor the next recovery gets (a node row's "changed" is its xid)
    cursor = 100

    async def changes_cursor(self):
        return self.cursor

    async def changed_since(self, cluster, since, after_name="", limit=500, epoch=None):
        return [dict(n, ours=n.get("ours", True),
                     power=n["power"] if n.get("ours", True) else None)
                for n in self.node_rows
                if n["node"] > after_name and n.get("changed", 0) >= since][:limit]

    async def heartbeat(self, pserv, actions_in_flight):
        if self.heartbeat_error is not None:
            raise self.heartbeat_error
        self.heartbeats.append((pserv, actions_in_flight))


class FakeLeases:
    def __init__(self):
        self.assigned = []
        self.released_lease = []
        self.release_answer = []
        self.renew_error = None
        self.released_nodes = []

    async def assign(self, cluster):
        self.assigned.append(cluster)
        return {"assigned": {}, "handoffs": {}}

    async def renew(self, epoch):
        if self.renew_error is not None:
            raise self.renew_error
        return 30.0

    async def release(self, epoch):
        self.released_lease.append(epoch)
        return list(self.release_answer)

    async def release_nodes(self, epoch, nodes):
        self.released_nodes.append((epoch, list(nodes)))
        return sorted(nodes)


class Sibling:
    """Another pserv of the cluster connected here: records what it is sent."""

    def __init__(self, cluster="c1"):
        self.pserv, self.cluster, self.epoch, self.in_flight = "p2", cluster, 8, 0
        self.sent = []

    def callRemote(self, command, **kwargs):
        self.sent.append(command)
        return defer.Deferred()


def region_for(store=None, leases=None, clock=None):
    return Region("r1", store or FakeStore(), SECRET, clock or task.Clock(),
                  leases=leases or FakeLeases())


def connect(region):
    protocol = rpc.RegionProtocol(region)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def leased(region, epoch=7):
    """A connection that authenticated and registered pserv ``p1`` of ``c1``."""
    protocol, _ = connect(region)
    protocol.gate.open = True
    protocol._stop_auth_timer()
    protocol.cluster, protocol.pserv, protocol.epoch = "c1", "p1", epoch
    return protocol


def op(i, power=POWER, state="pending"):
    return {"id": i, "node": f"n{i}", "action": "on", "state": state, "power": power,
            "power_error": None if power else "no driver 'removed'"}


def node(name, power=POWER):
    return {"node": name, "desired_state": "on", "power": power}


class AuthDeadlineTests(unittest.TestCase):
    def test_a_silent_peer_is_disconnected_at_ten_seconds_and_not_before(self):
        clock = task.Clock()
        _, transport = connect(region_for(clock=clock))
        clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_a_peer_that_authenticated_in_time_stays(self):
        clock = task.Clock()
        protocol, transport = connect(region_for(clock=clock))
        clock.advance(9.9)
        nonce = protocol.challenge()["nonce"]
        mine = auth.new_nonce()
        answer = self.successResultOf(defer.ensureDeferred(
            protocol.authenticate(proof=auth.proof(SECRET, nonce), nonce=mine)))
        self.assertTrue(auth.valid(SECRET, mine, answer["proof"]))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertFalse(transport.disconnecting)


def size(items):
    return len(json.dumps(items, separators=(",", ":")))


class TrimTests(unittest.TestCase):
    def test_two_items_that_do_not_fit_together_keep_the_first(self):
        """Halving two items leaves one: a page too big is shortened, never emptied."""
        item = "x" * (commands.MAX_VALUE // 2)
        self.assertGreater(size([item, item]), commands.MAX_VALUE)
        self.assertEqual(rpc._trim([item, item + "y"]), [item])


    def test_a_page_of_exactly_one_value_is_kept_whole(self):
        page = ["x" * (commands.MAX_VALUE - 4)]
        self.assertEqual(size(page), commands.MAX_VALUE)
        self.assertEqual(rpc._trim(page), page)

    def test_a_first_item_that_fits_exactly_is_kept(self):
        first = "x" * (commands.MAX_VALUE - 4)  # [first] is exactly one value
        self.assertEqual(rpc._trim([first, "y"]), [first])

    def test_a_prefix_one_byte_too_long_is_cut(self):
        # [a, b] is one byte over the limit (brackets, quotes and the comma
        # counted): only [a] goes, and so is the whole page of three cut.
        a = "x" * 100
        b = "y" * (commands.MAX_VALUE - 100 - 7 + 1)
        self.assertEqual(size([a, b]), commands.MAX_VALUE + 1)
        self.assertEqual(rpc._trim([a, b, "z"]), [a])


class DigestTests(unittest.TestCase):
    def test_the_digest_does_not_depend_on_key_order(self):
        # ReportLockout's digest is compared with the region's own: the
        # pserv's JSON may list the keys in any order.
        self.assertEqual(rpc.power_digest({"b": 1, "a": {"d": 2, "c": 3}}),
                         rpc.power_digest({"a": {"c": 3, "d": 2}, "b": 1}))


class RecoverTests(unittest.TestCase):
    async def test_after_the_operations_only_nodes_are_read(self):
        """
        ``after_op=-1`` is the cursor of the nodes phase: the operations were
        all sent already and must not be read (and re-sent) again.
        """
        store = FakeStore(ops=[op(1)], nodes=[node("a"), node("b")])
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=-1, after_node="a")
        self.assertEqual(store.outstanding_calls, [])
        self.assertEqual(page["operations"], [])
        self.assertEqual([n["name"] for n in page["nodes"]], ["b"])
        self.assertEqual((page["after_op"], page["after_node"], page["done"]), (-1, "b", True))

    async def test_cursors_a_region_never_hands_out_are_bad_arguments(self):
        """Checked before any query: PostgreSQL would refuse them as a bug (500-like)."""
        from powerctl.region.store.base import MAX_BIGINT

        store = FakeStore(ops=[op(1)], nodes=[node("a")])
        protocol = leased(region_for(store))
        for after_op, after_node in ((MAX_BIGINT + 1, ""), (0, "a\x00b"), (0, "n" * 256)):
            with self.assertRaises(commands.BadArguments):
                await protocol.recover(after_op=after_op, after_node=after_node)
        self.assertEqual(store.outstanding_calls, [])
        # the largest of each is still a cursor
        page = await protocol.recover(after_op=MAX_BIGINT, after_node="n" * 255)
        self.assertEqual(page["operations"], [])

    async def test_a_page_of_only_unresolvable_operations_moves_the_cursor_past_it(self):
        """
        Each such operation is failed (its configuration no longer
        resolves); the cursor is the last one's id, so the next page
        neither repeats nor skips any.
        """
        store = FakeStore(ops=[op(1, None), op(2, None), op(3, None), op(4)])
        self.patch(rpc, "PAGE", 3)  # a full page of three
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=0, after_node="")
        self.assertEqual((page["operations"], page["after_op"], page["done"]), ([], 3, False))
        self.assertEqual([(i, o) for i, o, _ in store.outcomes],
                         [(1, "failed"), (2, "failed"), (3, "failed")])
        self.assertIn("removed", store.outcomes[0][2])
        page = await protocol.recover(after_op=page["after_op"], after_node="")
        self.assertEqual([o["id"] for o in page["operations"]], [4])

    async def test_a_short_page_of_only_unresolvable_operations_too(self):
        store = FakeStore(ops=[op(5, None), op(6, None)], nodes=[node("a")])
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=0, after_node="")
        self.assertEqual((page["operations"], page["after_op"], page["done"]), ([], 6, False))

    async def test_paging_like_a_pserv_sends_each_operation_and_node_once(self):
        """
        Across several node pages, the operations (still open: they run
        now) are not sent again with each page of nodes.
        """
        store = FakeStore(ops=[op(1), op(2)], nodes=[node(f"n{i:03}") for i in range(250)])
        protocol = leased(region_for(store))
        after_op, after_node, ops, nodes = 0, "", [], []
        for _ in range(10):
            page = await protocol.recover(after_op=after_op, after_node=after_node)
            ops += [o["id"] for o in page["operations"]]
            nodes += [n["name"] for n in page["nodes"]]
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                break
        self.assertTrue(page["done"])
        self.assertEqual(ops, [1, 2])
        self.assertEqual(nodes, [f"n{i:03}" for i in range(250)])
        self.assertEqual(store.marked, [([1, 2], "p1", 7)])


class IncrementalRecoverTests(unittest.TestCase):
    """Issue 14: ``changed_since`` lists the changed nodes only, the open operations always."""

    async def test_the_first_page_of_a_recovery_carries_the_cursor(self):
        store = FakeStore(ops=[op(1)], nodes=[node("a")])
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=0, after_node="")
        self.assertEqual(page["cursor"], 100)
        page = await protocol.recover(after_op=page["after_op"], after_node="")
        self.assertNotIn("cursor", page)  # later pages: the recovery has its cursor

    async def test_only_changed_nodes_and_every_open_operation_are_listed(self):
        store = FakeStore(ops=[op(1)], nodes=[
            node("a"), dict(node("b"), changed=120), dict(node("c"), changed=130, ours=False),
            dict(node("d"), changed=99)])
        protocol = leased(region_for(store))
        after_op, after_node, ops, nodes, not_ours = 0, "", [], [], []
        for _ in range(5):
            page = await protocol.recover(after_op=after_op, after_node=after_node,
                                          changed_since=100)
            ops += [o["id"] for o in page["operations"]]
            nodes += [n["name"] for n in page["nodes"]]
            not_ours += page.get("not_ours", [])
            after_op, after_node = page["after_op"], page["after_node"]
            if page["done"]:
                break
        self.assertEqual(ops, [1])  # a lost dispatch is sent again
        self.assertEqual(nodes, ["b"])
        self.assertEqual(not_ours, ["c"])

    async def test_a_page_trimmed_by_size_names_only_the_handed_over_nodes_before_its_end(self):
        big = {"mode": "single", "agents": [{"driver": "fake", "params": {
            "device": "x" * 40_000}}]}
        store = FakeStore(nodes=[dict(node("a", big), changed=100),
                                 dict(node("b", big), changed=100),
                                 dict(node("c"), changed=100, ours=False)])
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=-1, after_node="", changed_since=100)
        self.assertEqual(([n["name"] for n in page["nodes"]], page["not_ours"], page["done"]),
                         (["a"], [], False))
        page = await protocol.recover(after_op=-1, after_node="a", changed_since=100)
        self.assertEqual(([n["name"] for n in page["nodes"]], page["not_ours"], page["done"]),
                         (["b"], ["c"], True))

    async def test_a_cursor_out_of_range_is_bad_arguments(self):
        protocol = leased(region_for(FakeStore()))
        for since in (-1, 2**63):
            with self.assertRaises(commands.BadArguments):
                await protocol.recover(after_op=0, after_node="", changed_since=since)


class ReportOutcomeTests(unittest.TestCase):
    async def test_a_report_the_store_refuses_is_bad_arguments(self):
        """
        A declared error the pserv can read, not an INTERNAL_ERROR logged
        as a region bug (and nothing is recorded).
        """
        store = FakeStore(ops=[op(1, state="running")])
        protocol = leased(region_for(store))
        with self.assertRaises(commands.BadArguments) as caught:
            await protocol.report_outcome(
                operation_id=1, outcome="failed", observed_state="", agent="",
                error="x" * 5000, coalesced_into=0, superseded_by=0, epoch=7)
        self.assertIn("4096", str(caught.exception))
        self.assertEqual(store.outcomes, [])


class HeartbeatTests(unittest.TestCase):
    async def test_a_heartbeat_renews_the_lease(self):
        store = FakeStore()
        protocol = leased(region_for(store))
        self.assertEqual(await protocol.heartbeat(actions_in_flight=3), {"lease": 30.0})
        self.assertEqual((protocol.in_flight, store.heartbeats), (3, [("p1", 3)]))

    async def test_an_expired_lease_tells_the_pserv_to_register_again(self):
        leases = FakeLeases()
        leases.renew_error = LeaseExpired("lease 7 is over")
        store = FakeStore()
        protocol = leased(region_for(store, leases))
        with self.assertRaises(commands.LeaseExpired) as caught:
            await protocol.heartbeat(actions_in_flight=0)
        self.assertIn("lease 7 is over", str(caught.exception))
        self.assertEqual(store.heartbeats, [])

    async def test_a_pserv_the_store_does_not_know_is_bad_arguments(self):
        for error in (NotFound("pserv p1 does not exist"), InvalidInput("bad count")):
            store = FakeStore()
            store.heartbeat_error = error
            protocol = leased(region_for(store))
            with self.assertRaises(commands.BadArguments) as caught:
                await protocol.heartbeat(actions_in_flight=0)
            self.assertEqual(str(caught.exception), str(error))


class ReleaseTests(unittest.TestCase):
    async def test_released_nodes_go_on_and_the_clusters_pservs_refresh(self):
        leases = FakeLeases()
        region = region_for(leases=leases)
        sibling = Sibling()
        region.directory.add(sibling)
        protocol = leased(region)
        self.assertEqual(await protocol.release_nodes(nodes=["b", "a"]), {"released": ["a", "b"]})
        self.assertEqual(leases.released_nodes, [(7, ["b", "a"])])
        self.assertEqual(sibling.sent, [commands.Refresh])

    async def test_release_nodes_takes_only_a_list_of_names(self):
        leases = FakeLeases()
        protocol = leased(region_for(leases=leases))
        for bad in ({"a": 1}, "ab", ["a", 1], None):
            with self.assertRaises(commands.BadArguments):
                await protocol.release_nodes(nodes=bad)
        self.assertEqual(leases.released_nodes, [])

    async def test_releasing_the_lease_reassigns_its_clusters(self):
        leases = FakeLeases()
        leases.release_answer = ["c1", "c2"]
        protocol = leased(region_for(leases=leases))
        self.assertEqual(await protocol.release_lease(), {})
        self.assertEqual((leases.released_lease, leases.assigned), ([7], ["c1", "c2"]))
        self.assertIsNone(protocol.epoch)

    async def test_releasing_a_lease_that_owned_nothing_reassigns_its_own_cluster(self):
        """
        The lease may have owned no node yet (or its nodes moved): the
        cluster still needs a round, so a pserv waiting for it gets work.
        """
        leases = FakeLeases()
        protocol = leased(region_for(leases=leases))
        await protocol.release_lease()
        self.assertEqual(leases.assigned, ["c1"])


class RecoverNodePageTests(unittest.TestCase):
    async def test_a_full_page_of_only_unusable_nodes_moves_the_node_cursor_past_it(self):
        """
        No node of the page is sent (none has a usable configuration), yet
        the cursor must be the page's last node: an earlier one would send
        the next page over nodes already skipped, a later one skip nodes.
        """
        store = FakeStore(nodes=[node("a", None), node("b", None), node("c", None),
                                 node("d")])
        self.patch(rpc, "PAGE", 3)
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=-1, after_node="")
        self.assertEqual((page["nodes"], page["after_node"], page["done"]), ([], "c", False))
        page = await protocol.recover(after_op=-1, after_node=page["after_node"])
        self.assertEqual([n["name"] for n in page["nodes"]], ["d"])
        self.assertEqual((page["after_node"], page["done"]), ("d", True))

    async def test_only_the_last_page_names_the_nodes_awaiting_release(self):
        store = FakeStore(nodes=[node("a"), node("b"), node("c"), node("d")])
        store.releasing_rows = ["x1", "x2"]
        self.patch(rpc, "PAGE", 3)
        protocol = leased(region_for(store))
        page = await protocol.recover(after_op=-1, after_node="")
        self.assertNotIn("releasing", page)
        self.assertEqual(store.releasing_calls, ())  # not read for a middle page
        page = await protocol.recover(after_op=-1, after_node=page["after_node"])
        self.assertEqual((page["done"], page["releasing"]), (True, ["x1", "x2"]))
        [(cluster, epoch, limit)] = store.releasing_calls
        self.assertEqual((epoch, limit), (protocol.epoch, rpc.RELEASING_PAGE))

    async def test_a_lease_released_mid_recovery_is_asked_to_release_nothing(self):
        # Released on a clean stop while the page was read: it owns no node
        # now, and the store's query needs an epoch (a TypeError here failed
        # the Recover; seen in a loop of test_ownership_system).
        store = FakeStore(nodes=[node("a")])
        store.releasing_rows = ["x1"]
        protocol = leased(region_for(store))
        listing = store.desired_states

        async def released_meanwhile(*args, **kwargs):
            protocol.epoch = None  # the lease is released while the page is read
            return await listing(*args, **kwargs)

        store.desired_states = released_meanwhile
        page = await protocol.recover(after_op=-1, after_node="")
        self.assertNotIn("releasing", page)
        self.assertEqual(store.releasing_calls, ())


#: A hand-driven pserv end of the connection that notes when it is lost.
Peer = Client


class OverAmpTests(unittest.TestCase):
    """
    The responders reached the way a pserv reaches them, through AMP boxes
    (in memory, :mod:`powerctl.testing.amp`), against the region's
    in-memory store and leases: the command table, the authentication
    gate, registration, the activity count, poll reports and a lost
    connection.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = fakes.FakeRegionStore()
        for name in ("n1", "n2", "n3"):
            self.store.add_node(name, "c1", POWER)
        self.leases = fakes.FakeLeases(self.store)
        self.region = Region("r1", self.store, SECRET, self.clock, leases=self.leases)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def pair(self):
        pair = amppair.connect(rpc.RegionProtocol(self.region), Peer(), self.clock)
        self.addCleanup(lambda: pair.disconnect() if pair.connected else None)
        return pair

    def call(self, pair, command, **kwargs):
        """The answer to ``command``; its error raised, as ``callRemote``'s caller sees it."""
        result = pair.answer(pair.client.callRemote(command, **kwargs))
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def authenticate(self, pair):
        nonce = self.call(pair, commands.Challenge)["nonce"]
        self.call(pair, commands.Authenticate, proof=auth.proof(SECRET, nonce),
                  nonce=auth.new_nonce())

    def register(self, pair, name="p1", cluster="c1", instance="i-1"):
        self.authenticate(pair)
        return self.call(pair, commands.Register, cluster=cluster, name=name, version="t",
                         instance=instance)

    def logged(self, fragment):
        return [formatEvent(e) for e in self.events if fragment in formatEvent(e)]

    def test_every_command_a_pserv_sends_is_answered(self):
        """Each responder is registered under its command (a lost decorator is a dead command)."""
        pair = self.pair()
        epoch = self.register(pair)["epoch"]
        self.assertEqual(self.store.node_rows["n1"]["owner_epoch"], epoch)
        op = self.store.add_op("n1", "on")
        page = self.call(pair, commands.Recover, after_op=0, after_node="")
        self.assertEqual([o["id"] for o in page["operations"]], [op["id"]])
        self.assertEqual(self.call(pair, commands.ReportOutcome, operation_id=op["id"],
                                   outcome="succeeded", observed_state="on", agent="",
                                   error="", coalesced_into=0, superseded_by=0, epoch=epoch),
                         {"recorded": True})
        self.assertEqual(self.store.op_rows[op["id"]]["state"], "succeeded")
        self.assertEqual(self.call(pair, commands.ReportPowerState,
                                   states=[{"node": "n2", "state": "off"}], epoch=epoch), {})
        self.assertEqual(self.store.node_rows["n2"]["power_state"], "off")
        self.assertEqual(self.call(pair, commands.ReportLockout, node="n3", agent=0, failures=3,
                                   reason="3 refused", digest=rpc.power_digest(POWER),
                                   epoch=epoch), {"recorded": True, "id": 1})
        self.assertEqual(self.call(pair, commands.Heartbeat, actions_in_flight=2),
                         {"lease": 30.0})
        self.store.node_rows["n3"]["handoff_epoch"] = epoch
        self.assertEqual(self.call(pair, commands.ReleaseNodes, nodes=["n3"]),
                         {"released": ["n3"]})
        self.assertIsNone(self.store.node_rows["n3"]["handoff_epoch"])
        self.assertEqual(self.call(pair, commands.ReleaseLease), {})
        self.assertFalse(self.leases.leases[epoch]["live"])
        self.assertTrue(pair.connected)

    def test_a_lockout_the_store_refuses_is_bad_arguments_and_an_unresolvable_one_dropped(self):
        pair = self.pair()
        epoch = self.register(pair)["epoch"]
        report = dict(node="n1", agent=0, failures=3, reason="3 refused",
                      digest=rpc.power_digest(POWER), epoch=epoch)

        async def refuse(*args):
            raise InvalidInput("reason: longer than 1024 characters")

        for bad in (dict(agent=-1), dict(failures=-1)):
            with self.assertRaises(commands.BadArguments):
                self.call(pair, commands.ReportLockout, **dict(report, **bad))
        self.assertEqual(self.store.lockouts.rows, {})
        wrong = dict(report, digest=rpc.power_digest({"mode": "single", "agents": []}))
        self.assertEqual(self.call(pair, commands.ReportLockout, **wrong),
                         {"recorded": False, "id": 0})  # about a configuration n1 no longer has
        self.assertEqual(self.store.lockouts.rows, {})

        # the least of each is a lock-out (the pserv's count is its own business)
        self.assertEqual(self.call(pair, commands.ReportLockout, **dict(report, failures=0)),
                         {"recorded": True, "id": 1})

        self.store.lockouts.record = refuse
        with self.assertRaises(commands.BadArguments) as caught:
            self.call(pair, commands.ReportLockout, **report)
        self.assertIn("1024", str(caught.exception))

        async def unresolvable(node):
            raise InvalidInput("no driver 'removed'")

        self.store.nodes.power_config = unresolvable
        self.assertEqual(self.call(pair, commands.ReportLockout, **report),
                         {"recorded": False, "id": 0})
        self.assertEqual(list(self.store.lockouts.rows), [("n1", 0)])  # the one above only
        self.assertTrue(pair.connected)

    def test_a_box_missing_an_argument_closes_an_unauthenticated_connection_only(self):
        stranger = self.pair()
        d = stranger.client.callRemoteString(b"Register", cluster=b"c1")
        d.addErrback(lambda f: None)  # the connection goes: the answer never comes
        stranger.flush()
        self.assertTrue(stranger.client.lost.called)
        self.assertEqual(len(self.logged("before authenticating")), 1)

        peer = self.pair()
        self.authenticate(peer)
        failure = peer.answer(peer.client.callRemoteString(b"Register", cluster=b"c1"))
        self.assertIsInstance(failure, Failure)
        self.assertEqual(failure.value.errorCode, b"BAD_ARGUMENTS")
        self.assertFalse(peer.client.lost.called)
        self.assertEqual(self.register(peer)["epoch"], 1)  # and it goes on

    def test_a_connection_counts_as_pending_until_it_authenticates_or_goes(self):
        host = "10.0.0.9"

        def pair():
            p = amppair.connect(rpc.RegionProtocol(self.region), Peer(), self.clock,
                                peer=address.IPv4Address("TCP", host, 40000))
            self.addCleanup(lambda: p.disconnect() if p.connected else None)
            return p

        pending = self.region.pending_peers
        first, second = pair(), pair()
        self.assertEqual(pending.pending(host), 2)
        self.authenticate(first)
        self.assertEqual(pending.pending(host), 1)
        first.disconnect()  # gone after authenticating: counted once only
        self.assertEqual(pending.pending(host), 1)
        second.disconnect()
        self.assertEqual(pending.pending(host), 0)

    def test_registering_refuses_each_empty_name_on_its_own(self):
        pair = self.pair()
        self.authenticate(pair)
        whole = dict(cluster="c1", name="p1", version="t", instance="i-1")
        for empty in ("cluster", "name", "instance"):
            with self.assertRaises(commands.BadArguments) as caught:
                self.call(pair, commands.Register, **dict(whole, **{empty: ""}))
            self.assertIn("must not be empty", str(caught.exception))
        self.assertEqual((self.store.pserv_rows, self.leases.leases), ({}, {}))
        self.assertEqual(self.call(pair, commands.Register, **dict(whole, version=""))["epoch"],
                         1)  # the version may be empty

    def test_a_new_pserv_counts_no_action_in_flight_until_its_heartbeat(self):
        pair = self.pair()
        self.register(pair)
        self.assertEqual(self.region.activity(), {"c1": 0})
        self.call(pair, commands.Heartbeat, actions_in_flight=4)
        self.assertEqual(self.region.activity(), {"c1": 4})

    def test_a_poll_error_carries_its_kind_and_a_kind_alone_is_no_error(self):
        pair = self.pair()
        epoch = self.register(pair)["epoch"]
        states = [{"node": "n1", "state": "unknown", "error": "no route", "error_kind":
                   "unreachable"},
                  {"node": "n2", "state": "on", "error": None, "error_kind": "auth"},
                  {"node": "n3", "state": "unknown", "error": "odd"}]
        self.call(pair, commands.ReportPowerState, states=states, epoch=epoch)
        self.assertEqual({n: self.store.node_rows[n]["last_error"] for n in ("n1", "n2", "n3")},
                         {"n1": "unreachable: no route", "n2": None, "n3": "odd"})

    def test_reports_on_nodes_the_epoch_does_not_own_are_warned_of_once_per_node(self):
        pair = self.pair()
        epoch = self.register(pair)["epoch"]
        self.store.node_rows["n3"]["owner_epoch"] = None  # handed elsewhere
        for _ in range(3):
            self.call(pair, commands.ReportPowerState, epoch=epoch,
                      states=[{"node": "ghost", "state": "on"}, {"node": "n1", "state": "on"},
                              {"node": "n3", "state": "off"}])
        warned = self.logged("; dropped")
        self.assertEqual(len(warned), 2, warned)
        self.assertIn("node ghost", warned[0])
        self.assertIn("node n3", warned[1])
        self.assertEqual((self.store.node_rows["n1"]["power_state"],
                          self.store.node_rows["n3"]["power_state"]), ("on", "unknown"))

    def test_a_node_deleted_after_the_ownership_check_is_warned_of_once(self):
        pair = self.pair()
        epoch = self.register(pair)["epoch"]

        async def owned(epoch, nodes):  # read before the node's deletion committed
            return set(nodes)

        self.leases.owned = owned
        for _ in range(2):
            self.call(pair, commands.ReportPowerState, epoch=epoch,
                      states=[{"node": "gone", "state": "on"}, {"node": "n1", "state": "on"}])
        warned = self.logged("; dropped")
        self.assertEqual(len(warned), 1, warned)
        self.assertIn("node gone, which does not exist", warned[0])
        self.assertEqual(self.store.node_rows["n1"]["power_state"], "on")

    def test_a_lost_connection_leaves_the_directory_and_the_pserv_is_disconnected(self):
        pair, stranger = self.pair(), self.pair()
        self.register(pair)
        self.assertEqual(len(self.region.directory.for_cluster("c1")), 1)
        stranger.disconnect()  # never registered: nothing to forget
        self.assertEqual(len(self.region.directory.for_cluster("c1")), 1)
        self.assertTrue(self.store.pserv_rows["p1"]["connected"])
        pair.disconnect()
        self.assertEqual(self.region.directory.for_cluster("c1"), [])
        self.assertEqual(self.region.activity(), {})
        self.assertFalse(self.store.pserv_rows["p1"]["connected"])
        self.assertEqual(self.logged("after losing"), [])
